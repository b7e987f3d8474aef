//! Golden files: each renderer's output for every case in `common::cases()` must match
//! `tests/golden/<case>/` byte for byte, plus `_manifest.txt` (each file's mode) and
//! `_next_steps.txt`. `GUARD_UPDATE_GOLDEN=1 cargo test -p guard-deploy --test golden` rewrites
//! them; review the diff before committing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use guard_deploy::{next_steps, validate, DeployOptions, Target};

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Everything a case produces, keyed by relative path.
fn expected_tree(case: &common::Case) -> BTreeMap<String, String> {
    let files = common::render_case(case);
    let mut tree = BTreeMap::new();
    let mut manifest = String::from("# mode path (git keeps no modes, so they are pinned here)\n");
    for f in &files {
        manifest.push_str(&format!("{:04o} {}\n", f.mode, f.path.display()));
        tree.insert(f.path.display().to_string(), f.contents.clone());
    }
    tree.insert("_manifest.txt".into(), manifest);
    let steps = next_steps(&case.deployment, &case.layout);
    tree.insert("_next_steps.txt".into(), steps.join("\n") + "\n");
    tree
}

/// Every file under `dir`, keyed by path relative to it.
fn read_tree(dir: &Path) -> BTreeMap<String, String> {
    let mut tree = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                tree.insert(rel, fs::read_to_string(&p).unwrap());
            }
        }
    }
    tree
}

/// A line diff (longest common subsequence) showing only changed lines with two lines of
/// context, numbered by the golden file's lines.
fn line_diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // (tag, golden line number, text)
    let mut ops: Vec<(char, usize, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', i + 1, a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            ops.push(('+', i + 1, b[j]));
            j += 1;
        } else {
            ops.push(('-', i + 1, a[i]));
            i += 1;
        }
    }
    let near_change = |k: usize| {
        let lo = k.saturating_sub(2);
        let hi = (k + 2).min(ops.len() - 1);
        (lo..=hi).any(|m| ops[m].0 != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (k, (tag, line, text)) in ops.iter().enumerate() {
        if near_change(k) {
            out.push_str(&format!("{tag} {line:>4} | {text}\n"));
            skipped = false;
        } else if !skipped {
            out.push_str("  ...\n");
            skipped = true;
        }
    }
    out
}

#[test]
fn every_renderer_matches_its_golden_files() {
    let update = std::env::var_os("GUARD_UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    let names: Vec<&str> = common::cases().iter().map(|c| c.name).collect();
    for entry in fs::read_dir(golden_root()).into_iter().flatten() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !names.contains(&name.as_str()) {
            if update {
                fs::remove_dir_all(&path).unwrap();
            } else {
                failures.push(format!("{name}: golden directory of no case"));
            }
        }
    }
    for case in common::cases() {
        let dir = golden_root().join(case.name);
        let expected = expected_tree(&case);
        if update {
            let _ = fs::remove_dir_all(&dir);
            for (rel, contents) in &expected {
                let p = dir.join(rel);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, contents).unwrap();
            }
            continue;
        }
        let actual = read_tree(&dir);
        for (rel, contents) in &expected {
            match actual.get(rel) {
                None => failures.push(format!("{}/{rel}: missing golden file", case.name)),
                Some(golden) if golden != contents => failures.push(format!(
                    "{}/{rel} differs (- golden, + rendered):\n{}",
                    case.name,
                    line_diff(golden, contents)
                )),
                Some(_) => {}
            }
        }
        for rel in actual.keys().filter(|k| !expected.contains_key(*k)) {
            failures.push(format!("{}/{rel}: golden file no longer rendered", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nIf the change is intended: GUARD_UPDATE_GOLDEN=1 cargo test -p guard-deploy --test golden",
        failures.join("\n\n")
    );
}

/// The repository's docker-compose.yml is this case's; keep the case equal to the defaults.
#[test]
fn the_first_case_is_guard_deploy_compose_with_its_defaults() {
    let case = &common::cases()[0];
    let (mut defaults, _) = validate(&DeployOptions::new(Target::Compose)).unwrap();
    defaults.out_dir = case.deployment.out_dir.clone();
    assert_eq!(defaults, case.deployment, "{}", case.name);
}

#[test]
fn line_diff_shows_changed_lines_with_context() {
    let d = line_diff("a\nb\nc\nd\ne\nf\ng\n", "a\nb\nc\nD\ne\nf\ng\n");
    assert!(d.contains("-    4 | d") && d.contains("+    4 | D"), "{d}");
    assert!(d.contains("     2 | b") && !d.contains("| a"), "{d}");
}
