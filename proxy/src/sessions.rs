//! The session keys a running guard seals and opens cookies with: the key file in the state
//! directory, made on first start and re-read when it changes (`guard session rotate-key`, or
//! another guard sharing the file rotated it), so every guard on the file accepts every other's
//! sessions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use guard_config::clock::unix_now;
use guard_config::session::{KeyFileError, SessionKeys, KEY_FILE_NAME};

/// The keys in use, swapped whole on a reload.
pub struct Sessions {
    path: PathBuf,
    keys: ArcSwap<SessionKeys>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Loads `state_dir`'s key file, making it (0600, one fresh key) if it does not exist.
    pub fn load(state_dir: &Path) -> Result<Sessions, KeyFileError> {
        let path = state_dir.join(KEY_FILE_NAME);
        let keys = SessionKeys::load_or_create(&path, unix_now())?;
        tracing::debug!(key = %keys.current_id(), "session keys: {}", path.display());
        Ok(Sessions {
            path,
            keys: ArcSwap::from_pointee(keys),
        })
    }

    /// The keys in use.
    pub fn keys(&self) -> arc_swap::Guard<Arc<SessionKeys>> {
        self.keys.load()
    }

    /// Re-reads the key file. One that cannot be read keeps the keys in use: signing everyone
    /// out because of a half-copied file would be worse than a late rotation, and it is loud.
    pub fn reload(&self) {
        match SessionKeys::load(&self.path) {
            Ok(keys) => {
                tracing::info!(key = %keys.current_id(), "session keys reloaded from {}", self.path.display());
                self.keys.store(Arc::new(keys));
            }
            Err(e) => tracing::error!(
                "session keys NOT reloaded, the previous keys stay in use: {}",
                guard_config::error::chain(&e)
            ),
        }
    }

    /// Watches the key file and reloads on change or when `force` fires, until dropped.
    pub fn watch(self: &Arc<Self>, force: crate::watch::ReloadSignal) {
        crate::watch::spawn(vec![self.path.clone()], force, Arc::downgrade(self), Sessions::reload);
    }
}
