//! A small YAML document tree and its block-style writer, for the Kubernetes manifests. Every
//! string leaves as a double-quoted scalar (or a `|` literal block when it spans lines), so no
//! value is ever resolved as a boolean, a number or a date by the API server's YAML 1.1 parser
//! (`on`, `no`, `0440`, `12:30`). Keys are fixed identifiers chosen by the renderer.

use std::fmt::Write as _;

use crate::quote::yaml as quoted;

/// One YAML value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    /// A string: always written quoted (or as a literal block).
    Str(String),
    /// An integer, written bare.
    Int(i64),
    /// A boolean, written `true` or `false`.
    Bool(bool),
    /// A mapping in the order given; each entry may carry comment lines written above it.
    Map(Vec<Entry>),
    /// A sequence.
    List(Vec<Node>),
}

/// One key of a mapping.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub value: Node,
    pub comment: Vec<String>,
}

/// A string node.
pub(crate) fn s(v: impl Into<String>) -> Node {
    Node::Str(v.into())
}

/// An integer node.
pub(crate) fn int(v: impl Into<i64>) -> Node {
    Node::Int(v.into())
}

/// A list of string nodes.
pub(crate) fn strs<S: AsRef<str>>(items: &[S]) -> Node {
    Node::List(items.iter().map(|i| s(i.as_ref())).collect())
}

/// A mapping from `(key, value)` pairs, without comments.
pub(crate) fn map<K: Into<String>>(entries: Vec<(K, Node)>) -> Node {
    Node::Map(
        entries
            .into_iter()
            .map(|(key, value)| Entry {
                key: key.into(),
                value,
                comment: Vec::new(),
            })
            .collect(),
    )
}

impl Node {
    /// Adds `key: value` at the end of a mapping (no-op on other nodes).
    pub(crate) fn push(&mut self, key: impl Into<String>, value: Node) {
        self.push_noted(key, value, &[]);
    }

    /// Adds `key: value` with comment lines written above it.
    pub(crate) fn push_noted(&mut self, key: impl Into<String>, value: Node, comment: &[&str]) {
        if let Node::Map(entries) = self {
            entries.push(Entry {
                key: key.into(),
                value,
                comment: comment.iter().map(|c| c.to_string()).collect(),
            });
        }
    }

    /// Sets the comment above an existing key.
    pub(crate) fn note(mut self, key: &str, comment: &[&str]) -> Node {
        if let Node::Map(entries) = &mut self {
            if let Some(e) = entries.iter_mut().find(|e| e.key == key) {
                e.comment = comment.iter().map(|c| c.to_string()).collect();
            }
        }
        self
    }
}

/// A whole multi-document file: an optional header comment, then each document after `---`.
pub(crate) fn documents(header: &[&str], docs: &[Node]) -> String {
    let mut out = String::new();
    for line in header {
        comment_line(&mut out, 0, line);
    }
    for d in docs {
        out.push_str("---\n");
        write_block(&mut out, d, 0);
    }
    out
}

/// A file holding one document and no `---` (kustomization.yaml: kustomize reads one object).
pub(crate) fn document(header: &[&str], doc: &Node) -> String {
    let mut out = String::new();
    for line in header {
        comment_line(&mut out, 0, line);
    }
    write_block(&mut out, doc, 0);
    out
}

fn comment_line(out: &mut String, indent: usize, line: &str) {
    if line.is_empty() {
        let _ = writeln!(out, "{:indent$}#", "");
    } else {
        let _ = writeln!(out, "{:indent$}# {line}", "");
    }
}

/// A string that can be a `|` literal block: several lines, ending in one newline, with
/// nothing a block would change (trailing blanks, tabs, control characters, leading spaces on
/// the first line, which would be read as the block's indentation).
fn is_literal_block(v: &str) -> bool {
    v.contains('\n')
        && v.ends_with('\n')
        && !v.ends_with("\n\n")
        && !v.starts_with(' ')
        && v.lines()
            .all(|l| !l.ends_with(' ') && !l.chars().any(|c| c.is_control()))
}

