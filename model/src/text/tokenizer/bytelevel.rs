//! Byte-level BPE (GPT-2, Llama 3, SmolLM / StarCoder, ...): the text's
//! UTF-8 bytes written as GPT-2's printable stand-in characters, cut into
//! words by the model's pre-tokenizer regexes, each word merged by the rank
//! of the merge list; added tokens (special or not) are cut out of the text
//! first and map to their ids.
//!
//! Reference: the `tokenizers` library, which this matches id for id
//! (tests/bytelevel.rs, fixtures by `tools/scripts/make_bytelevel_cases.py`):
//! `pre_tokenizers::byte_level` (the byte-to-unicode map `bytes_char`, the
//! GPT-2 regex, `use_regex`, `add_prefix_space`), `pre_tokenizers::split`
//! (behaviour `Isolated`: matches and the gaps between them are words),
//! `pre_tokenizers::digits` (`individual_digits`), `models::bpe` (merges
//! applied lowest rank first, leftmost on ties; `ignore_merges`: a word that
//! is itself a token is emitted whole, as Llama 3 sets), the added
//! vocabulary (leftmost-longest match of the added tokens before anything
//! else) and the `ByteLevel` decoder (tokens back to bytes, a token with a
//! character outside the map kept as its UTF-8, then lossy UTF-8).
//!
//! The regexes run through `fancy-regex` (GPT-2's `\s+(?!\S)` needs
//! look-ahead). Named pre-tokenizers, for GGUF files (`tokenizer.ggml.pre`,
//! llama.cpp's names) and for building in code: [`PreTok::gpt2`],
//! [`PreTok::llama3`], [`PreTok::starcoder`].
//!
//! Public items: [`PreTok`], [`PreStep`], [`GPT2_REGEX`], [`LLAMA3_REGEX`],
//! [`byte_to_char`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

/// GPT-2's pre-tokenizer regex (`tokenizers` `ByteLevel` with `use_regex`).
pub const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's `Split` pre-tokenizer regex (tokenizer.json of Meta-Llama-3).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes for U+0100.. in byte order.
pub fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for (b, m) in map.iter_mut().enumerate() {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let cp = if printable {
            b as u32
        } else {
            extra += 1;
            255 + extra
        };
        *m = char::from_u32(cp).unwrap_or('\0');
    }
    map
}

/// One step of a pre-tokenizer chain.
#[derive(Clone, Debug)]
pub enum PreStep {
    /// `Split` with behaviour `Isolated`: every match and every gap is a word.
    Split(Box<fancy_regex::Regex>),
    /// `Digits`: each digit (`char::is_numeric`) alone when `individual`,
    /// else runs of digits, as words.
    Digits { individual: bool },
    /// `ByteLevel`: optionally a leading space, optionally GPT-2's regex.
    ByteLevel { add_prefix_space: bool, use_regex: bool },
}

/// A pre-tokenizer: the chain of steps and the name it is known by.
#[derive(Clone, Debug)]
pub struct PreTok {
    pub name: String,
    pub steps: Vec<PreStep>,
    /// the `pre_tokenizer` of a tokenizer.json describing it
    pub json: serde_json::Value,
    gpt2: Box<fancy_regex::Regex>,
}

pub(crate) fn compile(re: &str) -> Result<Box<fancy_regex::Regex>, String> {
    fancy_regex::Regex::new(re).map(Box::new).map_err(|e| format!("regex {re:?}: {e}"))
}

