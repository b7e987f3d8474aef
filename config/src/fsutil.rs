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
///
/// Both callers pass a file they have just created with `O_EXCL` (the temp file, a new lock
/// file), so the chown can only ever touch an inode guard made.
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
///
/// guard's commands run as root, in directories others may write to, so whatever is at the
/// lock path is distrusted: a symlink is not followed, and anything but a regular file with one
/// link is refused (a hard link named `users.htpasswd.lock` to `/etc/passwd` must not be
/// opened for writing, let alone chowned). Only a lock file this call created gets the target's
/// owner.
pub fn lock_exclusive(path: &Path) -> io::Result<FileLockGuard> {
    let mut lock_name = path.as_os_str().to_owned();
    lock_name.push(".lock");
    let lock_path = PathBuf::from(lock_name);
    create_private_dir(parent_dir(&lock_path))?;
    let file = match open_lock(OpenOptions::new().read(true).write(true).create_new(true), &lock_path) {
        Ok(file) => {
            // O_EXCL: this inode is ours, new and empty, so giving it the owner of the file it
            // guards touches nothing else.
            keep_owner(&file, path);
            file
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open_existing_lock(&lock_path)?,
        Err(e) => return Err(e),
    };
    check_lock_file(&file)?;
    file.lock()?;
    Ok(FileLockGuard { file, path: lock_path })
}

/// Opens a lock file someone made before, never chowning it.
fn open_existing_lock(lock_path: &Path) -> io::Result<File> {
    match open_lock(OpenOptions::new().read(true).write(true), lock_path) {
        Ok(file) => Ok(file),
        // Someone else's 0600 lock file we may still read (say, group-readable after a chmod):
        // flock needs no write access.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            open_lock(OpenOptions::new().read(true), lock_path).map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

/// Opens `lock_path` with `O_NOFOLLOW`, so a symlink there fails with ELOOP instead of being
/// followed, and `O_NONBLOCK`, so a FIFO or device planted there cannot hang the command
/// before `check_lock_file` refuses it (flock ignores `O_NONBLOCK`).
fn open_lock(options: &mut OpenOptions, lock_path: &Path) -> io::Result<File> {
    options
        .mode(LOCK_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(lock_path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::new(io::ErrorKind::InvalidInput, "it is a symlink"),
            _ => e,
        })
}

/// Refuses an opened lock file that is not a regular file with exactly one link. Checked on the
/// handle (fstat), so nothing can be swapped in between the check and the lock.
fn check_lock_file(file: &File) -> io::Result<()> {
    let meta = file.metadata()?;
    let refuse = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
    if !meta.file_type().is_file() {
        return refuse("it is not a regular file".into());
    }
    if meta.nlink() != 1 {
        return refuse(format!("it has {} links (a lock file has exactly one)", meta.nlink()));
    }
    Ok(())
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

    fn lock_error(path: &Path) -> String {
        lock_exclusive(path).expect_err("lock refused").to_string()
    }

    fn is_root() -> bool {
        fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
    }

    #[test]
    fn a_symlink_at_the_lock_path_is_refused_and_its_target_untouched() {
        let dir = TestDir::new();
        let path = dir.path().join("users.htpasswd");
        let target = dir.path().join("precious");
        fs::write(&target, b"keep me").unwrap();
        fs::set_permissions(&target, Permissions::from_mode(0o644)).unwrap();
        let before = fs::metadata(&target).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("users.htpasswd.lock")).unwrap();
        assert_eq!(lock_error(&path), "it is a symlink");
        let after = fs::metadata(&target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep me");
        assert_eq!(
            (after.uid(), after.gid(), after.mode()),
            (before.uid(), before.gid(), before.mode())
        );
    }

    #[test]
    fn a_dangling_symlink_at_the_lock_path_is_refused_and_nothing_is_created() {
        let dir = TestDir::new();
        let target = dir.path().join("not-yet");
        std::os::unix::fs::symlink(&target, dir.path().join("users.lock")).unwrap();
        assert_eq!(lock_error(&dir.path().join("users")), "it is a symlink");
        assert!(!target.exists());
    }

    #[test]
    fn a_fifo_at_the_lock_path_is_refused_without_hanging() {
        let dir = TestDir::new();
        let path = dir.path().join("tokens.json");
        let fifo = dir.path().join("tokens.json.lock");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        // A blocking open of a FIFO with no peer would never return; run it on a thread so a
        // regression fails the test instead of hanging the suite.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(lock_exclusive(&path).map(|_| ()).map_err(|e| e.to_string())));
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("lock_exclusive hung on a FIFO");
        assert_eq!(got, Err("it is not a regular file".to_string()));
    }

    #[test]
    fn a_directory_at_the_lock_path_is_refused() {
        let dir = TestDir::new();
        fs::create_dir(dir.path().join("users.lock")).unwrap();
        assert!(lock_exclusive(&dir.path().join("users")).is_err());
    }

    #[test]
    fn a_hard_linked_lock_file_is_refused_and_the_other_name_untouched() {
        let dir = TestDir::new();
        let path = dir.path().join("users.htpasswd");
        let other = dir.path().join("passwd");
        fs::write(&other, b"root:x:0:0\n").unwrap();
        let before = fs::metadata(&other).unwrap();
        fs::hard_link(&other, dir.path().join("users.htpasswd.lock")).unwrap();
        assert_eq!(lock_error(&path), "it has 2 links (a lock file has exactly one)");
        let after = fs::metadata(&other).unwrap();
        assert_eq!(fs::read(&other).unwrap(), b"root:x:0:0\n");
        assert_eq!(
            (after.uid(), after.gid(), after.mode()),
            (before.uid(), before.gid(), before.mode())
        );
    }

    #[test]
    fn an_existing_lock_file_is_used_and_not_chowned() {
        let dir = TestDir::new();
        let path = dir.path().join("users.htpasswd");
        let lock = dir.path().join("users.htpasswd.lock");
        fs::write(&path, b"").unwrap();
        fs::write(&lock, b"").unwrap();
        // Only root can give files away, so only as root (as CI runs) can the test make the lock
        // and the target differ in owner; unprivileged, it checks the lock is still taken.
        if is_root() {
            std::os::unix::fs::chown(&lock, Some(12345), Some(12345)).unwrap();
            std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
        }
        let before = fs::metadata(&lock).unwrap();
        let guard = lock_exclusive(&path).unwrap();
        assert_eq!(guard.path(), lock);
        let after = fs::metadata(&lock).unwrap();
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        if is_root() {
            assert_eq!(after.uid(), 12345);
        }
    }

    #[test]
    fn a_new_lock_file_takes_the_owner_of_its_target() {
        if !is_root() {
            // Giving a file away needs root; unprivileged, the lock is simply the caller's.
            return;
        }
        let dir = TestDir::new();
        let path = dir.path().join("users.htpasswd");
        fs::write(&path, b"").unwrap();
        std::os::unix::fs::chown(&path, Some(12345), Some(12346)).unwrap();
        let guard = lock_exclusive(&path).unwrap();
        let meta = fs::metadata(guard.path()).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (12345, 12346));
    }
}
