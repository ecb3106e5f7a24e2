//! A diagnostics tree: types describe their state as a [`Node`] (derive it with
//! `#[derive(Inspect)]`), callers query it by path and print it as JSON or text.
//!
//! The model is a snapshot: [`Inspect::inspect`] builds the tree of a value as it is now. A
//! node is a value (bool, integer shown in decimal or hex, string, or nothing) or a directory
//! of named children in a fixed order, so output is deterministic.
//!
//! ```
//! use inspect::Inspect;
//! use std::collections::BTreeMap;
//!
//! #[derive(Inspect)]
//! struct Bus {
//!     #[inspect(hex)]
//!     instance: u32,
//!     functions: BTreeMap<u8, Function>,
//!     #[inspect(skip)]
//!     _scratch: Vec<u8>,
//! }
//!
//! #[derive(Inspect)]
//! enum State {
//!     Probing,
//!     Ejecting { since_ms: u64 },
//! }
//!
//! #[derive(Inspect)]
//! struct Function {
//!     state: State,
//!     #[inspect(rename = "interrupts")]
//!     interrupts_pending: u32,
//! }
//!
//! let bus = Bus {
//!     instance: 0x2a,
//!     functions: BTreeMap::from([(1, Function { state: State::Probing, interrupts_pending: 2 })]),
//!     _scratch: vec![],
//! };
//! let tree = bus.inspect();
//! assert_eq!(tree.query("functions/1/interrupts").unwrap().to_json(), 2);
//! assert_eq!(tree.to_json()["instance"], "0x2a");
//! assert_eq!(tree.to_json()["functions"]["1"]["state"], "Probing");
//! ```

#![forbid(unsafe_code)]

pub use inspect_derive::Inspect;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::{Display, Write};
use std::sync::Arc;
use std::time::Duration;

/// A leaf value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Nothing (an empty `Option`).
    None,
    /// A boolean.
    Bool(bool),
    /// An unsigned integer; `hex` asks for hexadecimal output.
    Unsigned {
        /// The value.
        value: u64,
        /// Print in hex (`0x2a`).
        hex: bool,
    },
    /// A signed integer.
    Signed(i64),
    /// A string.
    Str(String),
}

/// A node of the tree: a value, or a directory of named children (in a fixed order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A leaf.
    Value(Value),
    /// Named children.
    Dir(Vec<(String, Node)>),
}

/// A path that names no node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no node {missing:?} under {parent:?}")]
pub struct QueryError {
    /// The path up to the last node found.
    pub parent: String,
    /// The first segment that was not found.
    pub missing: String,
}

/// A type that can describe its state as a [`Node`].
pub trait Inspect {
    /// The value's tree as it is now.
    fn inspect(&self) -> Node;
}

impl Node {
    /// A directory builder.
    pub fn dir() -> DirBuilder {
        DirBuilder::default()
    }

    /// A string leaf.
    pub fn str(s: impl Into<String>) -> Self {
        Node::Value(Value::Str(s.into()))
    }

    /// A leaf holding the value's `Display` form.
    pub fn display(v: &impl Display) -> Self {
        Node::str(v.to_string())
    }

    /// A leaf holding the value's `Debug` form.
    pub fn debug(v: &impl std::fmt::Debug) -> Self {
        Node::str(format!("{v:?}"))
    }

    /// The same tree with every unsigned integer shown in hex.
    pub fn hex(self) -> Self {
        match self {
            Node::Value(Value::Unsigned { value, .. }) => {
                Node::Value(Value::Unsigned { value, hex: true })
            }
            Node::Dir(children) => {
                Node::Dir(children.into_iter().map(|(k, n)| (k, n.hex())).collect())
            }
            other => other,
        }
    }