impl PreTok {
    pub fn new(name: &str, steps: Vec<PreStep>, json: serde_json::Value) -> Result<PreTok, String> {
        Ok(PreTok { name: name.into(), steps, json, gpt2: compile(GPT2_REGEX)? })
    }
    fn byte_level_json(use_regex: bool) -> serde_json::Value {
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
    }
    /// GPT-2: `ByteLevel(add_prefix_space=false, use_regex=true)`.
    pub fn gpt2() -> Result<PreTok, String> {
        Self::new("gpt-2", vec![PreStep::ByteLevel { add_prefix_space: false, use_regex: true }], Self::byte_level_json(true))
    }
    /// Llama 3: `Split(LLAMA3_REGEX, Isolated)`, `ByteLevel(use_regex=false)`.
    pub fn llama3() -> Result<PreTok, String> {
        let json = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
            Self::byte_level_json(false)]});
        Self::new("llama3", vec![PreStep::Split(compile(LLAMA3_REGEX)?), PreStep::ByteLevel { add_prefix_space: false, use_regex: false }], json)
    }
    /// StarCoder / SmolLM: `Digits(individual_digits=true)`, `ByteLevel(use_regex=true)`.
    pub fn starcoder() -> Result<PreTok, String> {
        let json = serde_json::json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, Self::byte_level_json(true)]});
        Self::new("starcoder", vec![PreStep::Digits { individual: true }, PreStep::ByteLevel { add_prefix_space: false, use_regex: true }], json)
    }

    /// The pre-tokenizer a GGUF `tokenizer.ggml.pre` names, with whether
    /// llama.cpp ignores merges for it; None if we do not know the name.
    pub fn from_gguf_name(name: &str) -> Option<Result<(PreTok, bool), String>> {
        Some(match name {
            "default" | "gpt-2" | "gpt2" => Self::gpt2().map(|p| (p, false)),
            "llama3" | "llama-v3" | "llama-bpe" => Self::llama3().map(|p| (p, true)),
            "starcoder" | "refact" | "smollm" | "codeshell" => Self::starcoder().map(|p| (p, false)),
            _ => return None,
        })
    }

    /// Cuts `text` into words, appended to `out` as byte ranges of `text`,
    /// each with whether a space is to be prepended (ByteLevel
    /// `add_prefix_space` on the first word).
    fn split(&self, text: &str, out: &mut Vec<(usize, usize)>, prefix_space: &mut bool) {
        let mut cur: Vec<(usize, usize)> = vec![(0, text.len())];
        let mut next = Vec::new();
        for step in &self.steps {
            next.clear();
            for &(s, e) in &cur {
                let piece = &text[s..e];
                match step {
                    PreStep::Split(re) => isolate(re, piece, s, &mut next),
                    PreStep::Digits { individual } => {
                        let mut start = 0;
                        let mut run: Option<usize> = None;
                        for (i, c) in piece.char_indices() {
                            if c.is_numeric() {
                                if run.is_none() || *individual {
                                    if start < i {
                                        next.push((s + start, s + i));
                                    }
                                    start = i;
                                }
                                run = Some(i);
                            } else if run.take().is_some() {
                                next.push((s + start, s + i));
                                start = i;
                            }
                        }
                        if start < piece.len() {
                            next.push((s + start, e));
                        }
                    }
                    PreStep::ByteLevel { add_prefix_space, use_regex } => {
                        if *add_prefix_space && s == 0 && !piece.starts_with(' ') {
                            *prefix_space = true;
                        }
                        if *use_regex {
                            isolate(&self.gpt2, piece, s, &mut next);
                        } else {
                            next.push((s, e));
                        }
                    }
                }
            }
            std::mem::swap(&mut cur, &mut next);
        }
        out.extend(cur.into_iter().filter(|(s, e)| e > s));
    }
}

/// Matches of `re` in `piece` and the gaps between them, as ranges offset by `base`.
fn isolate(re: &fancy_regex::Regex, piece: &str, base: usize, out: &mut Vec<(usize, usize)>) {
    let mut last = 0;
    let mut at = 0;
    while at <= piece.len() {
        // a regex error (backtrack limit) ends the matching: the rest is one word
        let Ok(Some(m)) = re.find_from_pos(piece, at) else { break };
        if m.start() > last {
            out.push((base + last, base + m.start()));
        }
        if m.end() > m.start() {
            out.push((base + m.start(), base + m.end()));
            last = m.end();
            at = m.end();
        } else {
            last = m.start();
            at = m.start() + piece[m.start()..].chars().next().map_or(1, char::len_utf8);
        }
    }
    if last < piece.len() {
        out.push((base + last, base + piece.len()));
    }
}

/// One added token: its text and id.
#[derive(Clone, Debug)]
pub(crate) struct Added {
    pub text: String,
    pub id: u32,
}

/// The byte-level BPE model of a tokenizer.
#[derive(Debug)]
pub(crate) struct ByteLevel {
    pub pre: PreTok,
    pub ignore_merges: bool,
    /// token text (in stand-in characters) → id
    vocab: FxHashMap<String, u32>,
    /// (left id, right id) → (rank, merged id)
    merges: FxHashMap<(u32, u32), (u32, u32)>,
    /// id of each byte's stand-in character (None if the vocabulary lacks it)
    byte_id: [Option<u32>; 256],
    char_of_byte: [char; 256],
    byte_of_char: FxHashMap<char, u8>,
    /// added tokens, longest first (for leftmost-longest matching)
    added: Vec<Added>,
    unk_id: Option<u32>,
}

