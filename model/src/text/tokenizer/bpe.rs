//! SentencePiece BPE encoding of a normalised string: start from characters
//! (user-defined pieces matched whole and frozen), repeatedly merge the
//! adjacent pair whose concatenation is a vocabulary piece with the highest
//! score (ties: leftmost), then map what is left to ids: vocabulary pieces
//! as themselves, UNUSED pieces split back into the pieces they were merged
//! from, anything else to byte pieces (byte fallback) or to one UNK per run.
//!
//! Reference: sentencepiece `bpe_model.cc` (`Model::Encode`: the agenda
//! ordered by score then left position, the validity check of a popped pair,
//! the resegmentation of unused pieces) and `sentencepiece_processor.cc`
//! (byte fallback, joining consecutive unknowns).
//!
//! Speed, measured by `benches/tokenizer.rs` and `train-tool tokenizer
//! bench`: merges are looked up by (left symbol, right symbol) ids in one
//! hash table built at load from every split of every piece, instead of
//! hashing concatenated strings; when no piece has U+2581 after a non-U+2581
//! character (true of Llama 2 and of every vocabulary our trainer writes), no
//! merge can cross a "▁" that follows another character, so the string is
//! cut there into words that are encoded independently, short ones by a
//! linear scan and all through a per-caller cache of word -> ids. The cache
//! and the cuts change no output: the encode tests pin that down.
//!
//! Public items: [`EncodeCache`] (re-exported by the tokenizer module).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

use super::{PieceKind, META};

const META_UTF8: &[u8] = "\u{2581}".as_bytes();

/// A symbol id that matches no piece: a character absent from every piece.
pub(crate) const NO_SYM: u32 = u32::MAX;

/// Words of at most this many symbols are merged by a linear scan (cheaper
/// than the heap for the short words that make up most text).
const SCAN_MAX_SYMBOLS: usize = 24;
/// Words longer than this (bytes) are not cached: they rarely repeat.
const CACHE_MAX_WORD_BYTES: usize = 64;
/// The cache is cleared when it holds this many words (bounds its memory).
const CACHE_MAX_WORDS: usize = 1 << 17;

#[derive(Clone, Copy, Debug)]
struct Merge {
    /// The piece id of the concatenation.
    id: u32,
    score: f32,
}

/// Merge tables of one vocabulary.
#[derive(Debug)]
pub(crate) struct Bpe {
    n_pieces: u32,
    /// Symbol id of each ASCII byte (NO_SYM if in no piece).
    ascii_sym: [u32; 128],
    char_sym: FxHashMap<char, u32>,
    /// For symbols >= n_pieces (characters that are not mergeable pieces):
    /// the reserved piece with that exact text (SentencePiece looks reserved
    /// pieces up too), or NO_SYM.
    extra_emit: Vec<u32>,
    pairs: FxHashMap<u64, Merge>,
    /// Per piece: UNUSED (split back on output).
    unused: Vec<bool>,
    has_unused: bool,
    /// User-defined pieces, longest first.
    user_defined: Vec<(String, u32)>,
    byte_ids: Option<[u32; 256]>,
    unk_id: u32,
    fuse_unk: bool,
    /// Whether words may be encoded independently (see the module doc).
    pub(crate) chunkable: bool,
    /// ASCII characters that no mergeable piece has before another
    /// character (`no_follow`) or after one (`no_precede`).
    no_follow: [bool; 128],
    no_precede: [bool; 128],
}

fn key(l: u32, r: u32) -> u64 {
    (u64::from(l) << 32) | u64::from(r)
}

/// Per-caller memo of word -> ids; reuse one per thread for speed.
#[derive(Default)]
pub struct EncodeCache {
    words: FxHashMap<Box<str>, Box<[u32]>>,
    scratch: Scratch,
    /// Reused buffer for the normalised text.
    pub(crate) norm: String,
    /// Byte-level words (stand-in characters) -> ids.
    pub(crate) bl_words: FxHashMap<Box<str>, Box<[u32]>>,
}

impl EncodeCache {
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of cached words.
    pub fn len(&self) -> usize {
        self.words.len() + self.bl_words.len()
    }
    pub fn is_empty(&self) -> bool {
        self.words.is_empty() && self.bl_words.is_empty()
    }
}

