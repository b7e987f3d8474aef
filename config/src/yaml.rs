//! The YAML document as a tree of nodes that remember where they were written, and a serde
//! deserializer over that tree which reports every type error and unknown key with its key path
//! and `line:column`, instead of stopping at the first. Scalars resolve by the YAML 1.2 core
//! schema (`yes` and `on` are strings, not booleans).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::Position;

/// Aliases are copied into the tree; this caps what a handful of nested aliases can expand to.
const MAX_NODES: usize = 100_000;
/// Each deserialization pass reports one type error; this caps the passes.
const MAX_TYPE_ERRORS: usize = 100;

/// One problem found while reading the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub pos: Position,
    pub path: String,
    pub message: String,
}

/// A value in the document and where it starts.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub kind: Kind,
    pub pos: Position,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// `plain` scalars are resolved by the core schema; quoted ones are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// A mapping entry: its key (always a scalar here) and value.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub key_pos: Position,
    pub value: Node,
}

/// Where a key path is written: its key (absent for list items and the document) and value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spot {
    pub key: Option<Position>,
    pub value: Position,
    /// The value is a mapping or list, so errors about it point at its key.
    pub container: bool,
}

fn position(span: &Span) -> Position {
    Position {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

/// Joins a key onto a key path: `sites[1]` + `upstream` = `sites[1].upstream`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// A scalar's meaning under the YAML 1.2 core schema.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Resolved<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Str(&'a str),
}

fn resolve(text: &str, plain: bool) -> Resolved<'_> {
    if !plain {
        return Resolved::Str(text);
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        _ => {}
    }
    let int = if let Some(hex) = text.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()
    } else if let Some(oct) = text.strip_prefix("0o") {
        i128::from_str_radix(oct, 8).ok()
    } else if text.trim_start_matches(['-', '+']).bytes().all(|b| b.is_ascii_digit())
        && text.trim_start_matches(['-', '+']).len() + 1 >= text.len()
    {
        text.parse::<i128>().ok()
    } else {
        None
    };
    int.map_or(Resolved::Str(text), Resolved::Int)
}

impl Node {
    fn resolved(&self) -> Option<Resolved<'_>> {
        match &self.kind {
            Kind::Scalar { text, plain } => Some(resolve(text, *plain)),
            _ => None,
        }
    }

    /// The value as a message shows it: `"abc"`, `-1`, `true`, `a mapping`.
    fn describe(&self) -> String {
        match (&self.kind, self.resolved()) {
            (Kind::Seq(_), _) => "a list".into(),
            (Kind::Map(_), _) => "a mapping".into(),
            (_, Some(Resolved::Null)) => "an empty value".into(),
            (_, Some(Resolved::Bool(b))) => b.to_string(),
            (Kind::Scalar { text, .. }, Some(Resolved::Int(_))) => text.clone(),
            (Kind::Scalar { text, .. }, _) => format!("{text:?}"),
        }
    }

    fn count(&self) -> usize {
        1 + match &self.kind {
            Kind::Scalar { .. } => 0,
            Kind::Seq(items) => items.iter().map(Node::count).sum(),
            Kind::Map(entries) => entries.iter().map(|e| e.value.count()).sum(),
        }
    }
}

/// A container being built while its events arrive.
enum Frame {
    Seq {
        pos: Position,
        anchor: usize,
        path: String,
        items: Vec<Node>,
    },
    Map {
        pos: Position,
        anchor: usize,
        path: String,
        entries: Vec<Entry>,
        key: Option<PendingKey>,
    },
}

struct PendingKey {
    text: String,
    pos: Position,
    /// A repeated key: its value is reported and dropped.
    duplicate: bool,
}

