//! The trainer's pieces that do not depend on a backend: token data and its loader, the byte
//! tokenizer and bundled corpus, the byte-level BPE tokenizer of pretrained models,
//! learning-rate schedules, checkpoints, and pretrained weights to start from (safetensors,
//! GGUF).
//!
//! All of them report failures through one error type, [`TrainError`], whose variants name the
//! file concerned and what was expected.

pub mod bpe;
pub mod checkpoint;
pub mod data;
mod error;
pub mod gguf;
pub mod import;
pub mod schedule;
pub mod tokenizer;

pub use error::TrainError;

use std::path::Path;

/// Flushes a directory's entries (new files, renames) to disk. On systems where a directory
/// cannot be opened as a file this is a no-op: the rename is then as durable as the OS makes it.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), TrainError> {
    if cfg!(unix) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(TrainError::io(dir, "flush directory"))?;
    }
    Ok(())
}

/// The directory that holds `path`, `.` for a bare file name.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
