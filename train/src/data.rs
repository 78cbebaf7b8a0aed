//! Token data for training and evaluation: llm.c's shard format and its
//! sequential batching (DESIGN.md "Formats").
//!
//! A shard: 256 little-endian i32 (magic 20240520, version 1, token count,
//! the rest unused), then `count` u16 tokens. Every shard is validated on
//! open (magic, version, count against the file length) and every batch's
//! ids against the vocabulary.
//!
//! Batches: a batch of `b x t` takes `b*t + 1` consecutive tokens; inputs are
//! `b` rows of `t`, targets the same shifted by one; the next batch starts
//! `b*t` further on. At the end of a shard the reader moves to the next
//! shard (sorted by name); `wrap` starts over after the last one (training),
//! otherwise the data ends (evaluation). With shuffling, the order of the
//! batch windows inside each shard is a seeded permutation, drawn afresh per
//! pass.
//!
//! Public items: [`TokenShard`], [`ShardSet`], [`BatchReader`],
//! [`DataPosition`], [`SHARD_MAGIC`], [`write_shard`].

use crate::error::{Result, TrainError};
use crate::step::MicroBatch;
use llama2_runtime::rng::Rng;
use std::path::{Path, PathBuf};

pub const SHARD_MAGIC: i32 = 20240520;
pub const SHARD_VERSION: i32 = 1;
const HEADER_INTS: usize = 256;
const HEADER_BYTES: usize = HEADER_INTS * 4;

/// One memory-mapped, validated shard.
pub struct TokenShard {
    pub path: PathBuf,
    map: memmap2::Mmap,
    n: usize,
}

fn bad(path: &Path, msg: String, hint: &str) -> TrainError {
    TrainError::BadFile { path: path.to_path_buf(), msg, hint: hint.to_string() }
}

impl TokenShard {
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
        // SAFETY: read-only mapping; the shard must not change while open.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| TrainError::io(path, e))?;
        const HINT: &str = "token shards are written by `train-tool tokenize` (llm.c format)";
        if map.len() < HEADER_BYTES {
            return Err(bad(path, format!("{} bytes, shorter than the 1024-byte header", map.len()), HINT));
        }
        let hdr = |i: usize| i32::from_le_bytes([map[4 * i], map[4 * i + 1], map[4 * i + 2], map[4 * i + 3]]);
        if hdr(0) != SHARD_MAGIC {
            return Err(bad(path, format!("bad magic {:#x} (expected {SHARD_MAGIC})", hdr(0)), HINT));
        }
        if hdr(1) != SHARD_VERSION {
            return Err(bad(path, format!("unsupported version {} (expected {SHARD_VERSION})", hdr(1)), HINT));
        }
        if hdr(2) < 0 {
            return Err(bad(path, format!("negative token count {}", hdr(2)), HINT));
        }
        let n = hdr(2) as usize;
        let want = HEADER_BYTES + 2 * n;
        if map.len() != want {
            return Err(bad(
                path,
                format!("header says {n} tokens ({want} bytes) but the file has {} bytes", map.len()),
                "the shard is truncated or corrupt; re-run `train-tool tokenize`",
            ));
        }
        Ok(TokenShard { path: path.to_path_buf(), map, n })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Token `i`.
    #[inline]
    pub fn get(&self, i: usize) -> u16 {
        let o = HEADER_BYTES + 2 * i;
        u16::from_le_bytes([self.map[o], self.map[o + 1]])
    }

    /// Tokens `[start, start + len)` as u32.
    pub fn read(&self, start: usize, len: usize) -> Vec<u32> {
        (start..start + len).map(|i| self.get(i) as u32).collect()
    }
}

/// Writes `tokens` as a shard, atomically.
pub fn write_shard(path: &Path, tokens: &[u16]) -> Result<()> {
    if tokens.len() > i32::MAX as usize {
        return Err(TrainError::Invalid(format!("{} tokens do not fit one shard", tokens.len())));
    }
    let mut data = Vec::with_capacity(HEADER_BYTES + 2 * tokens.len());
    let mut hdr = [0i32; HEADER_INTS];
    hdr[0] = SHARD_MAGIC;
    hdr[1] = SHARD_VERSION;
    hdr[2] = tokens.len() as i32;
    for h in hdr {
        data.extend_from_slice(&h.to_le_bytes());
    }
    for t in tokens {
        data.extend_from_slice(&t.to_le_bytes());
    }
    llama2_model::weights::write_atomic(path, &data)?;
    Ok(())
}

/// The shards of a file or a directory (`*.bin`, sorted by name).
pub struct ShardSet {
    pub shards: Vec<TokenShard>,
}

