//! The errors of reading, writing and locking one of guard's files, and the locked, atomic
//! helpers that raise them, shared by the users, tokens, groups and session key files so each
//! names the file the same way.

use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{lock_exclusive, write_atomic, FileLockGuard};

/// An I/O failure on a named file. A failed write leaves the old file as it was (writes are
/// atomic renames), which is why no variant speaks of a half-written file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file does not exist; `what` says which of guard's files it should have been.
    #[error("{}: {what} not found", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
        /// What it is, as the message says it: "users file", "session key file".
        what: &'static str,
    },
    /// Reading failed for another reason.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing the new file failed; the old one is unchanged.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Taking the lock beside the file failed.
    #[error("cannot lock {}.lock", path.display())]
    Lock {
        /// The file the lock protects.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl FileError {
    /// Whether the file is simply not there yet (often "no users yet", not a failure).
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::NotFound { .. })
    }
}

/// The whole of `path`, or `None` when it does not exist.
pub fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Takes the lock beside `path` for a read-modify-write (see [`crate::fsutil::lock_exclusive`]).
pub fn lock(path: &Path) -> Result<FileLockGuard, FileError> {
    lock_exclusive(path).map_err(|source| FileError::Lock {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces `path` atomically with `bytes` at `mode` (see [`crate::fsutil::write_atomic`]).
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    write_atomic(path, bytes, mode).map_err(|source| FileError::Write {
        path: path.to_path_buf(),
        source,
    })
}
