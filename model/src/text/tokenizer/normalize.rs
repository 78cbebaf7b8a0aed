//! SentencePiece normalisation: the precompiled character map (NFKC-style
//! rules compiled into a Darts double-array trie), user-defined symbols
//! passed through untouched, the dummy prefix, extra-whitespace removal and
//! escaping spaces as U+2581.
//!
//! Reference: sentencepiece `normalizer.cc` (`Normalizer::Normalize`,
//! `NormalizePrefix`) and darts-clone's `commonPrefixSearch` for the trie
//! layout. Llama 2 uses the identity rule (no charsmap), a dummy prefix, and
//! keeps extra whitespace: that case has a fast path.
//!
//! Public items: none outside the tokenizer module ([`Normalizer`] is
//! crate-internal).

use super::META;

/// The compiled character map: `[trie size u32 LE][trie units][replacements]`.
#[derive(Clone, Debug)]
pub(crate) struct CharsMap {
    /// Darts double-array units.
    units: Vec<u32>,
    /// NUL-separated replacement strings (validated UTF-8).
    normalized: String,
}

impl CharsMap {
    pub(crate) fn parse(blob: &[u8]) -> Result<CharsMap, String> {
        if blob.len() <= 4 {
            return Err(format!("precompiled_charsmap of {} bytes is too short", blob.len()));
        }
        let trie_size = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
        let rest = &blob[4..];
        // the trie is an array of u32 units
        if trie_size > rest.len() || trie_size & 3 != 0 || trie_size == 0 {
            return Err(format!("precompiled_charsmap trie size {trie_size} does not fit its {} bytes", rest.len()));
        }
        let units = rest[..trie_size].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let normalized =
            String::from_utf8(rest[trie_size..].to_vec()).map_err(|_| "precompiled_charsmap replacement strings are not valid UTF-8".to_string())?;
        Ok(CharsMap { units, normalized })
    }

    /// Longest rule matching a prefix of `input`: (bytes consumed,
    /// replacement). A corrupt trie gives no match rather than a panic.
    fn longest_match<'a>(&'a self, input: &[u8]) -> Option<(usize, &'a str)> {
        // darts unit fields: has_leaf bit 8, value = low 31 bits, label =
        // low 8 bits + bit 31, offset = (unit >> 10) << ((unit & 512) >> 6)
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let units = &self.units;
        let mut node = offset(*units.first()?);
        let mut best = None;
        for (i, &b) in input.iter().enumerate() {
            node ^= b as usize;
            let unit = *units.get(node)?;
            if unit & ((1 << 31) | 0xff) != u32::from(b) {
                break;
            }
            node ^= offset(unit);
            if (unit >> 8) & 1 == 1 {
                let value = (*units.get(node)? & 0x7fff_ffff) as usize;
                if value < self.normalized.len() && self.normalized.is_char_boundary(value) {
                    let s = &self.normalized[value..];
                    let end = s.find('\0').unwrap_or(s.len());
                    best = Some((i + 1, &s[..end]));
                }
            }
        }
        best
    }
}

fn starts_with_space(s: &str) -> bool {
    s.starts_with(' ') || s.starts_with(META)
}

/// The normaliser of one model.
#[derive(Clone, Debug)]
pub(crate) struct Normalizer {
    pub charsmap: Option<CharsMap>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
    /// Hugging Face Metaspace rule: add the prefix only when the text does
    /// not already start with a space (SentencePiece always adds it).
    pub prefix_only_if_absent: bool,
    /// User-defined pieces, longest first: matched before the charsmap and
    /// copied through unnormalised.
    pub user_defined: Vec<String>,
}

impl Normalizer {
    /// Identity rules, dummy prefix, whitespace kept, spaces escaped: the
    /// Llama case, done as one pass of `replace`.
    fn is_identity_fast(&self) -> bool {
        self.charsmap.is_none() && !self.remove_extra_whitespaces && self.escape_whitespaces && self.user_defined.is_empty()
    }

