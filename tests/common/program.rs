//! The one way a test finds an outside program it needs (pebble, chromium, docker-compose, ...),
//! shared by guard's end-to-end tests and deploy/'s validator tests (included there by path).

use std::path::{Path, PathBuf};

/// The first of `candidates` that exists: a path as given, a bare name on `PATH`. Under `CI`
/// (where `.ci/run` installs everything) a missing program fails the test, naming what was
/// looked for and how to install it; elsewhere the test prints a note and gets `None`, to skip.
pub fn require_program(candidates: &[&str], install: &str) -> Option<PathBuf> {
    let on_path = |name: &str| {
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
    };
    let found = candidates.iter().find_map(|c| {
        if c.contains('/') {
            Some(PathBuf::from(c)).filter(|p| Path::is_file(p))
        } else {
            on_path(c)
        }
    });
    if found.is_none() {
        let msg = format!("{} not found; install it with: {install}", candidates.join(" or "));
        if std::env::var_os("CI").is_some() {
            panic!("{msg} (CI requires it)");
        }
        eprintln!("note: skipping outside CI: {msg}");
    }
    found
}