/// Builds the tree. A syntax error ends the parse (`Err`); duplicate keys and unsupported tags
/// are collected and parsing goes on.
pub(crate) fn parse(text: &str) -> Result<(Node, Vec<Problem>), Problem> {
    let mut b = Builder {
        stack: Vec::new(),
        root: None,
        anchors: HashMap::new(),
        problems: Vec::new(),
        nodes: 0,
    };
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| Problem {
            pos: Position {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            path: String::new(),
            message: format!("not valid YAML: {}", e.info()),
        })?;
        let pos = position(&span);
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(Problem {
                        pos,
                        path: String::new(),
                        message: "more than one YAML document; guard reads one".into(),
                    });
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                let mut plain = style == ScalarStyle::Plain;
                if let Some(tag) = tag {
                    if tag.is_yaml_core_schema() && tag.suffix == "str" {
                        plain = false;
                    } else if !tag.is_yaml_core_schema() {
                        let path = b.child_path();
                        b.problems.push(Problem {
                            pos,
                            path,
                            message: format!("unsupported YAML tag {tag}"),
                        });
                    }
                }
                b.finish_node(
                    Node {
                        kind: Kind::Scalar {
                            text: value.into_owned(),
                            plain,
                        },
                        pos,
                    },
                    anchor,
                )?;
            }
            Event::Alias(id) => {
                let node = b.anchors.get(&id).cloned().ok_or_else(|| Problem {
                    pos,
                    path: b.child_path(),
                    message: "alias of an unknown anchor".into(),
                })?;
                b.nodes += node.count();
                b.finish_node(node, 0)?;
            }
            Event::SequenceStart(anchor, _) => {
                let path = b.container_path(pos)?;
                b.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    path,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                let path = b.container_path(pos)?;
                b.stack.push(Frame::Map {
                    pos,
                    anchor,
                    path,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match b.stack.pop() {
                    Some(Frame::Seq { pos, anchor, items, .. }) => (
                        Node {
                            kind: Kind::Seq(items),
                            pos,
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        pos, anchor, entries, ..
                    }) => (
                        Node {
                            kind: Kind::Map(entries),
                            pos,
                        },
                        anchor,
                    ),
                    None => continue,
                };
                b.finish_node(node, anchor)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    let root = b.root.unwrap_or(Node {
        kind: Kind::Scalar {
            text: String::new(),
            plain: true,
        },
        pos: Position { line: 1, column: 1 },
    });
    Ok((root, b.problems))
}

struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    problems: Vec<Problem>,
    nodes: usize,
}

impl Builder {
    /// The key path of the value about to be added.
    fn child_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Seq { path, items, .. }) => format!("{path}[{}]", items.len()),
            Some(Frame::Map { path, key: Some(k), .. }) => join(path, &k.text),
            Some(Frame::Map { path, key: None, .. }) => path.clone(),
        }
    }

    /// The path of a list or mapping that starts here; refuses one used as a mapping key.
    fn container_path(&self, pos: Position) -> Result<String, Problem> {
        if let Some(Frame::Map { key: None, path, .. }) = self.stack.last() {
            return Err(Problem {
                pos,
                path: path.clone(),
                message: "a mapping key must be a plain word".into(),
            });
        }
        Ok(self.child_path())
    }

    fn finish_node(&mut self, node: Node, anchor: usize) -> Result<(), Problem> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(Problem {
                pos: node.pos,
                path: String::new(),
                message: format!("the document expands to more than {MAX_NODES} values"),
            });
        }
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { path, entries, key, .. }) => match key.take() {
                None => {
                    let Kind::Scalar { text, .. } = node.kind else {
                        return Err(Problem {
                            pos: node.pos,
                            path: path.clone(),
                            message: "a mapping key must be a plain word".into(),
                        });
                    };
                    let first = entries.iter().find(|e| e.key == text).map(|e| e.key_pos.line);
                    if let Some(line) = first {
                        self.problems.push(Problem {
                            pos: node.pos,
                            path: join(path, &text),
                            message: format!("duplicate key (first at line {line})"),
                        });
                    }
                    *key = Some(PendingKey {
                        text,
                        pos: node.pos,
                        duplicate: first.is_some(),
                    });
                }
                Some(k) if k.duplicate => {}
                Some(k) => entries.push(Entry {
                    key: k.text,
                    key_pos: k.pos,
                    value: node,
                }),
            },
        }
        Ok(())
    }
}

