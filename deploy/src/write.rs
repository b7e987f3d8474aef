//! Writes rendered files into a directory, all or nothing. Every target is checked before the
//! first byte is written; each file goes to a temporary file beside its target (exact mode,
//! fsync) and is then linked or renamed into place. If any step fails, the files already
//! placed are removed, replaced ones are put back, and directories this call created go too.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use crate::error::DeployError;
use crate::RenderedFile;

/// Writes `files` under `dir` (created if missing) and returns the paths written, in order.
/// Without `force`, any existing target is an error and nothing is touched; with it, existing
/// files are replaced atomically (directories never are).
pub fn write_files(dir: &Path, files: &[RenderedFile], force: bool) -> Result<Vec<PathBuf>, DeployError> {
    let entries: Vec<Entry<'_>> = files.iter().map(Entry::from).collect();
    write_files_inner(dir, &entries, force, None)
}

/// [`write_files`] for any bytes, such as the guard binary beside the rendered text files.
pub fn write_entries(dir: &Path, entries: &[Entry<'_>], force: bool) -> Result<Vec<PathBuf>, DeployError> {
    write_files_inner(dir, entries, force, None)
}

/// One file to write: where (relative to the output directory), what, and its mode.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// Relative to the output directory.
    pub path: &'a Path,
    /// The whole file.
    pub bytes: &'a [u8],
    /// Its permission bits.
    pub mode: u32,
}

impl<'a> From<&'a RenderedFile> for Entry<'a> {
    fn from(f: &'a RenderedFile) -> Entry<'a> {
        Entry {
            path: &f.path,
            bytes: f.contents.as_bytes(),
            mode: f.mode,
        }
    }
}

/// One file on its way into place.
struct Pending {
    target: PathBuf,
    temp: Option<PathBuf>,
    /// A hard link to the file this one replaces, kept until every file is in place.
    backup: Option<PathBuf>,
    placed: bool,
}