    /// One prefix of `input`: (normalised text, bytes consumed).
    fn prefix<'a>(&'a self, input: &'a str) -> (&'a str, usize) {
        for u in &self.user_defined {
            if input.starts_with(u.as_str()) {
                return (u.as_str(), u.len());
            }
        }
        if let Some(cm) = &self.charsmap {
            if let Some((n, rep)) = cm.longest_match(input.as_bytes()) {
                // a rule can only start and end on char boundaries of valid
                // UTF-8 input unless the map is corrupt; then skip it
                if input.is_char_boundary(n) {
                    return (rep, n);
                }
            }
        }
        let n = input.chars().next().map_or(0, char::len_utf8);
        (&input[..n], n)
    }

    /// Normalises `text` into `out` (cleared first). `dummy_prefix` lets a
    /// caller that encodes a document in segments suppress the prefix on
    /// continuation segments.
    pub(crate) fn normalize(&self, text: &str, dummy_prefix: bool, out: &mut String) {
        out.clear();
        if text.is_empty() {
            return;
        }
        if self.is_identity_fast() {
            out.reserve(text.len() + text.len() / 4 + 3);
            if dummy_prefix && self.add_dummy_prefix && !(self.prefix_only_if_absent && starts_with_space(text)) {
                out.push(META);
            }
            let mut last = 0;
            for (i, _) in text.match_indices(' ') {
                out.push_str(&text[last..i]);
                out.push(META);
                last = i + 1;
            }
            out.push_str(&text[last..]);
            return;
        }
        let mut input = text;
        if self.remove_extra_whitespaces {
            loop {
                let (s, n) = self.prefix(input);
                if n == 0 || s != " " {
                    break;
                }
                input = &input[n..];
            }
        }
        if input.is_empty() {
            return;
        }
        let ws = if self.escape_whitespaces { "\u{2581}" } else { " " };
        if dummy_prefix && self.add_dummy_prefix && !(self.prefix_only_if_absent && starts_with_space(input)) {
            out.push_str(ws);
        }
        let mut prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut s, n) = self.prefix(input);
            if prev_space {
                s = s.trim_start_matches(' ');
            }
            if !s.is_empty() {
                if self.escape_whitespaces {
                    for (i, part) in s.split(' ').enumerate() {
                        if i > 0 {
                            out.push(META);
                        }
                        out.push_str(part);
                    }
                } else {
                    out.push_str(s);
                }
                prev_space = s.ends_with(' ');
            }
            input = &input[n..];
            if !self.remove_extra_whitespaces {
                prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(ws) {
                out.truncate(out.len() - ws.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Normalizer {
        Normalizer {
            charsmap: None,
            add_dummy_prefix: true,
            remove_extra_whitespaces: false,
            escape_whitespaces: true,
            prefix_only_if_absent: false,
            user_defined: vec![],
        }
    }

    #[test]
    fn identity_fast_and_slow_paths_agree() {
        let fast = identity();
        let mut slow = identity();
        slow.user_defined = vec!["\u{0}never".into()]; // forces the general path
        for t in ["", " ", "a b", "  lead", "trail  ", "\t x \n"] {
            let (mut a, mut b) = (String::new(), String::new());
            fast.normalize(t, true, &mut a);
            slow.normalize(t, true, &mut b);
            assert_eq!(a, b, "{t:?}");
        }
        let mut s = String::new();
        fast.normalize(" a  b", true, &mut s);
        assert_eq!(s, "\u{2581}\u{2581}a\u{2581}\u{2581}b");
    }

    #[test]
    fn remove_extra_whitespaces_collapses_and_trims() {
        let mut n = identity();
        n.remove_extra_whitespaces = true;
        let mut s = String::new();
        n.normalize("  a   b  ", true, &mut s);
        assert_eq!(s, "\u{2581}a\u{2581}b");
        n.normalize("   ", true, &mut s);
        assert_eq!(s, "");
    }
}