/// Every key path in the document with where it is written, the document itself as `""`.
pub(crate) fn index(root: &Node) -> BTreeMap<String, Spot> {
    fn walk(node: &Node, path: String, key: Option<Position>, out: &mut BTreeMap<String, Spot>) {
        let container = !matches!(node.kind, Kind::Scalar { .. });
        out.insert(
            path.clone(),
            Spot {
                key,
                value: node.pos,
                container,
            },
        );
        match &node.kind {
            Kind::Scalar { .. } => {}
            Kind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{path}[{i}]"), None, out);
                }
            }
            Kind::Map(entries) => {
                for e in entries {
                    walk(&e.value, join(&path, &e.key), Some(e.key_pos), out);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, String::new(), None, &mut out);
    out
}

/// Suggests a known key for an unknown one, given the struct it appeared in and the key.
pub(crate) type Hint = fn(&'static str, &str) -> Option<String>;

/// Deserializes `T` from the tree, collecting every problem. A type error drops the innermost
/// mapping entry that holds it and deserialization runs again, so one pass per type error; an
/// unknown key is reported and skipped. `None` when even the document's shape is wrong.
pub(crate) fn deserialize<T: de::DeserializeOwned>(root: &Node, hint: Hint) -> (Option<T>, Vec<Problem>) {
    let mut dropped = BTreeSet::new();
    let mut problems = Vec::new();
    let unknown = RefCell::new(Vec::new());
    let result = loop {
        let ctx = Ctx {
            dropped: &dropped,
            unknown: &unknown,
            hint,
        };
        match T::deserialize(De {
            node: root,
            path: String::new(),
            ctx: &ctx,
        }) {
            Ok(value) => break Some(value),
            Err(e) => {
                let (path, pos) = e.at.unwrap_or_else(|| (String::new(), root.pos));
                problems.push(Problem {
                    pos,
                    path,
                    message: e.message,
                });
                match e.entry {
                    Some(entry) if problems.len() < MAX_TYPE_ERRORS && !dropped.contains(&entry) => {
                        dropped.insert(entry);
                    }
                    _ => break None,
                }
            }
        }
    };
    // Each pass sees the unknown keys again; report each once.
    for p in unknown.into_inner() {
        if !problems.contains(&p) {
            problems.push(p);
        }
    }
    (result, problems)
}

/// The field names of a struct deriving `Deserialize`, as serde sees them.
pub(crate) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `Max-Connections` and `max_connections` are the same key to a reader.
pub(crate) fn normalize_key(key: &str) -> String {
    key.trim().to_ascii_lowercase().replace('-', "_")
}

/// The closest of `fields` to `key`, if close enough to be a typo.
pub(crate) fn closest<'f>(key: &str, fields: &[&'f str]) -> Option<&'f str> {
    let key = normalize_key(key);
    fields
        .iter()
        .map(|f| (distance(&key, f), *f))
        .filter(|(d, f)| {
            let len = f.chars().count();
            *d <= (len / 3).max(2) && *d < len
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, f)| f)
}

struct Ctx<'a> {
    /// Mapping entries dropped after a type error, by key path.
    dropped: &'a BTreeSet<String>,
    unknown: &'a RefCell<Vec<Problem>>,
    hint: Hint,
}

/// A deserialization error, placed at the node it concerns.
#[derive(Debug)]
pub(crate) struct DeError {
    message: String,
    at: Option<(String, Position)>,
    /// The innermost mapping entry it occurred in: what the next pass leaves out.
    entry: Option<String>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            at: None,
            entry: None,
        }
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let found = match unexp {
            de::Unexpected::Bool(b) => b.to_string(),
            de::Unexpected::Unsigned(n) => n.to_string(),
            de::Unexpected::Signed(n) => n.to_string(),
            de::Unexpected::Str(s) => format!("{s:?}"),
            de::Unexpected::Unit => "an empty value".into(),
            de::Unexpected::Seq => "a list".into(),
            de::Unexpected::Map => "a mapping".into(),
            other => other.to_string(),
        };
        DeError::custom(format_args!("expected {exp}, found {found}"))
    }
}

struct De<'a> {
    node: &'a Node,
    path: String,
    ctx: &'a Ctx<'a>,
}