    /// The node at `path` (segments separated by `/`; empty or `/` is the root).
    pub fn query(&self, path: &str) -> Result<&Node, QueryError> {
        let mut node = self;
        let mut walked = String::new();
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            let child = match node {
                Node::Dir(children) => children.iter().find(|(k, _)| k == segment),
                Node::Value(_) => None,
            };
            match child {
                Some((_, n)) => {
                    walked.push('/');
                    walked.push_str(segment);
                    node = n;
                }
                None => {
                    return Err(QueryError {
                        parent: if walked.is_empty() {
                            "/".into()
                        } else {
                            walked
                        },
                        missing: segment.into(),
                    });
                }
            }
        }
        Ok(node)
    }

    /// JSON: directories as objects in order, hex integers as `"0x.."` strings, nothing as
    /// `null`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Node::Value(Value::None) => J::Null,
            Node::Value(Value::Bool(b)) => J::Bool(*b),
            Node::Value(Value::Unsigned { value, hex: true }) => J::String(format!("{value:#x}")),
            Node::Value(Value::Unsigned { value, hex: false }) => J::from(*value),
            Node::Value(Value::Signed(v)) => J::from(*v),
            Node::Value(Value::Str(s)) => J::String(s.clone()),
            Node::Dir(children) => J::Object(
                children
                    .iter()
                    .map(|(k, n)| (k.clone(), n.to_json()))
                    .collect(),
            ),
        }
    }

    /// Indented `name: value` lines, for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_text(&mut out, 0);
        out
    }

    fn write_text(&self, out: &mut String, depth: usize) {
        if let Node::Dir(children) = self {
            for (k, n) in children {
                let _ = write!(out, "{:indent$}{k}:", "", indent = depth * 2);
                match n {
                    Node::Dir(_) => {
                        out.push('\n');
                        n.write_text(out, depth + 1);
                    }
                    Node::Value(v) => {
                        let _ = writeln!(out, " {}", value_text(v));
                    }
                }
            }
        } else if let Node::Value(v) = self {
            let _ = writeln!(out, "{}", value_text(v));
        }
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::None => "-".into(),
        Value::Bool(b) => b.to_string(),
        Value::Unsigned { value, hex: true } => format!("{value:#x}"),
        Value::Unsigned { value, hex: false } => value.to_string(),
        Value::Signed(v) => v.to_string(),
        Value::Str(s) => s.clone(),
    }
}

/// Builds a directory node child by child.
#[derive(Debug, Default)]
pub struct DirBuilder {
    children: Vec<(String, Node)>,
}

impl DirBuilder {
    /// Adds a child from anything inspectable.
    pub fn field(mut self, name: impl Into<String>, value: &(impl Inspect + ?Sized)) -> Self {
        self.children.push((name.into(), value.inspect()));
        self
    }

    /// Adds an integer child shown in hex.
    pub fn hex(mut self, name: impl Into<String>, value: u64) -> Self {
        self.children.push((
            name.into(),
            Node::Value(Value::Unsigned { value, hex: true }),
        ));
        self
    }

    /// Adds a prepared node.
    pub fn child(mut self, name: impl Into<String>, node: Node) -> Self {
        self.children.push((name.into(), node));
        self
    }

    /// Adds the children of a directory node in place (a non-directory is added as `name`).
    pub fn merge(mut self, name: impl Into<String>, node: Node) -> Self {
        match node {
            Node::Dir(children) => self.children.extend(children),
            other => self.children.push((name.into(), other)),
        }
        self
    }

    /// The directory.
    pub fn build(self) -> Node {
        Node::Dir(self.children)
    }
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl Inspect for $t {
            fn inspect(&self) -> Node {
                Node::Value(Value::Unsigned { value: *self as u64, hex: false })
            }
        }
    )*};
}
unsigned!(u8, u16, u32, u64, usize);

macro_rules! signed {
    ($($t:ty),*) => {$(
        impl Inspect for $t {
            fn inspect(&self) -> Node {
                Node::Value(Value::Signed(*self as i64))
            }
        }
    )*};
}
signed!(i8, i16, i32, i64, isize);

impl Inspect for bool {
    fn inspect(&self) -> Node {
        Node::Value(Value::Bool(*self))
    }
}

impl Inspect for str {
    fn inspect(&self) -> Node {
        Node::str(self)
    }
}