#[derive(Default)]
struct Scratch {
    syms: Vec<Sym>,
    scores: Vec<Option<Merge>>,
    heap: BinaryHeap<Cand>,
    nodes: Vec<Node>,
    word: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct Sym {
    id: u32,
    /// byte span in the word
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
    frozen: bool,
    /// merge-tree node (only kept when the vocabulary has UNUSED pieces)
    node: u32,
}

/// A node of the merge tree, for splitting UNUSED pieces back.
#[derive(Clone, Copy, Debug)]
struct Node {
    id: u32,
    left: u32,
    right: u32,
    /// byte span in the word
    start: u32,
    len: u32,
}

const NONE: u32 = u32::MAX;

/// A candidate merge on the agenda.
#[derive(Clone, Copy, Debug)]
struct Cand {
    score: f32,
    left: u32,
    right: u32,
    left_id: u32,
    right_id: u32,
    merged: u32,
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
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
    }
}

impl Bpe {
    /// Builds the tables from (text, score, kind) of every piece.
    /// `merges`: an explicit ranked merge list (Hugging Face BPE: a pair
    /// merges only if listed, earlier first); None: SentencePiece's rule
    /// (any split of a piece, by the piece's score). `fuse_unk`: one UNK per
    /// run of unknowns (SentencePiece always).
    pub(crate) fn new(
        pieces: &[(&str, f32, PieceKind)],
        unk_id: u32,
        byte_ids: Option<[u32; 256]>,
        merges: Option<&[(String, String)]>,
        fuse_unk: bool,
    ) -> Bpe {
        let n_pieces = pieces.len() as u32;
        let mergeable = |k: PieceKind| matches!(k, PieceKind::Normal | PieceKind::UserDefined | PieceKind::Unused);
        let mut piece_id: FxHashMap<&str, u32> = FxHashMap::default();
        let mut reserved: FxHashMap<&str, u32> = FxHashMap::default();
        for (i, &(t, _, k)) in pieces.iter().enumerate() {
            if mergeable(k) {
                piece_id.entry(t).or_insert(i as u32);
            } else {
                reserved.entry(t).or_insert(i as u32);
            }
        }
        // Characters: their own piece if they are one, else an extra symbol.
        let mut char_sym: FxHashMap<char, u32> = FxHashMap::default();
        let mut extra_emit = Vec::new();
        let mut sym_of_char = |c: char, char_sym: &mut FxHashMap<char, u32>| -> u32 {
            if let Some(&s) = char_sym.get(&c) {
                return s;
            }
            let mut buf = [0u8; 4];
            let cs: &str = c.encode_utf8(&mut buf);
            let s = match piece_id.get(cs) {
                Some(&id) => id,
                None => {
                    extra_emit.push(reserved.get(cs).copied().unwrap_or(NO_SYM));
                    n_pieces + extra_emit.len() as u32 - 1
                }
            };
            char_sym.insert(c, s);
            s
        };
        for &(t, _, k) in pieces {
            let in_pieces = mergeable(k);
            let single = t.chars().count() == 1;
            if in_pieces || (single && reserved.contains_key(t)) {
                for c in t.chars() {
                    sym_of_char(c, &mut char_sym);
                }
            }
        }
        // A string's symbol: a mergeable piece, or a single character.
        let sym_of = |s: &str, char_sym: &FxHashMap<char, u32>| -> Option<u32> {
            if let Some(&id) = piece_id.get(s) {
                return Some(id);
            }
            let mut it = s.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => char_sym.get(&c).copied(),
                _ => None,
            }
        };
        let mut pairs = FxHashMap::default();
        let mut chunkable = true;
        for (i, &(t, score, k)) in pieces.iter().enumerate() {
            if !mergeable(k) || piece_id.get(t) != Some(&(i as u32)) {
                continue;
            }
            let body = t.trim_start_matches(META);
            if body.contains(META) {
                chunkable = false;
            }
            if merges.is_some() {
                continue;
            }
            for (split, _) in t.char_indices().skip(1) {
                let (l, r) = t.split_at(split);
                if let (Some(a), Some(b)) = (sym_of(l, &char_sym), sym_of(r, &char_sym)) {
                    pairs.insert(key(a, b), Merge { id: i as u32, score });
                }
            }
        }
        for (rank, (l, r)) in merges.unwrap_or(&[]).iter().enumerate() {
            let merged = format!("{l}{r}");
            let (Some(a), Some(b), Some(&id)) = (sym_of(l, &char_sym), sym_of(r, &char_sym), piece_id.get(merged.as_str())) else {
                continue; // a merge whose parts or result are not pieces can never apply
            };
            pairs.entry(key(a, b)).or_insert(Merge { id, score: -(rank as f32) });
        }
        let mut no_follow = [true; 128];
        let mut no_precede = [true; 128];
        for &(t, _, k) in pieces {
            if !mergeable(k) {
                continue;
            }
            let n = t.chars().count();
            for (pos, c) in t.chars().enumerate() {
                if (c as u32) < 128 {
                    if pos + 1 < n {
                        no_follow[c as usize] = false;
                    }
                    if pos > 0 {
                        no_precede[c as usize] = false;
                    }
                }
            }
        }
        let mut ascii_sym = [NO_SYM; 128];
        for (b, s) in ascii_sym.iter_mut().enumerate() {
            if let Some(&id) = char_sym.get(&(b as u8 as char)) {
                *s = id;
            }
        }
        let unused: Vec<bool> = pieces.iter().map(|p| p.2 == PieceKind::Unused).collect();
        let has_unused = unused.iter().any(|&u| u);
        let mut user_defined: Vec<(String, u32)> =
            pieces.iter().enumerate().filter(|(_, p)| p.2 == PieceKind::UserDefined).map(|(i, p)| (p.0.to_string(), i as u32)).collect();
        user_defined.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        if user_defined.iter().any(|(u, _)| u.trim_start_matches(META).contains(META)) {
            chunkable = false;
        }
        Bpe { n_pieces, ascii_sym, char_sym, extra_emit, pairs, unused, has_unused, user_defined, byte_ids, unk_id, fuse_unk, chunkable, no_follow, no_precede }
    }

    /// Number of (left, right) -> merged entries.
    pub(crate) fn n_pairs(&self) -> usize {
        self.pairs.len()
    }

    /// Encodes a normalised string, appending ids to `out`. The string is
    /// cut where no merge can cross: before a "▁" that follows another
    /// character (when `chunkable`), and around ASCII characters that no
    /// piece has before (`no_follow`) or after (`no_precede`) another
    /// character, such as newline and tab in Llama 2.
    pub(crate) fn encode(&self, norm: &str, out: &mut Vec<u32>, cache: &mut EncodeCache, use_cache: bool) {
        let b = norm.as_bytes();
        let mut start = 0;
        let mut prev_no_follow = false;
        let mut prev_meta = false;
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            let (cut, len, no_follow, is_meta) = if c < 0x80 {
                (prev_no_follow || self.no_precede[c as usize], 1, self.no_follow[c as usize], false)
            } else if b[i..].starts_with(META_UTF8) {
                (prev_no_follow || (self.chunkable && !prev_meta), 3, false, true)
            } else {
                let len = match c {
                    0xc0..=0xdf => 2,
                    0xe0..=0xef => 3,
                    _ => 4,
                };
                (prev_no_follow, len, false, false)
            };
            if cut && i > start {
                self.encode_cached(&norm[start..i], out, cache, use_cache);
                start = i;
            }
            prev_no_follow = no_follow;
            prev_meta = is_meta;
            i += len;
        }
        if start < b.len() {
            self.encode_cached(&norm[start..], out, cache, use_cache);
        }
    }

    fn encode_cached(&self, word: &str, out: &mut Vec<u32>, cache: &mut EncodeCache, use_cache: bool) {
        if use_cache && word.len() <= CACHE_MAX_WORD_BYTES {
            if let Some(ids) = cache.words.get(word) {
                self.join(out, ids);
                return;
            }
        }
        let mut ids = std::mem::take(&mut cache.scratch.word);
        ids.clear();
        self.encode_word(word, &mut ids, &mut cache.scratch);
        self.join(out, &ids);
        if use_cache && word.len() <= CACHE_MAX_WORD_BYTES {
            if cache.words.len() >= CACHE_MAX_WORDS {
                cache.words.clear();
            }
            cache.words.insert(word.into(), ids.as_slice().into());
        }
        cache.scratch.word = ids;
    }

    /// Appends a word's ids, joining an UNK that continues a run of UNKs
    /// (SentencePiece emits one UNK per run when there is no byte fallback).
    fn join(&self, out: &mut Vec<u32>, ids: &[u32]) {
        let skip = usize::from(self.fuse_unk && self.byte_ids.is_none() && out.last() == Some(&self.unk_id) && ids.first() == Some(&self.unk_id));
        out.extend_from_slice(&ids[skip..]);
    }

    /// Splits a word into its initial symbols.
    fn init_symbols(&self, word: &str, syms: &mut Vec<Sym>) {
        syms.clear();
        let bytes = word.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let n = syms.len() as u32;
            let mut sym = Sym { id: NO_SYM, start: i as u32, len: 1, prev: n.wrapping_sub(1), next: n + 1, frozen: false, node: NONE };
            let b = bytes[i];
            let mut matched = false;
            if !self.user_defined.is_empty() {
                for (u, id) in &self.user_defined {
                    if bytes[i..].starts_with(u.as_bytes()) {
                        sym.id = *id;
                        sym.len = u.len() as u32;
                        sym.frozen = true;
                        matched = true;
                        break;
                    }
                }
            }
            if !matched {
                if b < 128 {
                    sym.id = self.ascii_sym[b as usize];
                } else {
                    // `word` is a str slice cut at char boundaries
                    let c = word[i..].chars().next().unwrap_or('\u{FFFD}');
                    sym.len = c.len_utf8() as u32;
                    sym.id = self.char_sym.get(&c).copied().unwrap_or(NO_SYM);
                }
            }
            i += sym.len as usize;
            syms.push(sym);
        }
        if let Some(last) = syms.last_mut() {
            last.next = NONE;
        }
    }

    fn lookup(&self, l: &Sym, r: &Sym) -> Option<Merge> {
        if l.frozen || r.frozen || l.id == NO_SYM || r.id == NO_SYM {
            return None;
        }
        self.pairs.get(&key(l.id, r.id)).copied()
    }

    /// Encodes one word (or the whole string when not chunkable).
    fn encode_word(&self, word: &str, out: &mut Vec<u32>, s: &mut Scratch) {
        self.encode_word_by(word, out, s, None)
    }

    /// `force_heap`: Some(true/false) picks the merge loop (for tests).
    fn encode_word_by(&self, word: &str, out: &mut Vec<u32>, s: &mut Scratch, force_heap: Option<bool>) {
        self.init_symbols(word, &mut s.syms);
        let scan = s.syms.len() <= SCAN_MAX_SYMBOLS && !self.has_unused;
        if !self.has_unused && force_heap.map_or(scan, |h| !h) {
            self.merge_scan(s);
            for sym in &s.syms {
                self.emit(sym, word, out);
            }
        } else {
            self.merge_heap(s);
            let mut i = if s.syms.is_empty() { NONE } else { 0 };
            while i != NONE {
                let sym = s.syms[i as usize];
                if self.has_unused {
                    self.emit_node(sym.node, word, &s.nodes, out);
                } else {
                    self.emit(&sym, word, out);
                }
                i = sym.next;
            }
        }
    }

    /// Short words: rescan the pair scores after each merge (same order as
    /// the heap: highest score, then leftmost).
    fn merge_scan(&self, s: &mut Scratch) {
        let syms = &mut s.syms;
        let scores = &mut s.scores;
        scores.clear();
        for w in syms.windows(2) {
            scores.push(self.lookup(&w[0], &w[1]));
        }
        loop {
            let mut best: Option<(usize, Merge)> = None;
            for (i, m) in scores.iter().enumerate() {
                if let Some(m) = m {
                    if best.is_none_or(|(_, b)| m.score > b.score) {
                        best = Some((i, *m));
                    }
                }
            }
            let Some((i, m)) = best else { break };
            syms[i].id = m.id;
            syms[i].len += syms[i + 1].len;
            syms.remove(i + 1);
            scores.remove(i);
            if i > 0 {
                scores[i - 1] = self.lookup(&syms[i - 1], &syms[i]);
            }
            if i + 1 < syms.len() {
                scores[i] = self.lookup(&syms[i], &syms[i + 1]);
            }
        }
    }

    fn push_cand(&self, s: &mut Scratch, left: u32) {
        let l = s.syms[left as usize];
        if l.next == NONE {
            return;
        }
        let r = s.syms[l.next as usize];
        if let Some(m) = self.lookup(&l, &r) {
            s.heap.push(Cand { score: m.score, left, right: l.next, left_id: l.id, right_id: r.id, merged: m.id });
        }
    }

    /// Long words: the agenda of SentencePiece (a max-heap of candidate
    /// pairs; a popped pair is used only if both symbols are unchanged).
    fn merge_heap(&self, s: &mut Scratch) {
        s.heap.clear();
        s.nodes.clear();
        if self.has_unused {
            for (i, sym) in s.syms.iter_mut().enumerate() {
                sym.node = i as u32;
                s.nodes.push(Node { id: sym.id, left: NONE, right: NONE, start: sym.start, len: sym.len });
            }
        }
        for i in 0..s.syms.len().saturating_sub(1) {
            self.push_cand(s, i as u32);
        }
        while let Some(c) = s.heap.pop() {
            let (l, r) = (s.syms[c.left as usize], s.syms[c.right as usize]);
            if l.len == 0 || r.len == 0 || l.next != c.right || l.id != c.left_id || r.id != c.right_id {
                continue;
            }
            let node = if self.has_unused {
                s.nodes.push(Node { id: c.merged, left: l.node, right: r.node, start: l.start, len: l.len + r.len });
                s.nodes.len() as u32 - 1
            } else {
                NONE
            };
            let li = c.left as usize;
            s.syms[li].id = c.merged;
            s.syms[li].len += r.len;
            s.syms[li].next = r.next;
            s.syms[li].node = node;
            s.syms[c.right as usize].len = 0;
            if r.next != NONE {
                s.syms[r.next as usize].prev = c.left;
            }
            if l.prev != NONE {
                self.push_cand(s, l.prev);
            }
            self.push_cand(s, c.left);
        }
    }

    /// Output of one final symbol.
    fn emit(&self, sym: &Sym, word: &str, out: &mut Vec<u32>) {
        if sym.id < self.n_pieces {
            out.push(sym.id);
            return;
        }
        let reserved = if sym.id == NO_SYM { NO_SYM } else { self.extra_emit[(sym.id - self.n_pieces) as usize] };
        if reserved != NO_SYM {
            out.push(reserved);
            return;
        }
        let span = &word.as_bytes()[sym.start as usize..(sym.start + sym.len) as usize];
        match &self.byte_ids {
            Some(b) => out.extend(span.iter().map(|&x| b[x as usize])),
            None => {
                if !self.fuse_unk || out.last() != Some(&self.unk_id) {
                    out.push(self.unk_id);
                }
            }
        }
    }

    /// Output of a final symbol with its merge tree: UNUSED pieces are split
    /// back into the two symbols they were merged from, recursively.
    fn emit_node(&self, node: u32, word: &str, nodes: &[Node], out: &mut Vec<u32>) {
        let n = nodes[node as usize];
        if n.left != NONE && n.id < self.n_pieces && self.unused[n.id as usize] {
            self.emit_node(n.left, word, nodes, out);
            self.emit_node(n.right, word, nodes, out);
            return;
        }
        let sym = Sym { id: n.id, start: n.start, len: n.len, prev: NONE, next: NONE, frozen: false, node };
        self.emit(&sym, word, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;

    #[test]
    fn scan_and_heap_merges_agree() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tokenizer/ggml-vocab-llama-spm.gguf");
        let t = Tokenizer::load(path).unwrap();
        let bpe = t.bpe.as_ref().unwrap();
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/corpora/shakespeare/sonnets_gut.txt")).unwrap();
        // whole normalised lines (up to ~80 symbols) and random strings from a
        // small alphabet (many competing merges, equal-score ties)
        let mut words: Vec<String> = text.lines().take(2000).map(|l| t.normalize(l)).collect();
        let alphabet: Vec<char> = "ab thes\u{2581}\u{2581}ing1é漢🦙".chars().collect();
        let mut x = 0x2545_f491_u64;
        for _ in 0..2000 {
            let mut w = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for k in 0..(x % 40) {
                w.push(alphabet[((x >> (k % 50)) as usize + k as usize * 7) % alphabet.len()]);
            }
            words.push(w);
        }
        let mut s = Scratch::default();
        for w in &words {
            let (mut a, mut b) = (vec![], vec![]);
            bpe.encode_word_by(w, &mut a, &mut s, Some(false));
            bpe.encode_word_by(w, &mut b, &mut s, Some(true));
            assert_eq!(a, b, "{w:?}");
        }
    }
}
