//! [`ConfigError`], and where in the text an error is: key paths, their lines (from
//! `toml_edit` spans), and the keys a table may hold (from the config's own types).

use std::fmt;
use std::ops::Range;

use toml_edit::{Array, ArrayOfTables, ImDocument, InlineTable, Item, Table, Value};

use super::Config;

/// A configuration that cannot be read, parsed or accepted. Displays as
/// `origin:line: key: message` (parts that are unknown are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name (or other origin) given to [`parse`].
    pub origin: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Key path such as `vip[1].backend[0].port`; empty when the error is not about a key
    /// (unreadable file, TOML syntax).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(k: &str) -> Self {
        Seg::Key(k.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

macro_rules! key_path {
    ($($s:expr),* $(,)?) => { [$(Seg::from($s)),*] };
}
pub(super) use key_path;

pub(super) fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

pub(super) fn one_line(s: &str) -> String {
    s.trim().replace('\n', "; ")
}

/// A node of the parsed document, for walking key paths.
#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a Table),
    Inline(&'a InlineTable),
    Tables(&'a ArrayOfTables),
    Array(&'a Array),
    Leaf(&'a Value),
    Empty,
}

impl<'a> Node<'a> {
    fn of_item(item: &'a Item) -> Self {
        match item {
            Item::Table(t) => Node::Table(t),
            Item::ArrayOfTables(a) => Node::Tables(a),
            Item::Value(v) => Node::of_value(v),
            Item::None => Node::Empty,
        }
    }

    fn of_value(v: &'a Value) -> Self {
        match v {
            Value::InlineTable(t) => Node::Inline(t),
            Value::Array(a) => Node::Array(a),
            v => Node::Leaf(v),
        }
    }

    fn span(&self) -> Option<Range<usize>> {
        match self {
            Node::Table(t) => t.span(),
            Node::Inline(t) => t.span(),
            Node::Tables(a) => a.span(),
            Node::Array(a) => a.span(),
            Node::Leaf(v) => v.span(),
            Node::Empty => None,
        }
    }

    /// The key's own span and the value under it.
    fn key(&self, k: &str) -> Option<(Option<Range<usize>>, Node<'a>)> {
        let (key, item) = match self {
            Node::Table(t) => t.get_key_value(k)?,
            Node::Inline(t) => t.get_key_value(k)?,
            _ => return None,
        };
        Some((key.span(), Node::of_item(item)))
    }

    fn index(&self, i: usize) -> Option<Node<'a>> {
        match self {
            Node::Tables(a) => a.get(i).map(Node::Table),
            Node::Array(a) => a.get(i).map(Node::of_value),
            _ => None,
        }
    }

    /// Every child: its path step, the span of its key (for keyed children) and the node.
    fn children(&self) -> Vec<(Seg, Option<Range<usize>>, Node<'a>)> {
        let keys: Vec<&str> = match self {
            Node::Table(t) => t.iter().map(|(k, _)| k).collect(),
            Node::Inline(t) => t.iter().map(|(k, _)| k).collect(),
            Node::Tables(a) => {
                return a.iter().enumerate().map(|(i, t)| (Seg::Index(i), None, Node::Table(t))).collect();
            }
            Node::Array(a) => {
                return a.iter().enumerate().map(|(i, v)| (Seg::Index(i), None, Node::of_value(v))).collect();
            }
            Node::Leaf(_) | Node::Empty => return Vec::new(),
        };
        keys.into_iter().filter_map(|k| self.key(k).map(|(span, node)| (Seg::from(k), span, node))).collect()
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// The most specific key path whose key or value span contains `target`.
fn path_at(node: Node, target: &Range<usize>, path: &mut Vec<Seg>, best: &mut Option<(usize, Vec<Seg>)>) {
    fn consider(span: Option<Range<usize>>, target: &Range<usize>, path: &[Seg], best: &mut Option<(usize, Vec<Seg>)>) {
        if let Some(span) = span
            && contains(&span, target)
            && best.as_ref().is_none_or(|(len, _)| span.len() <= *len)
        {
            *best = Some((span.len(), path.to_vec()));
        }
    }
    for (seg, key_span, child) in node.children() {
        path.push(seg);
        consider(key_span, target, path, best);
        consider(child.span(), target, path, best);
        path_at(child, target, path, best);
        path.pop();
    }
}

/// What an error message is made from: the file's name and text, and its document with
/// spans, parsed only for an error (a second parse of a thousand VIPs costs tens of ms).
pub(super) struct Ctx<'a> {
    pub(super) origin: &'a str,
    pub(super) text: &'a str,
    doc: std::cell::OnceCell<ImDocument<&'a str>>,
}

impl<'a> Ctx<'a> {
    /// The context of `text`, which must be valid TOML (`syntax` says).
    pub(super) fn new(origin: &'a str, text: &'a str) -> Self {
        Self { origin, text, doc: std::cell::OnceCell::new() }
    }

    fn root(&self) -> Node<'_> {
        let doc = self.doc.get_or_init(|| ImDocument::parse(self.text).expect("checked to be TOML"));
        Node::Table(doc.as_table())
    }

    /// The line of a key path: the key's own line, or the line of the closest enclosing
    /// table or value that exists in the text.
    pub(super) fn line(&self, path: &[Seg]) -> Option<usize> {
        let mut node = self.root();
        let mut offset = None;
        for seg in path {
            let found = match seg {
                Seg::Key(k) => node.key(k).map(|(key_span, child)| (key_span.or(child.span()), child)),
                Seg::Index(i) => node.index(*i).map(|child| (child.span(), child)),
            };
            let Some((span, child)) = found else { break };
            if let Some(span) = span {
                offset = Some(span.start);
            }
            node = child;
        }
        offset.map(|o| line_of(self.text, o))
    }

    pub(super) fn err(&self, path: &[Seg], message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.to_string(),
            line: self.line(path),
            key: path_string(path),
            message: message.into(),
        }
    }

    /// A deserialisation error (wrong type, unknown or missing key, bad value), with the
    /// key path recovered from the error's span.
    pub(super) fn serde_error(&self, e: &toml::de::Error) -> ConfigError {
        let mut message = one_line(e.message());
        let mut path = Vec::new();
        if let Some(span) = e.span() {
            let mut best = None;
            path_at(self.root(), &span, &mut Vec::new(), &mut best);
            if let Some((_, p)) = best {
                path = p;
            }
        }
        // "missing field `x`" is reported on the enclosing table, whose span may equal an
        // outer one's (a lone [[vip]] spans the whole file): climb to the table whose
        // schema has the field, then name the key.
        if let Some(field) = message.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
            while !path.is_empty() && !fields_at(&path).iter().any(|f| f == field) {
                path.pop();
            }
            path.push(Seg::from(field));
            message = "required key is missing".to_string();
        }
        ConfigError {
            origin: self.origin.to_string(),
            line: e.span().map(|s| line_of(self.text, s.start)),
            key: path_string(&path),
            message,
        }
    }
}

/// The keys of the table at a key path, as the config's own types (serde) declare them: a
/// document holding only an unknown key at that path is refused with the list of the keys
/// expected there (`deny_unknown_fields`), before anything else is checked.
pub(super) fn fields_at(path: &[Seg]) -> Vec<String> {
    const PROBE: &str = "lb-schema-probe";
    let mut value = toml::Value::Table([(PROBE.to_owned(), toml::Value::Integer(0))].into_iter().collect());
    for seg in path.iter().rev() {
        value = match seg {
            Seg::Key(k) => toml::Value::Table([(k.clone(), value)].into_iter().collect()),
            Seg::Index(_) => toml::Value::Array(vec![value]),
        };
    }
    let Ok(probe) = toml::to_string(&value) else { return Vec::new() };
    let Err(e) = toml::from_str::<Config>(&probe) else { return Vec::new() };
    let message = e.message();
    let Some(expected) = message.strip_prefix(&format!("unknown field `{PROBE}`, expected")) else {
        return Vec::new();
    };
    expected.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

pub(super) fn at_line(cx: &Ctx, path: &[Seg]) -> String {
    cx.line(path).map(|l| format!(", line {l}")).unwrap_or_default()
}