impl Inspect for String {
    fn inspect(&self) -> Node {
        Node::str(self.clone())
    }
}

impl Inspect for Duration {
    fn inspect(&self) -> Node {
        Node::str(format!("{self:?}"))
    }
}

impl Inspect for Node {
    fn inspect(&self) -> Node {
        self.clone()
    }
}

impl<T: Inspect> Inspect for Option<T> {
    fn inspect(&self) -> Node {
        match self {
            Some(v) => v.inspect(),
            None => Node::Value(Value::None),
        }
    }
}

impl<T: Inspect> Inspect for [T] {
    fn inspect(&self) -> Node {
        Node::Dir(
            self.iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v.inspect()))
                .collect(),
        )
    }
}

impl<T: Inspect, const N: usize> Inspect for [T; N] {
    fn inspect(&self) -> Node {
        self.as_slice().inspect()
    }
}

impl<T: Inspect> Inspect for Vec<T> {
    fn inspect(&self) -> Node {
        self.as_slice().inspect()
    }
}

impl<T: Inspect> Inspect for VecDeque<T> {
    fn inspect(&self) -> Node {
        Node::Dir(
            self.iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v.inspect()))
                .collect(),
        )
    }
}

impl<K: Display, V: Inspect> Inspect for BTreeMap<K, V> {
    fn inspect(&self) -> Node {
        Node::Dir(
            self.iter()
                .map(|(k, v)| (k.to_string(), v.inspect()))
                .collect(),
        )
    }
}

impl<K: Display, V: Inspect, S> Inspect for HashMap<K, V, S> {
    fn inspect(&self) -> Node {
        let mut children: Vec<(String, Node)> = self
            .iter()
            .map(|(k, v)| (k.to_string(), v.inspect()))
            .collect();
        children.sort_by(|a, b| a.0.cmp(&b.0));
        Node::Dir(children)
    }
}

impl<T: Inspect + ?Sized> Inspect for &T {
    fn inspect(&self) -> Node {
        (**self).inspect()
    }
}

impl<T: Inspect + ?Sized> Inspect for Box<T> {
    fn inspect(&self) -> Node {
        (**self).inspect()
    }
}

impl<T: Inspect + ?Sized> Inspect for Arc<T> {
    fn inspect(&self) -> Node {
        (**self).inspect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Node {
        Node::dir()
            .field("count", &3u32)
            .hex("id", 0x1f)
            .child(
                "sub",
                Node::dir().field("on", &true).field("name", "x").build(),
            )
            .field("none", &Option::<u8>::None)
            .build()
    }

    /// Paths find nodes; a missing segment names itself and its parent.
    #[test]
    fn query_paths() {
        let n = sample();
        assert_eq!(n.query("").unwrap(), &n);
        assert_eq!(n.query("/sub/on").unwrap(), &true.inspect());
        let err = n.query("sub/nope/deeper").unwrap_err();
        assert_eq!(
            (err.parent.as_str(), err.missing.as_str()),
            ("/sub", "nope")
        );
        assert!(n.query("count/x").is_err());
    }

    /// JSON keeps the order, prints hex as strings and nothing as null.
    #[test]
    fn json_output() {
        let j = sample().to_json();
        assert_eq!(
            j,
            serde_json::json!({"count": 3, "id": "0x1f", "sub": {"on": true, "name": "x"}, "none": null})
        );
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["count", "id", "sub", "none"]);
    }

    /// Text output indents directories.
    #[test]
    fn text_output() {
        assert_eq!(
            sample().to_text(),
            "count: 3\nid: 0x1f\nsub:\n  on: true\n  name: x\nnone: -\n"
        );
    }

    /// Hash maps print in key order.
    #[test]
    fn hashmap_is_sorted() {
        let m: HashMap<u8, u8> = (0..20).map(|i| (i, i)).collect();
        let Node::Dir(children) = m.inspect() else {
            panic!()
        };
        let keys: Vec<String> = children.into_iter().map(|(k, _)| k).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
}
