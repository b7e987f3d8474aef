//! Watching files that other programs replace: certbot and Kubernetes swap symlinks, editors
//! rename over, `guard adduser` renames a temp file into place. A content fingerprint checked
//! on a short interval sees all of these; a `Notify` (SIGHUP) forces a reload at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use tokio::sync::Notify;

/// How often watched files are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Calls `on_change` whenever the content of any of `paths` changes (a file appearing or
/// disappearing counts), and whenever `force` is notified.
pub fn spawn(paths: Vec<PathBuf>, force: Arc<Notify>, on_change: impl Fn() + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = fingerprint(&paths);
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = ticker.tick() => false,
                () = force.notified() => true,
            };
            let now = fingerprint(&paths);
            if forced || now != last {
                last = now;
                on_change();
            }
        }
    })
}

/// SHA-256 of each file's content; `None` for a file that cannot be read.
fn fingerprint(paths: &[PathBuf]) -> Vec<Option<[u8; 32]>> {
    paths.iter().map(|p| hash_file(p)).collect()
}

fn hash_file(p: &Path) -> Option<[u8; 32]> {
    std::fs::read(p).ok().map(|b| sha2::Sha256::digest(&b).into())
}
