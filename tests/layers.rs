//! The crates' module structure, checked: no module of `proxy/` or `config/` imports one that
//! imports it back (directly or around a loop), so the modules stand in layers and a lower one
//! never reaches up; and the README's architecture section names every module of `proxy/`.
//!
//! An import is any `crate::name` outside comments and `#[cfg(test)]` items (tests may reach
//! anywhere), including each name of a `use crate::{a, b::c}` group. A folder module
//! (`acme/mod.rs` and its files) counts as one module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module name → the files that make it up.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("UTF-8 name")
            .to_owned();
        if path.is_dir() {
            let mut files: Vec<PathBuf> = walk(&path);
            files.sort();
            out.entry(name).or_default().extend(files);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            out.entry(name).or_default().push(path);
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable folder module") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The source without comments, and without `#[cfg(test)]` items.
fn code(text: &str) -> String {
    let without_comments: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut s = without_comments;
    while let Some(at) = s.find("#[cfg(test)]") {
        // The item runs to the end of its first brace block (or its `;`).
        let rest = &s[at..];
        let end = match (rest.find('{'), rest.find(';')) {
            (Some(open), Some(semi)) if semi < open => at + semi + 1,
            (Some(open), _) => {
                let mut depth = 0usize;
                let mut end = s.len();
                for (i, c) in rest[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = at + open + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(semi)) => at + semi + 1,
            (None, None) => s.len(),
        };
        s.replace_range(at..end, "");
    }
    s
}

/// The crate modules `code` names: `crate::x`, and each first name in `crate::{x, y::z}`.
fn imports(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `guard_config::...` names another crate's path, not `crate::`
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.insert(ident(group[start..i].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(group[start..i].trim()));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.remove("");
    out
}

/// Module → the other modules of the same crate it imports.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let names: BTreeSet<String> = mods.keys().cloned().collect();
    mods.iter()
        .map(|(name, files)| {
            let mut deps = BTreeSet::new();
            for f in files {
                let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                deps.extend(
                    imports(&code(&text))
                        .into_iter()
                        .filter(|d| d != name && names.contains(d)),
                );
            }
            (name.clone(), deps)
        })
        .collect()
}

/// A loop of imports, as the modules around it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(m.to_owned(), Mark::Open);
        path.push(m.to_owned());
        for d in &graph[m] {
            match marks[d.as_str()] {
                Mark::Open => {
                    let from = path.iter().position(|p| p == d).expect("open modules are on the path");
                    let mut cycle = path[from..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(d, graph, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(m.to_owned(), Mark::Done);
        None
    }
    let mut marks: BTreeMap<String, Mark> = graph.keys().map(|k| (k.clone(), Mark::New)).collect();
    for m in graph.keys() {
        if marks[m.as_str()] == Mark::New {
            if let Some(c) = visit(m, graph, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_module_of_proxy_or_config_imports_one_that_imports_it_back() {
    for krate in ["proxy", "config"] {
        let g = graph(&root().join(krate).join("src"));
        assert!(g.len() > 5, "{krate}: found only {} modules", g.len());
        if let Some(cycle) = find_cycle(&g) {
            panic!(
                "{krate}/src: modules import each other in a loop: {}",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_checker_sees_imports_and_loops() {
    let text = "use crate::a::X;\nuse crate::{b, c::{D, E}};\n// crate::commented\nfn f() { crate::d::g(); guard_config::crate_like(); }\n#[cfg(test)]\nmod tests { use crate::e; }\n";
    let found: Vec<String> = imports(&code(text)).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d"]);
    let g: BTreeMap<String, BTreeSet<String>> = [("x", "y"), ("y", "z"), ("z", "x"), ("w", "x")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), BTreeSet::from([b.to_owned()])))
        .collect();
    let cycle = find_cycle(&g).expect("x -> y -> z -> x is a loop");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
    let mut acyclic = g.clone();
    acyclic.insert("z".into(), BTreeSet::new());
    assert_eq!(find_cycle(&acyclic), None);
}

#[test]
fn the_readme_architecture_names_every_proxy_module() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Architecture")
        .nth(1)
        .expect("README.md has an `## Architecture` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let missing: Vec<String> = modules(&root().join("proxy/src"))
        .into_keys()
        .filter(|m| !section.contains(&format!("`{m}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's architecture section does not name: {missing:?}"
    );
}
