//! The one atomic file writer of the project: every file we write (models,
//! optimizer state, token shards, tokenizers, llama2.c files, reports,
//! plots) goes through it.
//!
//! The bytes go to a temporary file beside the target (`.<name>.tmp<pid>`),
//! which is fsynced, renamed over the target, and the directory fsynced. A
//! crash or a full disk leaves either the old file or the new one, never a
//! torn one; on any error the temporary file is removed and the target is
//! untouched.
//!
//! Public items: [`AtomicFile`] (streaming), [`write_atomic`] (whole buffer),
//! [`sync_dir`].

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Fsyncs a directory, so a rename inside it is durable (best effort: some
/// file systems refuse to open directories for syncing).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A file being written under a temporary name; [`AtomicFile::commit`]
/// moves it into place. Dropped without `commit`, it removes itself.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing `path` (the temporary file sits in the same directory,
    /// so the final rename never crosses file systems).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
        let f = File::create(&tmp)?;
        Ok(AtomicFile { path: path.to_path_buf(), tmp, out: Some(BufWriter::with_capacity(1 << 20, f)) })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Overwrites bytes at `offset` from the start (a header written last).
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let w = self.writer()?;
        w.flush()?;
        let f = w.get_mut();
        let end = f.stream_position()?;
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(bytes)?;
        f.seek(SeekFrom::Start(end))?;
        Ok(())
    }

    fn writer(&mut self) -> std::io::Result<&mut BufWriter<File>> {
        self.out.as_mut().ok_or_else(|| std::io::Error::other("atomic file already committed"))
    }

    /// Flushes, fsyncs, renames into place and fsyncs the directory.
    pub fn commit(mut self) -> std::io::Result<()> {
        let res = (|| {
            let w = self.out.take().ok_or_else(|| std::io::Error::other("atomic file already committed"))?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&self.tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                sync_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir });
            }
            Ok(())
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        res
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer()?.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer()?.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `data` to `path` atomically (see the module header).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(data)?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_and_drop_discards() {
        let dir = std::env::temp_dir().join(format!("llama2-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.bin");
        write_atomic(&p, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"new but abandoned").unwrap();
        } // dropped without commit
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"....tail").unwrap();
        f.write_at(0, b"head").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"headtail");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "temporary files left behind: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