impl De<'_> {
    fn fail(&self, expected: &str) -> DeError {
        DeError {
            message: format!("expected {expected}, found {}", self.node.describe()),
            at: Some((self.path.clone(), self.node.pos)),
            entry: None,
        }
    }

    /// Places an error raised by a visitor at this node, unless a deeper node already claimed it.
    fn place(&self, mut e: DeError) -> DeError {
        if e.at.is_none() {
            e.at = Some((self.path.clone(), self.node.pos));
        }
        e
    }

    fn number<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.resolved() {
            Some(Resolved::Int(n)) if n >= 0 => match u64::try_from(n) {
                Ok(n) => visitor.visit_u64(n).map_err(|e| self.place(e)),
                Err(_) => Err(self.fail("a whole number that fits in 64 bits")),
            },
            _ => Err(self.fail("a whole number of 0 or more")),
        }
    }

    fn text(&self) -> Option<&str> {
        match (&self.node.kind, self.node.resolved()) {
            (_, Some(Resolved::Null)) => None,
            (Kind::Scalar { text, .. }, _) => Some(text),
            _ => None,
        }
    }
}

impl<'de> de::Deserializer<'de> for De<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            Kind::Map(entries) => visitor.visit_map(Entries::new(entries.iter().collect(), &self)),
            Kind::Seq(items) => visitor.visit_seq(Items {
                items: items.iter().enumerate(),
                de: &self,
            }),
            Kind::Scalar { text, plain } => match resolve(text, *plain) {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(n) => match (u64::try_from(n), i64::try_from(n)) {
                    (Ok(u), _) => visitor.visit_u64(u),
                    (_, Ok(i)) => visitor.visit_i64(i),
                    _ => visitor.visit_str(text),
                },
                Resolved::Str(s) => visitor.visit_str(s),
            },
        };
        r.map_err(|e| self.place(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.resolved() {
            Some(Resolved::Bool(b)) => visitor.visit_bool(b).map_err(|e| self.place(e)),
            _ => Err(self.fail("true or false")),
        }
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.number(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.number(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.number(visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.number(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // Any scalar reads as its text: `realm: 2024` is the string "2024".
        match self.text() {
            Some(t) => visitor.visit_str(t).map_err(|e| self.place(e)),
            None => Err(self.fail("a string")),
        }
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // An empty value or `null` leaves a setting unset.
        if self.node.resolved() == Some(Resolved::Null) {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.resolved() {
            Some(Resolved::Null) => visitor.visit_unit(),
            _ => Err(self.fail("an empty value")),
        }
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Seq(items) => visitor
                .visit_seq(Items {
                    items: items.iter().enumerate(),
                    de: &self,
                })
                .map_err(|e| self.place(e)),
            _ => Err(self.fail("a list")),
        }
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Map(entries) => visitor
                .visit_map(Entries::new(entries.iter().collect(), &self))
                .map_err(|e| self.place(e)),
            _ => Err(self.fail("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let entries = match &self.node.kind {
            Kind::Map(entries) => entries.as_slice(),
            // An empty document or section: every key at its default.
            _ if self.node.resolved() == Some(Resolved::Null) => &[],
            _ if self.path.is_empty() => return Err(self.fail("a mapping of settings (key: value)")),
            _ => return Err(self.fail("a mapping")),
        };
        let mut known = Vec::new();
        for e in entries {
            let path = join(&self.path, &e.key);
            if fields.contains(&e.key.as_str()) {
                if !self.ctx.dropped.contains(&path) {
                    known.push(e);
                }
                continue;
            }
            let suggestion = closest(&e.key, fields)
                .map(str::to_owned)
                .or_else(|| (self.ctx.hint)(name, &e.key));
            let message = match suggestion {
                Some(s) => format!("unknown key; did you mean `{s}`?"),
                None => format!("unknown key; the keys here are {}", fields.join(", ")),
            };
            let problem = Problem {
                pos: e.key_pos,
                path,
                message,
            };
            let mut unknown = self.ctx.unknown.borrow_mut();
            if !unknown.contains(&problem) {
                unknown.push(problem);
            }
        }
        visitor.visit_map(Entries::new(known, &self)).map_err(|e| self.place(e))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.text() {
            Some(t) => visitor.visit_enum(t.into_deserializer()).map_err(|e| self.place(e)),
            None => Err(self.fail("a string")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u128 f32 f64 char bytes byte_buf
    }
}

struct Entries<'a, 'b> {
    entries: std::vec::IntoIter<&'a Entry>,
    current: Option<&'a Entry>,
    de: &'b De<'a>,
}

impl<'a, 'b> Entries<'a, 'b> {
    fn new(entries: Vec<&'a Entry>, de: &'b De<'a>) -> Self {
        Entries {
            entries: entries.into_iter(),
            current: None,
            de,
        }
    }
}

impl<'de> MapAccess<'de> for Entries<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some(e) = self.entries.next() else {
            return Ok(None);
        };
        self.current = Some(e);
        let key: de::value::StrDeserializer<'_, DeError> = e.key.as_str().into_deserializer();
        seed.deserialize(key).map(Some).map_err(|mut err| {
            err.at.get_or_insert_with(|| (join(&self.de.path, &e.key), e.key_pos));
            err
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let e = self.current.take().expect("serde asks for a key before its value");
        let path = join(&self.de.path, &e.key);
        seed.deserialize(De {
            node: &e.value,
            path: path.clone(),
            ctx: self.de.ctx,
        })
        .map_err(|mut err| {
            err.entry.get_or_insert(path);
            err
        })
    }
}

struct Items<'a, 'b> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    de: &'b De<'a>,
}

impl<'de> SeqAccess<'de> for Items<'_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{i}]", self.de.path);
        seed.deserialize(De {
            node,
            path,
            ctx: self.de.ctx,
        })
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_resolve_by_the_core_schema() {
        assert_eq!(resolve("yes", true), Resolved::Str("yes"));
        assert_eq!(resolve("True", true), Resolved::Bool(true));
        assert_eq!(resolve("~", true), Resolved::Null);
        assert_eq!(resolve("-12", true), Resolved::Int(-12));
        assert_eq!(resolve("0x1F", true), Resolved::Int(31));
        assert_eq!(resolve("12", false), Resolved::Str("12"));
        assert_eq!(resolve("1-2", true), Resolved::Str("1-2"));
        assert_eq!(resolve("30s", true), Resolved::Str("30s"));
    }

    #[test]
    fn the_index_knows_where_every_key_and_item_is() {
        let (root, problems) = parse("a: 1\nb:\n  - x\n  - {c: 2}\n").unwrap();
        assert!(problems.is_empty());
        let idx = index(&root);
        assert_eq!(idx["a"].value, Position { line: 1, column: 4 });
        assert_eq!(idx["b"].key, Some(Position { line: 2, column: 1 }));
        assert_eq!(idx["b[1].c"].value, Position { line: 4, column: 9 });
    }

    #[test]
    fn duplicate_keys_are_reported_and_the_first_kept() {
        let (root, problems) = parse("a: 1\na: 2\n").unwrap();
        assert_eq!(problems[0].message, "duplicate key (first at line 1)");
        assert_eq!(problems[0].pos, Position { line: 2, column: 1 });
        assert_eq!(index(&root)["a"].value.line, 1);
    }

    #[test]
    fn aliases_are_copied_and_bounded() {
        let (root, _) = parse("a: &x [1, 2]\nb: *x\n").unwrap();
        assert!(matches!(&index(&root)["b"], s if s.container));
        let bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n";
        assert!(parse(bomb).unwrap_err().message.contains("more than"));
    }

    #[test]
    fn typos_find_their_key() {
        assert_eq!(closest("upstrem", &["upstream", "hosts"]), Some("upstream"));
        assert_eq!(
            closest("Max-Connections", &["max_connections"]),
            Some("max_connections")
        );
        assert_eq!(closest("emial", &["email", "domains"]), Some("email"));
        assert_eq!(closest("colour", &["upstream", "hosts"]), None);
        assert_eq!(closest("ab", &["key"]), None);
    }
}
