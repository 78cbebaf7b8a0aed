//! BPE vocabulary training, as SentencePiece's BPE trainer does it, with the
//! Llama settings by default (byte fallback, split digits, dummy prefix,
//! whitespace-only pieces allowed, extra whitespace kept).
//!
//! Reference: sentencepiece `trainer_interface.cc` (character coverage and
//! required characters, `IsValidSentencePiece`: at most 16 characters, one
//! Unicode script per piece with Hiragana/Katakana counted as Han, digits
//! alone when splitting digits, U+2581 only as a prefix or in
//! whitespace-only pieces, `SplitIntoWords`) and `bpe_model_trainer.cc`
//! (repeatedly merge the most frequent adjacent pair; ties: the shorter
//! piece, then the lexicographically smaller; piece scores 0, -1, -2, ... in
//! merge order, then the required characters by frequency).
//! Differences: we always take the exact most frequent pair (SentencePiece
//! scans a refreshed top-5% subset), break remaining ties by symbol ids so
//! the result is deterministic, and never add a piece twice.
//!
//! Memory: the input is streamed; only the distinct words and their counts
//! are kept, so a corpus of many GB costs its vocabulary of words.
//!
//! Public items: [`TrainConfig`], [`Trainer`] (`add_sentence`, `add_text`,
//! `train`), [`TrainProgress`].

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;
use unicode_script::{Script, UnicodeScript};

use super::normalize::Normalizer;
use super::spm_proto::{ModelProto, ModelType, NormalizerSpec, SpmPiece, TrainerSpec};
use super::{PieceKind, SourceFormat, Tokenizer, TokenizerError, META};

/// Settings of a training run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainConfig {
    /// Total pieces, including UNK/BOS/EOS and the 256 byte pieces.
    pub vocab_size: u32,
    pub byte_fallback: bool,
    /// Digits are pieces of one character.
    pub split_digits: bool,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    /// Pieces made only of U+2581 are allowed (Llama: runs of spaces).
    pub allow_whitespace_only_pieces: bool,
    /// Characters kept as pieces cover this fraction of all characters; the
    /// rarest rest go to byte fallback (or UNK).
    pub character_coverage: f64,
    /// Longest piece, in characters.
    pub max_piece_chars: usize,
    /// Longer sentences (lines) are skipped, as SentencePiece does.
    pub max_sentence_bytes: usize,
}

impl Default for TrainConfig {
    /// Llama 2's trainer settings (vocab size aside).
    fn default() -> Self {
        TrainConfig {
            vocab_size: 32000,
            byte_fallback: true,
            split_digits: true,
            add_dummy_prefix: true,
            remove_extra_whitespaces: false,
            allow_whitespace_only_pieces: true,
            character_coverage: 0.99995,
            max_piece_chars: 16,
            max_sentence_bytes: 4192,
        }
    }
}

/// Progress of [`Trainer::train`].
#[derive(Clone, Copy, Debug)]
pub struct TrainProgress {
    pub merges_done: usize,
    pub merges_total: usize,
}

/// Collects word counts from text, then learns the merges.
pub struct Trainer {
    config: TrainConfig,
    normalizer: Normalizer,
    words: FxHashMap<String, u64>,
    norm: String,
    pub sentences: u64,
    pub skipped_long: u64,
}

/// SentencePiece marks characters outside the required set with U+2585.
const UNK_CHAR: char = '\u{2585}';
const NO_SYM: u32 = u32::MAX;

fn err(m: String) -> TokenizerError {
    TokenizerError::Train(m)
}

impl Trainer {
    pub fn new(config: TrainConfig) -> Result<Trainer, TokenizerError> {
        if !(0.0..=1.0).contains(&config.character_coverage) || config.character_coverage == 0.0 {
            return Err(err(format!("character_coverage {} must be in (0, 1]; HINT: Llama uses 0.99995", config.character_coverage)));
        }
        if config.max_piece_chars == 0 {
            return Err(err("max_piece_chars must be at least 1".into()));
        }
        let normalizer = Normalizer {
            charsmap: None,
            add_dummy_prefix: config.add_dummy_prefix,
            remove_extra_whitespaces: config.remove_extra_whitespaces,
            escape_whitespaces: true,
            prefix_only_if_absent: false,
            user_defined: vec![],
        };
        Ok(Trainer { config, normalizer, words: FxHashMap::default(), norm: String::new(), sentences: 0, skipped_long: 0 })
    }