/// Writes a scalar after `key:` or `- `, with its leading space; `None` for collections.
fn inline(v: &Node, indent: usize) -> Option<String> {
    match v {
        Node::Str(s) if is_literal_block(s) => {
            let mut out = String::from(" |\n");
            for line in s.lines() {
                if line.is_empty() {
                    out.push('\n');
                } else {
                    let _ = writeln!(out, "{:w$}{line}", "", w = indent + 2);
                }
            }
            // The caller adds no newline after a block.
            out.pop();
            Some(out)
        }
        Node::Str(s) => Some(format!(" {}", quoted(s))),
        Node::Int(i) => Some(format!(" {i}")),
        Node::Bool(b) => Some(format!(" {b}")),
        Node::Map(e) if e.is_empty() => Some(" {}".into()),
        Node::List(l) if l.is_empty() => Some(" []".into()),
        Node::Map(_) | Node::List(_) => None,
    }
}

/// Writes a mapping's or a list's lines at `indent`.
fn write_block(out: &mut String, node: &Node, indent: usize) {
    match node {
        Node::Map(entries) => {
            for e in entries {
                for c in &e.comment {
                    comment_line(out, indent, c);
                }
                write_entry(out, e, indent, indent);
            }
        }
        Node::List(items) => {
            for item in items {
                write_item(out, item, indent);
            }
        }
        scalar => {
            let _ = writeln!(
                out,
                "{:indent$}{}",
                "",
                inline(scalar, indent).unwrap_or_default().trim_start()
            );
        }
    }
}

/// One `key: value`; the key starts at column `first` (after a `- `) and nested lines at
/// `indent`.
fn write_entry(out: &mut String, e: &Entry, first: usize, indent: usize) {
    let pad = if first == indent { indent } else { 0 };
    match inline(&e.value, indent) {
        Some(v) => {
            let _ = writeln!(out, "{:pad$}{}:{v}", "", e.key);
        }
        None => {
            let _ = writeln!(out, "{:pad$}{}:", "", e.key);
            // Lists sit at their key's indentation plus two, like kubectl writes them.
            write_block(out, &e.value, indent + 2);
        }
    }
}

/// One `- item` at `indent`.
fn write_item(out: &mut String, item: &Node, indent: usize) {
    match item {
        Node::Map(entries) if !entries.is_empty() => {
            for (i, e) in entries.iter().enumerate() {
                // The first key's comment sits above the dash that opens the item.
                let at = if i == 0 { indent } else { indent + 2 };
                for c in &e.comment {
                    comment_line(out, at, c);
                }
                if i == 0 {
                    let _ = write!(out, "{:indent$}- ", "");
                    write_entry(out, e, indent + 2 + 1, indent + 2);
                } else {
                    write_entry(out, e, indent + 2, indent + 2);
                }
            }
        }
        Node::List(_) => {
            let _ = writeln!(out, "{:indent$}-", "");
            write_block(out, item, indent + 2);
        }
        scalar => {
            let _ = writeln!(out, "{:indent$}-{}", "", inline(scalar, indent + 2).unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_and_nesting_reads_back() {
        let mut doc = map(vec![
            ("kind", s("Deployment")),
            ("replicas", int(2)),
            ("flag", Node::Bool(true)),
            ("empty", map::<&str>(vec![])),
        ]);
        doc.push_noted(
            "items",
            Node::List(vec![
                map(vec![
                    ("name", s("no")),
                    ("ports", Node::List(vec![map(vec![("port", int(80))])])),
                ]),
                s("on"),
            ]),
            &["why"],
        );
        doc.push("text", s("a: b\nc\n"));
        let text = documents(&["header"], &[doc]);
        assert_eq!(
            text,
            "# header\n---\nkind: \"Deployment\"\nreplicas: 2\nflag: true\nempty: {}\n# why\nitems:\n  - name: \"no\"\n    ports:\n      - port: 80\n  - \"on\"\ntext: |\n  a: b\n  c\n"
        );
        let back: serde_yaml::Value = serde_yaml::from_str(text.split("---\n").nth(1).unwrap()).unwrap();
        assert_eq!(back["items"][0]["name"].as_str(), Some("no"));
        assert_eq!(back["items"][0]["ports"][0]["port"].as_i64(), Some(80));
        assert_eq!(back["items"][1].as_str(), Some("on"));
        assert_eq!(back["text"].as_str(), Some("a: b\nc\n"));
    }

    #[test]
    fn strings_a_block_would_change_stay_quoted() {
        for v in ["one line", "trailing \n", "two\n\n", " lead\nx\n", "no end\nx"] {
            let text = documents(&[], &[map(vec![("k", s(v))])]);
            assert!(text.contains("k: \""), "{v:?}: {text}");
        }
    }
}
