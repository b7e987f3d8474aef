//! Writing the files guard's commands own: atomic replacement (temp file, fsync, rename, fsync
//! of the directory) and an advisory lock file that serialises read-modify-write commands, so
//! readers only ever see a whole old file or a whole new one.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Mode for directories this module creates: they hold password hashes and token digests.
const DIR_MODE: u32 = 0o700;

/// Mode of the `.lock` files beside the files they protect.
const LOCK_MODE: u32 = 0o600;

/// How many temp names to try before giving up; a clash needs the same pid, counter and
/// nanosecond, so more than one retry means something else is wrong.
const TEMP_ATTEMPTS: u32 = 16;

/// Replaces `path` with `bytes` so that a reader sees either the old file or the new one, never
/// a mix, and the new content survives a crash once this returns.
///
/// The new file gets exactly `mode` (not reduced by the umask). Missing parent directories are
/// created with mode 0700. When `path` exists its owner and group are kept where the caller is
/// allowed to (root editing a file the service user reads must not leave it unreadable to the
/// service). A symlink at `path` is replaced by a regular file, not followed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    create_private_dir(dir)?;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )
    })?;
    let (tmp_path, file) = create_temp(dir, name, mode)?;
    if let Err(e) = fill_and_rename(file, &tmp_path, path, bytes, mode) {
        // Best effort: the temp file is ours and useless now; its removal failing must not hide
        // the error that matters.
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    // The rename is durable only once the directory entry is on disk.
    File::open(dir)?.sync_all()
}

fn fill_and_rename(mut file: File, tmp_path: &Path, path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    // The umask may have cleared bits at creation; set the exact mode asked for.
    file.set_permissions(Permissions::from_mode(mode))?;
    keep_owner(&file, path);
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp_path, path)
}

/// Gives `file` the owner and group of the existing `like`, if any. Failure is ignored: an
/// unprivileged caller cannot give files away, and then the file is simply the caller's, as
/// any new file would be.
fn keep_owner(file: &File, like: &Path) {
    let (Ok(want), Ok(have)) = (fs::metadata(like), file.metadata()) else {
        return;
    };
    if want.uid() != have.uid() || want.gid() != have.gid() {
        let _ = std::os::unix::fs::fchown(file, Some(want.uid()), Some(want.gid()));
    }
}

/// Creates a new, uniquely named file beside the target with `O_EXCL`, so an existing file (or
/// a symlink planted under the temp name) is never opened.
fn create_temp(dir: &Path, name: &std::ffi::OsStr, mode: u32) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut last_err = None;
    for _ in 0..TEMP_ATTEMPTS {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            ".tmp-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp_path = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp_path)
        {
            Ok(file) => return Ok((tmp_path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("could not create a temp file")))
}

/// The directory holding `path`; `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` and any missing parents with mode 0700; an existing directory is left as is.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// An exclusive lock on `<path>.lock`, held until this guard is dropped.
///
/// The lock is advisory: only guard's commands take it, around a read-modify-write of `path`.
/// Readers such as the running proxy need no lock, because writers replace the file atomically.
#[derive(Debug)]
pub struct FileLockGuard {
    file: File,
    path: PathBuf,
}

impl FileLockGuard {
    /// The lock file's path (`<path>.lock`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FileLockGuard {
    fn drop(&mut self) {
        // Closing the file releases the lock anyway; unlocking first just makes it prompt and
        // explicit. Nothing useful can be done with an error here.
        let _ = self.file.unlock();
    }
}

/// Blocks until this process holds an exclusive lock on `<path>.lock`, creating it (mode 0600)
/// and any missing parent directories (mode 0700) first.
///
/// The lock file is never deleted: removing it while another process waits on the old inode
/// would let two writers in at once. Each call opens the file anew, so the lock also
/// serialises threads of one process.
pub fn lock_exclusive(path: &Path) -> io::Result<FileLockGuard> {
    let mut lock_name = path.as_os_str().to_owned();
    lock_name.push(".lock");
    let lock_path = PathBuf::from(lock_name);
    create_private_dir(parent_dir(&lock_path))?;
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(LOCK_MODE)
        .open(&lock_path)
    {
        Ok(file) => {
            keep_owner(&file, path);
            file
        }
        // Someone else's 0600 lock file we may still read (say, group-readable after a chmod):
        // flock needs no write access.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => match File::open(&lock_path) {
            Ok(file) => file,
            Err(_) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    file.lock()?;
    Ok(FileLockGuard { file, path: lock_path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;
    use std::sync::{Arc, Barrier, Mutex};

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn write_atomic_creates_a_file_with_the_exact_mode() {
        let dir = TestDir::new();
        let path = dir.path().join("users.htpasswd");
        write_atomic(&path, b"alice:x\n", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"alice:x\n");
        assert_eq!(mode_of(&path), 0o600);
    }

    #[test]
    fn write_atomic_replaces_an_existing_file_and_resets_its_mode() {
        let dir = TestDir::new();
        let path = dir.path().join("tokens.json");
        fs::write(&path, b"old content that is longer").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode_of(&path), 0o600);
    }

    #[test]
    fn write_atomic_creates_missing_parents_private() {
        let dir = TestDir::new();
        let path = dir.path().join("a/b/users");
        write_atomic(&path, b"x", 0o600).unwrap();
        assert_eq!(mode_of(&dir.path().join("a")), 0o700);
        assert_eq!(mode_of(&dir.path().join("a/b")), 0o700);
    }

    #[test]
    fn write_atomic_leaves_no_temp_files_behind() {
        let dir = TestDir::new();
        let path = dir.path().join("f");
        for i in 0..5 {
            write_atomic(&path, format!("{i}").as_bytes(), 0o600).unwrap();
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("f")]);
    }

    #[test]
    fn write_atomic_on_an_unwritable_target_fails_and_removes_its_temp_file() {
        let dir = TestDir::new();
        // A directory where the file should go: rename over it fails.
        let path = dir.path().join("taken");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"keep").unwrap();
        assert!(write_atomic(&path, b"x", 0o600).is_err());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("taken")]);
    }

    #[test]
    fn write_atomic_refuses_a_path_without_a_file_name() {
        assert!(write_atomic(Path::new("/"), b"x", 0o600).is_err());
    }

    #[test]
    fn lock_file_is_created_private_beside_the_target() {
        let dir = TestDir::new();
        let path = dir.path().join("sub/users.htpasswd");
        let guard = lock_exclusive(&path).unwrap();
        assert_eq!(guard.path(), dir.path().join("sub/users.htpasswd.lock"));
        assert_eq!(mode_of(guard.path()), 0o600);
        assert_eq!(mode_of(&dir.path().join("sub")), 0o700);
    }

    #[test]
    fn lock_exclusive_lets_one_holder_in_at_a_time() {
        let dir = TestDir::new();
        let path = Arc::new(dir.path().join("counter"));
        let inside = Arc::new(Mutex::new((0u32, 0u32))); // (current, max seen)
        let start = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (path, inside, start) = (path.clone(), inside.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let _lock = lock_exclusive(&path).unwrap();
                    {
                        let mut g = inside.lock().unwrap();
                        g.0 += 1;
                        g.1 = g.1.max(g.0);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    inside.lock().unwrap().0 -= 1;
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(inside.lock().unwrap().1, 1);
    }
}