/// `fail_placing` makes placing the file at that index fail, so tests can watch a rollback.
fn write_files_inner(
    dir: &Path,
    files: &[Entry<'_>],
    force: bool,
    fail_placing: Option<usize>,
) -> Result<Vec<PathBuf>, DeployError> {
    let mut targets = Vec::with_capacity(files.len());
    for f in files {
        targets.push(target_path(dir, f.path)?);
    }

    // 1. Check every target before writing anything.
    let mut existing = Vec::new();
    for target in &targets {
        for parent in target.ancestors().skip(1) {
            match fs::metadata(parent) {
                Ok(m) if !m.is_dir() => {
                    return Err(DeployError::NotAFile {
                        path: parent.to_path_buf(),
                        reason: "is not a directory",
                    })
                }
                _ => {}
            }
        }
        match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() || !(m.is_file() || m.file_type().is_symlink()) => {
                return Err(DeployError::NotAFile {
                    path: target.clone(),
                    reason: "is a directory or special file, which --force does not replace",
                })
            }
            Ok(_) => existing.push(target.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(io_error("inspect", target, source)),
        }
    }
    if !force && !existing.is_empty() {
        return Err(DeployError::Exists { paths: existing });
    }

    // 2. Directories, then temporary files; 3. place them. Undo everything on any failure.
    let mut created_dirs = Vec::new();
    let mut pending: Vec<Pending> = targets
        .iter()
        .map(|t| Pending {
            target: t.clone(),
            temp: None,
            backup: None,
            placed: false,
        })
        .collect();
    let result = create_dirs(&targets, &mut created_dirs)
        .and_then(|()| write_temps(files, &mut pending))
        .and_then(|()| place_all(&mut pending, fail_placing));
    match result {
        Ok(()) => {
            for p in &pending {
                if let Some(b) = &p.backup {
                    let _ = fs::remove_file(b);
                }
            }
            sync_parents(&targets);
            Ok(targets)
        }
        Err(e) => {
            rollback(&pending, &created_dirs);
            Err(e)
        }
    }
}

/// Joins a renderer's relative path onto the output directory, refusing anything that could
/// land outside it.
fn target_path(dir: &Path, rel: &Path) -> Result<PathBuf, DeployError> {
    let ok = !rel.as_os_str().is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(dir.join(rel))
    } else {
        Err(io_error(
            "place",
            rel,
            io::Error::new(io::ErrorKind::InvalidInput, "rendered path leaves the output directory"),
        ))
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> DeployError {
    DeployError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates missing parent directories one level at a time, remembering each, so a rollback
/// removes exactly what this call made.
fn create_dirs(targets: &[PathBuf], created: &mut Vec<PathBuf>) -> Result<(), DeployError> {
    for target in targets {
        let Some(parent) = target.parent() else {
            continue;
        };
        let mut missing: Vec<&Path> = parent
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
            .collect();
        missing.reverse();
        for dir in missing {
            match fs::create_dir(dir) {
                Ok(()) => created.push(dir.to_path_buf()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(source) => return Err(io_error("create directory", dir, source)),
            }
        }
    }
    Ok(())
}

/// A name beside `target` that no one else uses: a dot file with a random suffix.
fn sibling(target: &Path, kind: &str) -> Result<PathBuf, DeployError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(DeployError::Random)?;
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(target.with_file_name(format!(".{name}.guard-{kind}-{suffix}")))
}

fn write_temps(files: &[Entry<'_>], pending: &mut [Pending]) -> Result<(), DeployError> {
    for (f, p) in files.iter().zip(pending.iter_mut()) {
        let temp = sibling(&p.target, "tmp")?;
        // create_new: never follows or reuses a file someone else put there. The mode is set
        // at creation, so a secrets file is never readable by others, even for a moment.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode)
            .open(&temp)
            .map_err(|e| io_error("create", &temp, e))?;
        p.temp = Some(temp.clone());
        // The umask may have cleared bits the renderer asked for; set the exact mode.
        file.set_permissions(fs::Permissions::from_mode(f.mode))
            .and_then(|()| file.write_all(f.bytes))
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("write", &temp, e))?;
    }
    Ok(())
}

fn place_all(pending: &mut [Pending], fail_placing: Option<usize>) -> Result<(), DeployError> {
    for (i, p) in pending.iter_mut().enumerate() {
        if fail_placing == Some(i) {
            return Err(io_error("rename into", &p.target, io::Error::other("injected failure")));
        }
        let temp = p.temp.clone().unwrap_or_default();
        if fs::symlink_metadata(&p.target).is_ok() {
            // Replacing (--force): keep a link to the old file for a rollback, then rename,
            // which swaps the name atomically.
            let backup = sibling(&p.target, "backup")?;
            fs::hard_link(&p.target, &backup).map_err(|e| io_error("back up", &p.target, e))?;
            p.backup = Some(backup);
            fs::rename(&temp, &p.target).map_err(|e| io_error("rename into", &p.target, e))?;
        } else {
            // New file: link() fails if the name appeared since the check, so nothing written
            // after the check is ever clobbered.
            match fs::hard_link(&temp, &p.target) {
                Ok(()) => {
                    let _ = fs::remove_file(&temp);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(DeployError::Exists {
                        paths: vec![p.target.clone()],
                    })
                }
                // File systems without hard links: a plain rename.
                Err(_) => fs::rename(&temp, &p.target).map_err(|e| io_error("rename into", &p.target, e))?,
            }
        }
        p.temp = None;
        p.placed = true;
    }
    Ok(())
}

fn rollback(pending: &[Pending], created_dirs: &[PathBuf]) {
    for p in pending.iter().rev() {
        if let Some(temp) = &p.temp {
            let _ = fs::remove_file(temp);
        }
        match (&p.backup, p.placed) {
            (Some(backup), true) => {
                let _ = fs::rename(backup, &p.target);
            }
            (Some(backup), false) => {
                let _ = fs::remove_file(backup);
            }
            (None, true) => {
                let _ = fs::remove_file(&p.target);
            }
            (None, false) => {}
        }
    }
    for dir in created_dirs.iter().rev() {
        // Only if still empty: never remove something another process put there.
        let _ = fs::remove_dir(dir);
    }
}

/// Makes the new names durable. Best effort: the files themselves are already synced and in
/// place, and undoing a finished write because a directory fsync failed would lose more.
fn sync_parents(targets: &[PathBuf]) {
    let mut parents: Vec<&Path> = targets.iter().filter_map(|t| t.parent()).collect();
    parents.sort();
    parents.dedup();
    for dir in parents {
        if let Ok(f) = File::open(dir) {
            let _ = f.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let mut bytes = [0u8; 6];
            getrandom::fill(&mut bytes).unwrap();
            let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let p = std::env::temp_dir().join(format!("guard-deploy-write-{name}-{suffix}"));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn file(path: &str, contents: &str, mode: u32) -> RenderedFile {
        RenderedFile::new(path, contents.to_string(), mode)
    }

    /// Every entry under `dir`, with its mode and contents, for before/after comparisons.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = fs::symlink_metadata(e.path()).unwrap();
                let body = if m.is_dir() {
                    stack.push(e.path());
                    Vec::new()
                } else {
                    fs::read(e.path()).unwrap()
                };
                out.push((e.path(), m.permissions().mode(), body));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn writes_files_with_exact_modes_and_creates_directories() {
        let t = TempDir::new("modes");
        let out = t.0.join("new/out");
        let files = [file("a.yml", "a\n", 0o644), file("sub/.env", "S=1\n", 0o600)];
        let written = write_files(&out, &files, false).unwrap();
        assert_eq!(written, [out.join("a.yml"), out.join("sub/.env")]);
        assert_eq!(fs::read_to_string(out.join("sub/.env")).unwrap(), "S=1\n");
        let mode = |p: &str| fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("a.yml"), 0o644);
        assert_eq!(mode("sub/.env"), 0o600);
        assert_eq!(snapshot(&out).len(), 3, "no temporary files left: {:?}", snapshot(&out));
    }

    #[test]
    fn existing_files_without_force_are_listed_and_nothing_changes() {
        let t = TempDir::new("exists");
        fs::write(t.0.join("a.yml"), "old").unwrap();
        fs::write(t.0.join("b.yml"), "old").unwrap();
        let before = snapshot(&t.0);
        let files = [
            file("a.yml", "new", 0o644),
            file("c/new.yml", "new", 0o644),
            file("b.yml", "new", 0o644),
        ];
        let e = write_files(&t.0, &files, false).unwrap_err();
        assert!(e.is_usage());
        let msg = e.to_string();
        assert!(
            msg.contains("a.yml") && msg.contains("b.yml") && msg.contains("--force"),
            "{msg}"
        );
        assert_eq!(snapshot(&t.0), before);
    }

    #[test]
    fn force_replaces_files_but_never_a_directory() {
        let t = TempDir::new("force");
        fs::write(t.0.join("a.yml"), "old").unwrap();
        write_files(&t.0, &[file("a.yml", "new", 0o600)], true).unwrap();
        assert_eq!(fs::read_to_string(t.0.join("a.yml")).unwrap(), "new");
        fs::create_dir(t.0.join("d")).unwrap();
        let before = snapshot(&t.0);
        let e = write_files(&t.0, &[file("x", "x", 0o644), file("d", "x", 0o644)], true).unwrap_err();
        assert!(matches!(e, DeployError::NotAFile { .. }), "{e}");
        assert_eq!(snapshot(&t.0), before);
    }

    #[test]
    fn a_failure_while_placing_restores_the_directory_exactly() {
        let t = TempDir::new("rollback");
        fs::write(t.0.join("a.yml"), "old").unwrap();
        let before = snapshot(&t.0);
        let files = [
            file("a.yml", "new", 0o644),
            file("sub/b.yml", "new", 0o644),
            file("c.yml", "new", 0o644),
        ];
        let entries: Vec<Entry<'_>> = files.iter().map(Entry::from).collect();
        let e = write_files_inner(&t.0, &entries, true, Some(2)).unwrap_err();
        assert!(e.to_string().contains("c.yml"), "{e}");
        assert_eq!(snapshot(&t.0), before);
    }

    #[test]
    fn rendered_paths_cannot_leave_the_directory() {
        let t = TempDir::new("escape");
        for bad in ["../x", "/etc/x", ""] {
            assert!(write_files(&t.0, &[file(bad, "x", 0o644)], false).is_err(), "{bad}");
        }
    }
}
