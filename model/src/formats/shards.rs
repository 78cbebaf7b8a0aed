//! llm.c token shards (DESIGN.md "Formats"): a header of 256 little-endian
//! i32 (magic 20240520, version 1, token count, the rest zero), then the
//! tokens as little-endian u16.
//!
//! Reference: llm.c `dev/data/data_common.py` (`write_datafile`) and
//! `llmc/dataloader.h` (the reader's checks, which we extend: the count must
//! match the file length exactly).
//!
//! Public items: [`ShardWriter`] (streaming, atomic: temp file + rename),
//! [`write_shard`], [`ShardReader`] (memory-mapped, validated;
//! `open`, `len`, `tokens`, `slice`, `check_ids`), [`ShardError`],
//! [`SHARD_MAGIC`], [`SHARD_VERSION`], [`HEADER_INTS`], [`HEADER_BYTES`].

use crate::formats::atomic::AtomicFile;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub const SHARD_MAGIC: i32 = 20240520;
pub const SHARD_VERSION: i32 = 1;
/// Header length in i32.
pub const HEADER_INTS: usize = 256;
pub const HEADER_BYTES: usize = HEADER_INTS * 4;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("cannot open {}: {source}; HINT: check the path", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}; HINT: check the directory exists and has space", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{}: {what}; HINT: the file is not an llm.c token shard or is damaged; re-create it with `train-tool tokenize`", path.display())]
    Format { path: PathBuf, what: String },
    #[error("{}: token {value} at position {index} is >= the vocabulary size {vocab_size}; HINT: the shard was made with another tokenizer", path.display())]
    IdOutOfRange { path: PathBuf, index: usize, value: u16, vocab_size: usize },
    #[error("{}: token id {id} does not fit in u16; HINT: llm.c shards hold vocabularies of at most 65536", path.display())]
    IdTooLarge { path: PathBuf, id: u32 },
}

type Result<T> = std::result::Result<T, ShardError>;

/// Writes one shard incrementally: header placeholder, tokens, then the
/// count patched in; the file appears under its name only when finished.
pub struct ShardWriter {
    path: PathBuf,
    out: AtomicFile,
    count: u64,
}

impl ShardWriter {
    pub fn create(path: impl AsRef<Path>) -> Result<ShardWriter> {
        let path = path.as_ref().to_path_buf();
        let werr = |e| ShardError::Write { path: path.clone(), source: e };
        let mut out = AtomicFile::create(&path).map_err(werr)?;
        out.write_all(&[0u8; HEADER_BYTES]).map_err(werr)?;
        Ok(ShardWriter { path, out, count: 0 })
    }

    /// Appends tokens (each must fit in u16).
    pub fn push(&mut self, ids: &[u32]) -> Result<()> {
        let mut buf = Vec::with_capacity(ids.len() * 2);
        for &id in ids {
            let v = u16::try_from(id).map_err(|_| ShardError::IdTooLarge { path: self.path.clone(), id })?;
            buf.extend_from_slice(&v.to_le_bytes());
        }
        self.out.write_all(&buf).map_err(|e| ShardError::Write { path: self.path.clone(), source: e })?;
        self.count += ids.len() as u64;
        Ok(())
    }