impl ShardSet {
    pub fn open(path: &Path) -> Result<Self> {
        let files = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| TrainError::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("bin"))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(bad(path, "no .bin token shards in this directory".into(), "run `train-tool tokenize` first"));
            }
            v
        } else {
            vec![path.to_path_buf()]
        };
        let shards = files.iter().map(|p| TokenShard::open(p)).collect::<Result<Vec<_>>>()?;
        Ok(ShardSet { shards })
    }

    pub fn total_tokens(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
}

/// Where a reader is: shard, window index within the shard's order, pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataPosition {
    pub shard: usize,
    pub window: usize,
    pub pass: u64,
}

/// Reads `b x t` batches from a shard set.
pub struct BatchReader {
    pub set: ShardSet,
    pub b: usize,
    pub t: usize,
    pub vocab: usize,
    pub wrap: bool,
    /// seed for window shuffling (None = sequential)
    pub shuffle: Option<u64>,
    pub pos: DataPosition,
    order: Vec<usize>,
}

impl BatchReader {
    pub fn new(set: ShardSet, b: usize, t: usize, vocab: usize, wrap: bool, shuffle: Option<u64>) -> Result<Self> {
        if b == 0 || t == 0 {
            return Err(TrainError::Invalid("batch size and sequence length must be positive".into()));
        }
        let need = b * t + 1;
        if !set.shards.iter().any(|s| s.len() >= need) {
            let path = set.shards.first().map(|s| s.path.clone()).unwrap_or_default();
            return Err(bad(
                &path,
                format!("no shard holds the {need} tokens one batch of {b} x {t} needs"),
                "use a smaller --batch-size or --seq-len, or more data",
            ));
        }
        let mut r = BatchReader { set, b, t, vocab, wrap, shuffle, pos: DataPosition::default(), order: Vec::new() };
        r.make_order();
        Ok(r)
    }

    fn windows(&self, shard: usize) -> usize {
        let n = self.set.shards[shard].len();
        let bt = self.b * self.t;
        if n < bt + 1 {
            0
        } else {
            (n - 1) / bt
        }
    }

    fn make_order(&mut self) {
        let w = self.windows(self.pos.shard);
        self.order = (0..w).collect();
        if let Some(seed) = self.shuffle {
            let mut rng = Rng::derive(seed, &format!("data/{}/{}", self.pass_key(), self.pos.shard));
            rng.shuffle(&mut self.order);
        }
    }

    fn pass_key(&self) -> u64 {
        self.pos.pass
    }

    /// Moves to a saved position (checkpoint resume).
    pub fn seek(&mut self, pos: DataPosition) -> Result<()> {
        if pos.shard >= self.set.shards.len() || pos.window > self.windows(pos.shard) {
            return Err(TrainError::Invalid(format!("data position {pos:?} is outside this data; HINT: resume with the same --data")));
        }
        self.pos = pos;
        self.make_order();
        Ok(())
    }

    /// The next batch, or None at the end of the data (when not wrapping).
    pub fn next_batch(&mut self) -> Result<Option<MicroBatch>> {
        let shards = self.set.shards.len();
        let mut skipped = 0;
        while self.pos.window >= self.order.len() {
            self.pos.shard += 1;
            self.pos.window = 0;
            if self.pos.shard >= shards {
                if !self.wrap {
                    return Ok(None);
                }
                self.pos.shard = 0;
                self.pos.pass += 1;
            }
            self.make_order();
            skipped += 1;
            if skipped > shards + 1 {
                return Ok(None);
            }
        }
        let bt = self.b * self.t;
        let shard = &self.set.shards[self.pos.shard];
        let start = self.order[self.pos.window] * bt;
        let toks = shard.read(start, bt + 1);
        if let Some((i, &bad_id)) = toks.iter().enumerate().find(|(_, &x)| x as usize >= self.vocab) {
            return Err(bad(
                &shard.path,
                format!("token id {bad_id} at position {} is >= the vocabulary size {}", start + i, self.vocab),
                "the shard was made with a different tokenizer than this model's",
            ));
        }
        self.pos.window += 1;
        let mut mb = MicroBatch { inputs: Vec::with_capacity(bt), targets: Vec::with_capacity(bt) };
        for r in 0..self.b {
            let row = &toks[r * self.t..r * self.t + self.t + 1];
            mb.inputs.extend_from_slice(&row[..self.t]);
            mb.targets.extend(row[1..].iter().map(|&x| x as i32));
        }
        Ok(Some(mb))
    }
}
