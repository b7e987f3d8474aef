//! Watching files that other programs replace: certbot and Kubernetes swap symlinks, editors
//! rename over, `guard adduser` renames a temp file into place. A content fingerprint checked
//! on a short interval sees all of these; a reload signal (SIGHUP) forces a re-read at once.

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use sha2::Digest;

/// How often watched files are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The reload signal: every increment forces each watcher to re-read its files.
pub type ReloadSignal = tokio::sync::watch::Receiver<u64>;

/// Calls `on_change(target)` whenever the content of any of `paths` changes (a file appearing
/// or disappearing counts) and whenever `force` is bumped. Stops once `target` is dropped, so a
/// replaced configuration's watchers end with it.
pub fn spawn<T: Send + Sync + 'static>(
    paths: Vec<PathBuf>,
    mut force: ReloadSignal,
    target: Weak<T>,
    on_change: fn(&T),
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = fingerprint(&paths);
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        force.mark_unchanged();
        loop {
            let forced = tokio::select! {
                _ = ticker.tick() => false,
                r = force.changed() => r.is_ok(),
            };
            let Some(target) = target.upgrade() else { return };
            let now = fingerprint(&paths);
            if forced || now != last {
                last = now;
                on_change(&target);
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