    /// Tokens written so far.
    pub fn len(&self) -> u64 {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the header, syncs and renames into place; returns the count.
    pub fn finish(self) -> Result<u64> {
        let werr = |e| ShardError::Write { path: self.path.clone(), source: e };
        let count = i32::try_from(self.count)
            .map_err(|_| ShardError::Format { path: self.path.clone(), what: format!("{} tokens do not fit the i32 count of the header", self.count) })?;
        let mut f = self.out;
        let mut header = [0u8; HEADER_BYTES];
        header[0..4].copy_from_slice(&SHARD_MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&SHARD_VERSION.to_le_bytes());
        header[8..12].copy_from_slice(&count.to_le_bytes());
        f.write_at(0, &header).map_err(werr)?;
        f.commit().map_err(werr)?;
        Ok(self.count)
    }
}

/// Writes a whole shard at once.
pub fn write_shard(path: impl AsRef<Path>, ids: &[u32]) -> Result<()> {
    let mut w = ShardWriter::create(path)?;
    w.push(ids)?;
    w.finish().map(|_| ())
}

/// A validated, memory-mapped shard.
pub struct ShardReader {
    path: PathBuf,
    map: memmap2::Mmap,
    len: usize,
}

impl ShardReader {
    /// Opens and validates: magic, version, count against the file length.
    pub fn open(path: impl AsRef<Path>) -> Result<ShardReader> {
        let path = path.as_ref().to_path_buf();
        let fmt = |what: String| ShardError::Format { path: path.clone(), what };
        if cfg!(target_endian = "big") {
            return Err(fmt("big-endian hosts are not supported (the format is little-endian)".into()));
        }
        let f = File::open(&path).map_err(|e| ShardError::Open { path: path.clone(), source: e })?;
        // SAFETY: the map is read-only; the shard must not be modified while
        // open (as with every mmap reader; we own the files we write).
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| ShardError::Open { path: path.clone(), source: e })?;
        if map.len() < HEADER_BYTES {
            return Err(fmt(format!("{} bytes is shorter than the {HEADER_BYTES}-byte header", map.len())));
        }
        let int = |i: usize| i32::from_le_bytes([map[4 * i], map[4 * i + 1], map[4 * i + 2], map[4 * i + 3]]);
        if int(0) != SHARD_MAGIC {
            return Err(fmt(format!("bad magic {} (expected {SHARD_MAGIC})", int(0))));
        }
        if int(1) != SHARD_VERSION {
            return Err(fmt(format!("version {} (expected {SHARD_VERSION})", int(1))));
        }
        let count = int(2);
        let body = map.len() - HEADER_BYTES;
        if count < 0 || body != count as usize * 2 {
            return Err(fmt(format!("header says {count} tokens ({} bytes) but the file has {body} bytes after the header", i64::from(count) * 2)));
        }
        Ok(ShardReader { path, map, len: count as usize })
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tokens (the header is 1024 bytes into a page-aligned map, so the
    /// u16 view is aligned).
    pub fn tokens(&self) -> &[u16] {
        bytemuck::cast_slice(&self.map[HEADER_BYTES..])
    }

    /// Tokens in `range`, or None if it is out of bounds.
    pub fn slice(&self, range: Range<usize>) -> Option<&[u16]> {
        self.tokens().get(range)
    }

    /// Checks every token is below `vocab_size`.
    pub fn check_ids(&self, vocab_size: usize) -> Result<()> {
        if let Some((index, &value)) = self.tokens().iter().enumerate().find(|(_, &t)| usize::from(t) >= vocab_size) {
            return Err(ShardError::IdOutOfRange { path: self.path.clone(), index, value, vocab_size });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("llama2_shards_{name}_{}", std::process::id()))
    }

    #[test]
    fn write_read_and_validate() {
        let p = tmp("ok.bin");
        let ids: Vec<u32> = (0..1000).map(|i| (i * 37) % 32000).collect();
        let mut w = ShardWriter::create(&p).unwrap();
        w.push(&ids[..400]).unwrap();
        w.push(&ids[400..]).unwrap();
        assert_eq!(w.finish().unwrap(), 1000);
        let r = ShardReader::open(&p).unwrap();
        assert_eq!(r.len(), 1000);
        assert!(r.tokens().iter().zip(&ids).all(|(&a, &b)| u32::from(a) == b));
        assert_eq!(r.slice(998..1000).unwrap().len(), 2);
        assert!(r.slice(999..1001).is_none());
        r.check_ids(32000).unwrap();
        let e = r.check_ids(100).unwrap_err().to_string();
        assert!(e.contains(">= the vocabulary size 100") && e.contains("HINT"), "{e}");

        let bytes = std::fs::read(&p).unwrap();
        let bad = |name: &str, b: &[u8], want: &str| {
            let q = tmp(name);
            std::fs::write(&q, b).unwrap();
            let e = ShardReader::open(&q).err().expect("must fail").to_string();
            assert!(e.contains(want) && e.contains("HINT"), "{name}: {e}");
        };
        bad("short", &bytes[..100], "shorter than");
        bad("trunc", &bytes[..bytes.len() - 2], "header says 1000 tokens");
        let mut m = bytes.clone();
        m[0] ^= 1;
        bad("magic", &m, "bad magic");
        let mut v = bytes.clone();
        v[4] = 2;
        bad("version", &v, "version 2");
        assert!(write_shard(tmp("big.bin"), &[70000]).unwrap_err().to_string().contains("u16"));
    }
}
