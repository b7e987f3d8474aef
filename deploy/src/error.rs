//! Everything `guard deploy` can refuse or fail at, split by who is at fault: the operator's
//! options (exit 2) or the machine (exit 1).

use std::path::PathBuf;

/// Why `guard deploy` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// An option has a bad value or does not fit the target or the other options.
    #[error("{flag}: {message}")]
    Option {
        /// The flag at fault, as typed on the command line (`--domain`).
        flag: &'static str,
        /// What is wrong with it, lowercase, naming the bad value.
        message: String,
    },

    /// Files that would be written already exist and `--force` was not given.
    #[error("{} already exist{}; nothing was written (use --force to replace {})",
        list(paths), if paths.len() == 1 { "s" } else { "" },
        if paths.len() == 1 { "it" } else { "them" })]
    Exists {
        /// Every existing target, in render order.
        paths: Vec<PathBuf>,
    },

    /// Something that is not a regular file stands where a file must go (a directory, which
    /// even `--force` will not replace), or a file stands where a directory must go.
    #[error("{path}: {reason}; nothing was written", path = path.display())]
    NotAFile {
        /// The path at fault.
        path: PathBuf,
        /// What is wrong with it (`is a directory or special file`, `is not a directory`).
        reason: &'static str,
    },

    /// The operating system refused a read, write or rename.
    #[error("cannot {action} {path}", path = path.display())]
    Io {
        /// What was being done (`write`, `create directory`, `rename into`).
        action: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The running guard binary cannot be packaged: the image's base could not start it.
    #[error("{path}: {reason}; nothing was written", path = path.display())]
    Binary {
        /// The running binary.
        path: PathBuf,
        /// Why (`this guard needs glibc 2.39, but ...`).
        reason: String,
    },

    /// The system random number generator failed (secrets cannot be generated).
    #[error("cannot generate secrets: the system random number generator failed")]
    Random(#[source] getrandom::Error),
}

impl DeployError {
    /// Whether the operator's input is at fault (bad option, existing files): the CLI exits 2
    /// for these and 1 for the rest.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            DeployError::Option { .. } | DeployError::Exists { .. } | DeployError::NotAFile { .. }
        )
    }

    pub(crate) fn option(flag: &'static str, message: impl Into<String>) -> DeployError {
        DeployError::Option {
            flag,
            message: message.into(),
        }
    }
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