    /// Adds one sentence (a line; SentencePiece trains on lines).
    pub fn add_sentence(&mut self, s: &str) {
        let s = s.strip_suffix('\r').unwrap_or(s);
        if s.is_empty() {
            return;
        }
        if s.len() > self.config.max_sentence_bytes {
            self.skipped_long += 1;
            return;
        }
        self.sentences += 1;
        let mut norm = std::mem::take(&mut self.norm);
        self.normalizer.normalize(s, true, &mut norm);
        for w in split_into_words(&norm, self.config.allow_whitespace_only_pieces) {
            if let Some(c) = self.words.get_mut(w) {
                *c += 1;
            } else {
                self.words.insert(w.to_string(), 1);
            }
        }
        self.norm = norm;
    }

    /// Adds every line of `text`.
    pub fn add_text(&mut self, text: &str) {
        for line in text.split('\n') {
            self.add_sentence(line);
        }
    }

    /// Distinct words so far.
    pub fn n_words(&self) -> usize {
        self.words.len()
    }

    /// Learns the vocabulary; `progress` is called after each merge.
    pub fn train(self, progress: &mut dyn FnMut(TrainProgress)) -> Result<Tokenizer, TokenizerError> {
        let cfg = &self.config;
        // 1. required characters by coverage (SentencePiece's order:
        //    frequency descending, then code point)
        let mut char_counts: FxHashMap<char, u64> = FxHashMap::default();
        let mut total = 0u64;
        for (w, &c) in &self.words {
            for ch in w.chars() {
                if ch == '\0' || ch == ' ' {
                    continue;
                }
                *char_counts.entry(ch).or_default() += c;
                total += c;
            }
        }
        if total == 0 {
            return Err(err("no training text (every line was empty or too long); HINT: check --input".into()));
        }
        let mut chars: Vec<(char, u64)> = char_counts.into_iter().collect();
        chars.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut required: Vec<(char, u64)> = Vec::new();
        let mut covered = 0u64;
        for &(ch, c) in &chars {
            if covered as f64 / total as f64 >= cfg.character_coverage {
                break;
            }
            covered += c;
            // SentencePiece never makes TAB (its pretokenisation boundary)
            // a piece: Llama 2 encodes it as the byte <0x09>
            if ch == '\t' {
                continue;
            }
            required.push((ch, c));
        }
        let n_meta = 3 + if cfg.byte_fallback { 256 } else { 0 };
        let vocab = cfg.vocab_size as usize;
        if vocab < n_meta + required.len() {
            return Err(err(format!(
                "vocab size {vocab} is smaller than the {n_meta} special pieces plus {} required characters; HINT: raise --vocab-size or lower the character coverage",
                required.len()
            )));
        }
        let merges_total = vocab - n_meta - required.len();

        // 2. symbols: required characters first, merged pieces appended
        let mut sym_str: Vec<String> = required.iter().map(|(c, _)| c.to_string()).collect();
        let mut sym_chars: Vec<usize> = vec![1; sym_str.len()];
        let mut sym_of: FxHashMap<String, u32> = sym_str.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect();
        let char_sym: FxHashMap<char, u32> = required.iter().enumerate().map(|(i, (c, _))| (*c, i as u32)).collect();

        // words as symbol sequences (sorted for determinism)
        let mut wlist: Vec<(String, u64)> = self.words.into_iter().collect();
        wlist.sort_unstable();
        let counts: Vec<i64> = wlist.iter().map(|w| w.1 as i64).collect();
        let mut words: Vec<Vec<u32>> = wlist.iter().map(|(w, _)| w.chars().map(|c| char_sym.get(&c).copied().unwrap_or(NO_SYM)).collect()).collect();
        drop(wlist);

        // 3. pair statistics
        let mut pairs: FxHashMap<u64, PairStat> = FxHashMap::default();
        for (wi, w) in words.iter().enumerate() {
            for p in w.windows(2) {
                if p[0] == NO_SYM || p[1] == NO_SYM {
                    continue;
                }
                let st = pairs.entry(key(p[0], p[1])).or_insert_with(|| PairStat::new(p[0], p[1], &sym_str, &sym_chars, cfg));
                st.count += counts[wi];
                if st.words.last() != Some(&(wi as u32)) {
                    st.words.push(wi as u32);
                }
            }
        }
        let mut heap: BinaryHeap<Cand> = pairs.iter().filter(|(_, s)| s.valid).map(|(&k, s)| Cand::new(k, s, &sym_str, &sym_chars)).collect();

        // 4. merge loop
        let mut merged_pieces: Vec<u32> = Vec::with_capacity(merges_total);
        let mut delta: FxHashMap<u64, i64> = FxHashMap::default();
        let mut new_in_word: Vec<(u64, u32)> = Vec::new();
        while merged_pieces.len() < merges_total {
            let Some(top) = heap.pop() else { break };
            let Some(st) = pairs.get(&top.key) else { continue };
            if st.count != top.count {
                if st.count > 0 {
                    heap.push(Cand { count: st.count, ..top });
                }
                continue;
            }
            if st.count <= 0 {
                break;
            }
            let (a, b) = (top.a, top.b);
            let s = format!("{}{}", sym_str[a as usize], sym_str[b as usize]);
            let c = match sym_of.get(&s) {
                Some(&c) => c,
                None => {
                    let c = sym_str.len() as u32;
                    sym_chars.push(sym_chars[a as usize] + sym_chars[b as usize]);
                    sym_of.insert(s.clone(), c);
                    sym_str.push(s);
                    merged_pieces.push(c);
                    progress(TrainProgress { merges_done: merged_pieces.len(), merges_total });
                    c
                }
            };
            let mut affected = pairs.get_mut(&top.key).map(|s| std::mem::take(&mut s.words)).unwrap_or_default();
            affected.sort_unstable();
            affected.dedup();
            delta.clear();
            new_in_word.clear();
            for &wi in &affected {
                let w = &mut words[wi as usize];
                if !w.windows(2).any(|p| p[0] == a && p[1] == b) {
                    continue;
                }
                let n = counts[wi as usize];
                for p in w.windows(2) {
                    if p[0] != NO_SYM && p[1] != NO_SYM {
                        *delta.entry(key(p[0], p[1])).or_default() -= n;
                    }
                }
                let mut out = Vec::with_capacity(w.len());
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                        out.push(c);
                        i += 2;
                    } else {
                        out.push(w[i]);
                        i += 1;
                    }
                }
                for p in out.windows(2) {
                    if p[0] != NO_SYM && p[1] != NO_SYM {
                        *delta.entry(key(p[0], p[1])).or_default() += n;
                        if p[0] == c || p[1] == c {
                            new_in_word.push((key(p[0], p[1]), wi));
                        }
                    }
                }
                *w = out;
            }
            for (&k, &d) in delta.iter() {
                if d == 0 {
                    continue;
                }
                let (l, r) = ((k >> 32) as u32, k as u32);
                let st = pairs.entry(k).or_insert_with(|| PairStat::new(l, r, &sym_str, &sym_chars, cfg));
                st.count += d;
                if st.valid && st.count > 0 {
                    heap.push(Cand::new(k, st, &sym_str, &sym_chars));
                }
            }
            for &(k, wi) in &new_in_word {
                if let Some(st) = pairs.get_mut(&k) {
                    if st.words.last() != Some(&wi) {
                        st.words.push(wi);
                    }
                }
            }
            pairs.remove(&top.key);
        }
        if merged_pieces.len() < merges_total {
            return Err(err(format!(
                "the corpus supports only {} merges but vocab size {vocab} needs {merges_total}; HINT: lower --vocab-size to at most {}",
                merged_pieces.len(),
                vocab - (merges_total - merged_pieces.len())
            )));
        }

        // 5. the model: UNK, BOS, EOS, bytes, merges (score 0, -1, ...),
        //    then the required characters
        let mut pieces = vec![
            SpmPiece { piece: "<unk>".into(), score: 0.0, kind: PieceKind::Unknown },
            SpmPiece { piece: "<s>".into(), score: 0.0, kind: PieceKind::Control },
            SpmPiece { piece: "</s>".into(), score: 0.0, kind: PieceKind::Control },
        ];
        if cfg.byte_fallback {
            for b in 0..=255u8 {
                pieces.push(SpmPiece { piece: format!("<0x{b:02X}>"), score: 0.0, kind: PieceKind::Byte });
            }
        }
        let mut rank = 0f32;
        for &c in &merged_pieces {
            pieces.push(SpmPiece { piece: sym_str[c as usize].clone(), score: -rank, kind: PieceKind::Normal });
            rank += 1.0;
        }
        for (ch, _) in &required {
            pieces.push(SpmPiece { piece: ch.to_string(), score: -rank, kind: PieceKind::Normal });
            rank += 1.0;
        }
        let proto = ModelProto {
            trainer: TrainerSpec {
                model_type: ModelType::Bpe,
                vocab_size: pieces.len() as i32,
                character_coverage: cfg.character_coverage as f32,
                max_sentence_length: cfg.max_sentence_bytes as i32,
                max_sentencepiece_length: cfg.max_piece_chars as i32,
                split_digits: cfg.split_digits,
                allow_whitespace_only_pieces: cfg.allow_whitespace_only_pieces,
                byte_fallback: cfg.byte_fallback,
                unk_id: 0,
                bos_id: 1,
                eos_id: 2,
                pad_id: -1,
                ..TrainerSpec::default()
            },
            normalizer: NormalizerSpec {
                name: "identity".into(),
                precompiled_charsmap: vec![],
                add_dummy_prefix: cfg.add_dummy_prefix,
                remove_extra_whitespaces: cfg.remove_extra_whitespaces,
                escape_whitespaces: true,
            },
            pieces,
            has_trainer_spec: true,
            has_normalizer_spec: true,
        };
        Tokenizer::from_proto(proto, "<trained>", SourceFormat::Memory)
    }
}