/// Merge candidate in the heap: lowest rank first, then leftmost.
type Cand = Reverse<(u32, usize)>;

impl ByteLevel {
    /// `tokens[id]` in stand-in characters; `merges` as (left, right) texts
    /// in rank order; `added` the added tokens (cut out of text first).
    pub fn new(
        pre: PreTok,
        tokens: &[String],
        merges: &[(String, String)],
        added: Vec<Added>,
        ignore_merges: bool,
        unk_id: Option<u32>,
    ) -> Result<ByteLevel, String> {
        let mut vocab = FxHashMap::default();
        for (i, t) in tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(i as u32);
        }
        let mut mm = FxHashMap::default();
        for (rank, (a, b)) in merges.iter().enumerate() {
            let id = |t: &str| vocab.get(t).copied().ok_or_else(|| format!("merge {rank} ({a:?} {b:?}): {t:?} is not a token"));
            let (l, r, m) = (id(a)?, id(b)?, id(&format!("{a}{b}"))?);
            mm.entry((l, r)).or_insert((rank as u32, m));
        }
        let char_of_byte = byte_to_char();
        let mut byte_of_char = FxHashMap::default();
        let mut byte_id = [None; 256];
        for (b, &c) in char_of_byte.iter().enumerate() {
            byte_of_char.insert(c, b as u8);
            byte_id[b] = vocab.get(c.encode_utf8(&mut [0u8; 4]) as &str).copied();
        }
        let mut added = added;
        added.retain(|a| !a.text.is_empty());
        added.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        Ok(ByteLevel { pre, ignore_merges, vocab, merges: mm, byte_id, char_of_byte, byte_of_char, added, unk_id })
    }

    pub fn n_merges(&self) -> usize {
        self.merges.len()
    }

    /// The added token starting at byte `at` of `text`, longest first.
    fn added_at(&self, text: &str, at: usize) -> Option<&Added> {
        let rest = &text.as_bytes()[at..];
        self.added.iter().find(|a| rest.starts_with(a.text.as_bytes()))
    }

    /// Appends the ids of `text`; with `specials`, added tokens in the text
    /// are cut out and become their ids (as `tokenizers` always does).
    pub fn encode(&self, text: &str, specials: bool, cache: &mut FxHashMap<Box<str>, Box<[u32]>>, out: &mut Vec<u32>) {
        let mut start = 0;
        if specials && !self.added.is_empty() {
            let mut i = 0;
            while i < text.len() {
                if !text.is_char_boundary(i) {
                    i += 1;
                    continue;
                }
                if let Some(a) = self.added_at(text, i) {
                    self.encode_segment(&text[start..i], cache, out);
                    out.push(a.id);
                    i += a.text.len();
                    start = i;
                } else {
                    i += 1;
                }
            }
        }
        self.encode_segment(&text[start..], cache, out);
    }

    fn encode_segment(&self, text: &str, cache: &mut FxHashMap<Box<str>, Box<[u32]>>, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut words = Vec::new();
        let mut prefix = false;
        self.pre.split(text, &mut words, &mut prefix);
        let mut mapped = String::new();
        for (k, &(s, e)) in words.iter().enumerate() {
            mapped.clear();
            if k == 0 && prefix {
                mapped.push(self.char_of_byte[b' ' as usize]);
            }
            for &b in &text.as_bytes()[s..e] {
                mapped.push(self.char_of_byte[b as usize]);
            }
            if let Some(ids) = cache.get(mapped.as_str()) {
                out.extend_from_slice(ids);
                continue;
            }
            let n0 = out.len();
            self.merge_word(&mapped, out);
            if cache.len() > 1 << 17 {
                cache.clear();
            }
            cache.insert(mapped.as_str().into(), out[n0..].into());
        }
    }

    /// BPE on one word in stand-in characters.
    fn merge_word(&self, word: &str, out: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(&id) = self.vocab.get(word) {
                out.push(id);
                return;
            }
        }
        // symbols: (id, prev, next) as a linked list; usize::MAX = none
        let mut ids: Vec<u32> = Vec::with_capacity(word.len());
        for c in word.chars() {
            let id = match self.byte_of_char.get(&c) {
                Some(&b) => self.byte_id[b as usize],
                None => self.vocab.get(c.encode_utf8(&mut [0u8; 4]) as &str).copied(),
            };
            // like `tokenizers` without an unk token: unknown characters vanish
            if let Some(id) = id.or(self.unk_id) {
                ids.push(id);
            }
        }
        let n = ids.len();
        if n < 2 {
            out.extend_from_slice(&ids);
            return;
        }
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).map(|i| if i == n { usize::MAX } else { i }).collect();
        let mut alive = vec![true; n];
        let mut heap: BinaryHeap<Cand> = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some(&(rank, _)) = self.merges.get(&(ids[i], ids[i + 1])) {
                heap.push(Reverse((rank, i)));
            }
        }
        while let Some(Reverse((rank, i))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j == usize::MAX {
                continue;
            }
            // stale entry: the pair at i changed since it was pushed
            let Some(&(r, m)) = self.merges.get(&(ids[i], ids[j])) else { continue };
            if r != rank {
                continue;
            }
            ids[i] = m;
            alive[j] = false;
            let k = next[j];
            next[i] = k;
            if k != usize::MAX {
                prev[k] = i;
                if let Some(&(r2, _)) = self.merges.get(&(ids[i], ids[k])) {
                    heap.push(Reverse((r2, i)));
                }
            }
            let p = prev[i];
            if p != usize::MAX {
                if let Some(&(r2, _)) = self.merges.get(&(ids[p], ids[i])) {
                    heap.push(Reverse((r2, p)));
                }
            }
        }
        let mut i = 0;
        while i != usize::MAX {
            out.push(ids[i]);
            i = next[i];
        }
    }

    /// Appends the bytes of token text `t` as the `ByteLevel` decoder does:
    /// each stand-in character back to its byte; a token with any other
    /// character is kept as its own UTF-8.
    pub fn token_bytes(&self, t: &str, out: &mut Vec<u8>) {
        let n0 = out.len();
        for c in t.chars() {
            match self.byte_of_char.get(&c) {
                Some(&b) => out.push(b),
                None => {
                    out.truncate(n0);
                    out.extend_from_slice(t.as_bytes());
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_gpt2s() {
        let m = byte_to_char();
        assert_eq!(m[b'a' as usize], 'a');
        assert_eq!(m[b' ' as usize], 'Ġ'); // U+0120
        assert_eq!(m[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(m[0], 'Ā'); // U+0100
        assert_eq!(m[173], '\u{143}'); // the last of the 68 stand-ins (33 + 34 + 1)
        let mut all: Vec<char> = m.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    fn words(p: &PreTok, s: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut pre = false;
        p.split(s, &mut out, &mut pre);
        out.into_iter().map(|(a, b)| s[a..b].to_string()).collect()
    }

    #[test]
    fn gpt2_regex_splits_as_gpt2() {
        let p = PreTok::gpt2().unwrap();
        assert_eq!(words(&p, "Hello world's  end\n\n x12"), ["Hello", " world", "'s", " ", " end", "\n\n", " x", "12"]);
        let s = PreTok::starcoder().unwrap();
        assert_eq!(words(&s, "ab123 4"), ["ab", "1", "2", "3", " ", "4"]);
        let l = PreTok::llama3().unwrap();
        assert_eq!(words(&l, "I'M 12345!!\n\n"), ["I", "'M", " ", "123", "45", "!!\n\n"]);
    }

    #[test]
    fn merges_go_by_rank_then_leftmost() {
        let toks: Vec<String> = ["a", "b", "aa", "ab", "aab"].iter().map(|s| s.to_string()).collect();
        let merges = vec![("a".to_string(), "b".to_string()), ("a".to_string(), "a".to_string()), ("a".to_string(), "ab".to_string())];
        let bl = ByteLevel::new(PreTok::new("none", vec![], serde_json::Value::Null).unwrap(), &toks, &merges, vec![], false, None).unwrap();
        let mut out = vec![];
        bl.merge_word("aaab", &mut out);
        // "a a a b": (a,b) rank 0 first -> "a a ab"; then (a,a) rank 1 leftmost -> "aa ab"
        assert_eq!(out, vec![2, 3]);
    }
}
