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
//! The shard files themselves are read by `llama2_model::shards`.
//!
//! Public items: [`ShardSet`], [`BatchReader`], [`DataPosition`].

use crate::error::{Result, TrainError};
use crate::step::MicroBatch;
use llama2_model::shards::ShardReader;
use llama2_runtime::rng::Rng;
use std::path::{Path, PathBuf};

fn bad(path: &Path, msg: String, hint: &str) -> TrainError {
    TrainError::BadFile { path: path.to_path_buf(), msg, hint: hint.to_string() }
}

/// The shards of a file or a directory (`*.bin`, sorted by name).
pub struct ShardSet {
    pub shards: Vec<ShardReader>,
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
        let shards = files.iter().map(ShardReader::open).collect::<std::result::Result<Vec<_>, _>>()?;
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
            let path = set.shards.first().map(|s| s.path().to_path_buf()).unwrap_or_default();
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
        let toks: Vec<u32> = shard.tokens()[start..start + bt + 1].iter().map(|&x| x as u32).collect();
        if let Some((i, &bad_id)) = toks.iter().enumerate().find(|(_, &x)| x as usize >= self.vocab) {
            return Err(bad(
                shard.path(),
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