fn key(l: u32, r: u32) -> u64 {
    (u64::from(l) << 32) | u64::from(r)
}

/// SentencePiece's `SplitIntoWords` (whitespace as prefix): a word starts at
/// each U+2581, or only at the first of a run when whitespace-only pieces
/// are allowed.
fn split_into_words(s: &str, allow_ws_only: bool) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_ws = false;
    for (i, c) in s.char_indices() {
        let is_ws = c == META;
        if i == 0 || (is_ws && (!in_ws || !allow_ws_only)) {
            if i > start {
                out.push(&s[start..i]);
            }
            start = i;
            in_ws = true;
        }
        if in_ws && !is_ws {
            in_ws = false;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// Script class of a character for the one-script-per-piece rule.
fn script_class(c: char) -> Option<Script> {
    if c == '\u{30FC}' {
        return Some(Script::Han);
    }
    match c.script() {
        Script::Hiragana | Script::Katakana => Some(Script::Han),
        Script::Inherited => None,
        s => Some(s),
    }
}

/// SentencePiece's `IsValidSentencePiece` for our settings.
fn is_valid_piece(s: &str, n_chars: usize, cfg: &TrainConfig) -> bool {
    if n_chars == 0 || n_chars > cfg.max_piece_chars {
        return false;
    }
    let all_ws = s.chars().all(|c| c == META);
    let mut prev: Option<Script> = None;
    for (pos, c) in s.chars().enumerate() {
        if c == UNK_CHAR || c == '\0' || c == ' ' {
            return false;
        }
        if c == META {
            if (!cfg.allow_whitespace_only_pieces || !all_ws) && pos > 0 {
                return false;
            }
            continue;
        }
        if cfg.split_digits && c.is_ascii_digit() && n_chars > 1 {
            return false;
        }
        // Inherited (combining marks) takes the script before it
        let sc = script_class(c).or(prev);
        if let (Some(p), Some(s)) = (prev, sc) {
            if p != s {
                return false;
            }
        }
        prev = sc;
    }
    true
}

struct PairStat {
    count: i64,
    valid: bool,
    /// Words that may hold the pair (may be stale or repeated).
    words: Vec<u32>,
}

impl PairStat {
    fn new(a: u32, b: u32, sym_str: &[String], sym_chars: &[usize], cfg: &TrainConfig) -> PairStat {
        let s = format!("{}{}", sym_str[a as usize], sym_str[b as usize]);
        let valid = is_valid_piece(&s, sym_chars[a as usize] + sym_chars[b as usize], cfg);
        PairStat { count: 0, valid, words: Vec::new() }
    }
}

/// A heap entry: the most frequent pair first; ties: the shorter piece,
/// then the smaller string, then the smaller ids.
struct Cand {
    count: i64,
    n_chars: usize,
    s: Box<str>,
    a: u32,
    b: u32,
    key: u64,
}

impl Cand {
    fn new(key: u64, st: &PairStat, sym_str: &[String], sym_chars: &[usize]) -> Cand {
        let (a, b) = ((key >> 32) as u32, key as u32);
        Cand {
            count: st.count,
            n_chars: sym_chars[a as usize] + sym_chars[b as usize],
            s: format!("{}{}", sym_str[a as usize], sym_str[b as usize]).into(),
            a,
            b,
            key,
        }
    }
}

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.count.cmp(&o.count).then_with(|| o.n_chars.cmp(&self.n_chars)).then_with(|| o.s.cmp(&self.s)).then_with(|| o.key.cmp(&self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_sentencepiece() {
        let s = "\u{2581}\u{2581}Hello\u{2581}world";
        assert_eq!(split_into_words(s, true), vec!["\u{2581}\u{2581}Hello", "\u{2581}world"]);
        assert_eq!(split_into_words(s, false), vec!["\u{2581}", "\u{2581}Hello", "\u{2581}world"]);
    }

    #[test]
    fn piece_validity() {
        let cfg = TrainConfig::default();
        let ok = |s: &str| is_valid_piece(s, s.chars().count(), &cfg);
        assert!(ok("\u{2581}the") && ok("\u{2581}\u{2581}") && ok("ab") && ok("漢字かな"));
        assert!(!ok("a\u{2581}b") && !ok("12") && !ok("a1") && !ok("ab,") && !ok("Aж"));
        assert!(ok("e\u{301}") && !ok("\u{2581}7") && ok("..."));
        assert!(!ok(&"a".repeat(17)));
    }

    #[test]
    fn tiny_corpus_trains_and_round_trips() {
        let mut t = Trainer::new(TrainConfig { vocab_size: 259 + 30, ..Default::default() }).unwrap();
        let text = "the cat sat on the mat\nthe dog sat on the log 12345\n  two  spaces\n";
        for _ in 0..5 {
            t.add_text(text);
        }
        let tok = t.train(&mut |_| {}).unwrap();
        assert_eq!(tok.vocab_size(), 289);
        assert!(tok.piece_to_id("\u{2581}the").is_some());
        for line in text.lines().chain(["unseen ЖЖ 🦙 text\t!"]) {
            let ids = tok.encode(line, Default::default()).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), line);
        }
        // deterministic
        let mut t2 = Trainer::new(TrainConfig { vocab_size: 259 + 30, ..Default::default() }).unwrap();
        for _ in 0..5 {
            t2.add_text(text);
        }
        assert_eq!(t2.train(&mut |_| {}).unwrap().pieces(), tok.pieces());
    }
}
