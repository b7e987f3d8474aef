//! The errors of reading, writing and locking one of guard's files, shared by the users file,
//! the tokens file and the session key file so each names the file the same way.

use std::io;
use std::path::PathBuf;

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
