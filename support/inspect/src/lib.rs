//! A diagnostics tree: types describe their state as a [`Node`] (derive it with
//! `#[derive(Inspect)]`), callers query it by path and print it as JSON or text.
//!
//! The model is a snapshot: [`Inspect::inspect`] builds the tree of a value as it is now. A
//! node is a [`Value`] (nothing, a bool, an integer shown in decimal or hex, or a string) or a
//! directory of named children in a fixed order, so every output is deterministic: structs
//! list their fields in declaration order, `BTreeMap`s in key order, `HashMap`s in a sorted
//! order (numeric keys numerically, see [`Inspect`]).
//!
//! - Build: `#[derive(Inspect)]` (attributes below), or by hand with [`Node::dir`]
//!   (`Node::dir().field("a", &x).hex("id", id).child("sub", node).build()`).
//! - Query: [`Node::query`] (`"functions/1/state"`; `""` and `"/"` are the root) returns the
//!   node or a [`QueryError`] naming the first missing segment; [`Node::get`] is the same as
//!   an `Option`. [`query`] does the same on a value without building the whole tree: derived
//!   types and the standard containers build only the nodes on the path.
//! - Print: [`Node::to_json`] / [`to_json`] (a `serde_json::Value`: hex integers as `"0x2a"`
//!   strings, other integers as numbers, nothing as `null`, directories as objects in the
//!   tree's order), [`Node::to_json_pretty`], and [`Node::to_text`] (or `Display`): indented
//!   `name: value` lines for a CLI.
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
//!     functions: BTreeMap::from([
//!         (1, Function { state: State::Probing, interrupts_pending: 2 }),
//!         (3, Function { state: State::Ejecting { since_ms: 40 }, interrupts_pending: 0 }),
//!     ]),
//!     _scratch: vec![],
//! };
//! let tree = bus.inspect();
//!
//! // Query one node by path; a missing path is an error that names the missing segment.
//! assert_eq!(tree.query("functions/1/interrupts").unwrap().to_json(), 2);
//! assert_eq!(tree.query("functions/7/state").unwrap_err().missing, "7");
//!
//! // JSON: hex ids as strings, unit variants by name, variants with data as directories.
//! assert_eq!(
//!     tree.to_json(),
//!     serde_json::json!({
//!         "instance": "0x2a",
//!         "functions": {
//!             "1": {"state": "Probing", "interrupts": 2},
//!             "3": {"state": {"state": "Ejecting", "since_ms": 40}, "interrupts": 0},
//!         }
//!     })
//! );
//!
//! // Text, for people.
//! assert_eq!(
//!     tree.query("functions/3").unwrap().to_text(),
//!     "state:\n  state: Ejecting\n  since_ms: 40\ninterrupts: 0\n"
//! );
//! ```
//!
//! # The derive
//!
//! `#[derive(Inspect)]` (re-exported here from `inspect_derive`) supports:
//!
//! - structs with named fields: a directory with one child per field, named after the field,
//!   in declaration order; a unit struct is an empty directory;
//! - tuple structs: children `"0"`, `"1"`, ...; a tuple struct with exactly one field (a
//!   newtype) is transparent: it inspects as its field;
//! - enums whose variants carry no data: the variant's name **as written** (`Probing`) as a
//!   string; `#[inspect(rename_all = "snake_case")]` (or `"lowercase"`) on the enum changes
//!   that, `#[inspect(rename = "x")]` on a variant names it explicitly;
//! - enums with data: a variant without data is still its name; a variant with data is a
//!   directory whose first child `state` (change it with `#[inspect(tag = "kind")]` on the
//!   enum) is the variant's name, followed by the variant's fields (named, or `"0"`, `"1"`...).
//!
//! Field attributes (combine them in one `#[inspect(...)]` or several):
//!
//! | attribute | effect |
//! | --- | --- |
//! | `hex` | integers (also inside options, arrays, maps...) shown in hex |
//! | `skip` | not shown |
//! | `rename = "x"` | shown as `x` |
//! | `display` | a string from the field's `Display` |
//! | `debug` | a string from the field's `Debug` |
//! | `with = "path::to::f"` | a node from `fn f(&T) -> inspect::Node` (may be combined with `hex`) |
//! | `flatten` | the field's children are merged into this directory |
//!
//! Container attributes: `transparent` (a struct with one field inspects as that field; the
//! field may still carry `hex`, `display`, `debug` or `with`), and on enums `tag = "name"` and
//! `rename_all = "snake_case" | "lowercase"`. Type parameters get an `Inspect` bound.
//! Anything else is a compile error pointing at the offending attribute:
//!
//! ```compile_fail
//! #[derive(inspect::Inspect)]
//! struct S {
//!     #[inspect(hexadecimal)] // error: unknown inspect attribute
//!     id: u32,
//! }
//! ```
//!
//! ```compile_fail
//! #[derive(inspect::Inspect)]
//! struct S {
//!     #[inspect(display, debug)] // error: only one of display, debug and with
//!     id: u32,
//! }
//! ```
//!
//! ```compile_fail
//! #[derive(inspect::Inspect)]
//! #[inspect(transparent)] // error: transparent needs exactly one field
//! struct S(u8, u8);
//! ```
//!
//! ```compile_fail
//! #[derive(inspect::Inspect)]
//! union U { a: u32 } // error: unions are not supported
//! ```

#![forbid(unsafe_code)]

mod impls;
mod render;

pub use inspect_derive::Inspect;
pub use render::to_json;

use std::fmt::{Debug, Display};

/// A leaf value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Nothing: an empty `Option`. JSON `null`, text `-`.
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
    /// A signed integer printed in hex (`0x2a`, `-0x2a`).
    SignedHex(i64),
    /// A string.
    Str(String),
}

/// A node of the tree: a value, or a directory of named children (in a fixed order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A leaf.
    Value(Value),
    /// Named children, in the order they are shown.
    Dir(Vec<(String, Node)>),
}

/// A path that names no node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no node {missing:?} under {parent:?}")]
pub struct QueryError {
    /// The path up to the last node found (`"/"` for the root).
    pub parent: String,
    /// The first segment that was not found.
    pub missing: String,
}

/// A type that can describe its state as a [`Node`].
///
/// Implemented for integers (unsigned and signed up to 64 bits, their `NonZero` forms and
/// atomics), `bool`, `char`, `str`/`String`/`Cow<str>`, `Duration` (its `Debug` form, e.g.
/// `"1.5s"`), `()` (nothing), `Option<T>` (`None` is [`Value::None`]), slices, arrays,
/// `Vec` and `VecDeque` (children `"0"`, `"1"`, ...), `BTreeMap` (in key order) and
/// `HashMap` (keys whose text is an integer first, in numeric order, then the rest in text
/// order) with `Display` keys, `BTreeSet`/`HashSet` (like a list, in the same orders),
/// references, `Box`, `Rc`, `Arc`, and [`Node`] itself.
///
/// To read one node, [`query`] asks [`Inspect::inspect_at`], which derived types and the
/// containers here answer by building only the nodes on the path and the node found.
pub trait Inspect {
    /// The value's tree as it is now.
    fn inspect(&self) -> Node;

    /// The node at `segments` below this value (none: the value's own node), or `None` if
    /// there is none; always the node `self.inspect()` has at that path. The default builds
    /// the whole tree and looks; an implementation may go straight to the child named by the
    /// first segment.
    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        descend(self.inspect(), segments)
    }
}

/// The node at `path` below `value` (as [`Node::query`] on `value.inspect()`), built without
/// building the rest of the tree where the types allow it (see [`Inspect::inspect_at`]).
///
/// ```
/// #[derive(inspect::Inspect)]
/// struct Bus { functions: Vec<Function> }
/// #[derive(inspect::Inspect)]
/// struct Function { #[inspect(hex)] vendor_id: u16, pending: u32 }
///
/// let bus = Bus { functions: vec![Function { vendor_id: 0x1414, pending: 2 }] };
/// assert_eq!(inspect::query(&bus, "functions/0/vendor_id").unwrap().to_json(), "0x1414");
/// assert_eq!(inspect::query(&bus, "functions/1").unwrap_err().missing, "1");
/// ```
pub fn query(value: &(impl Inspect + ?Sized), path: &str) -> Result<Node, QueryError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match value.inspect_at(&segments) {
        Some(node) => Ok(node),
        // Rare: build the whole tree once to name the missing segment.
        None => match value.inspect().query(path) {
            Err(e) => Err(e),
            // Only reached by an `inspect_at` that disagrees with `inspect`.
            Ok(node) => Ok(node.clone()),
        },
    }
}

/// The node at `segments` below `node`, taken out of it. Used by [`Inspect::inspect_at`]
/// implementations for nodes they build whole.
pub fn descend(node: Node, segments: &[&str]) -> Option<Node> {
    let mut node = node;
    for segment in segments {
        let Node::Dir(children) = node else {
            return None;
        };
        node = children.into_iter().find(|(k, _)| k == segment)?.1;
    }
    Some(node)
}

impl Node {
    /// A directory builder.
    pub fn dir() -> DirBuilder {
        DirBuilder::default()
    }

    /// The empty value ([`Value::None`]).
    pub fn none() -> Self {
        Node::Value(Value::None)
    }

    /// A string leaf.
    pub fn str(s: impl Into<String>) -> Self {
        Node::Value(Value::Str(s.into()))
    }

    /// An unsigned leaf shown in hex.
    pub fn hex_value(value: u64) -> Self {
        Node::Value(Value::Unsigned { value, hex: true })
    }

    /// A leaf holding the value's `Display` form.
    pub fn display(v: &(impl Display + ?Sized)) -> Self {
        Node::str(v.to_string())
    }

    /// A leaf holding the value's `Debug` form.
    pub fn debug(v: &(impl Debug + ?Sized)) -> Self {
        Node::str(format!("{v:?}"))
    }

    /// The same tree with every integer shown in hex.
    pub fn hex(self) -> Self {
        match self {
            Node::Value(Value::Unsigned { value, .. }) => {
                Node::Value(Value::Unsigned { value, hex: true })
            }
            Node::Value(Value::Signed(v)) => Node::Value(Value::SignedHex(v)),
            Node::Dir(children) => {
                Node::Dir(children.into_iter().map(|(k, n)| (k, n.hex())).collect())
            }
            other => other,
        }
    }

    /// The leaf value, if this is one.
    pub fn as_value(&self) -> Option<&Value> {
        match self {
            Node::Value(v) => Some(v),
            Node::Dir(_) => None,
        }
    }

    /// The children, if this is a directory.
    pub fn children(&self) -> Option<&[(String, Node)]> {
        match self {
            Node::Dir(c) => Some(c),
            Node::Value(_) => None,
        }
    }

    /// The direct child called `name`, if this is a directory that has one.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, n)| n)
    }

    /// The node at `path`: segments separated by `/`, empty segments ignored, so `""` and
    /// `"/"` are the root and `"/a/b/"` is `"a/b"`. A name that itself contains `/` cannot
    /// be reached. If a directory holds two children of one name, the first one is found.
    pub fn query(&self, path: &str) -> Result<&Node, QueryError> {
        let mut node = self;
        let mut walked = String::new();
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            match node.child(segment) {
                Some(n) => {
                    walked.push('/');
                    walked.push_str(segment);
                    node = n;
                }
                None => {
                    if walked.is_empty() {
                        walked.push('/');
                    }
                    return Err(QueryError {
                        parent: walked,
                        missing: segment.into(),
                    });
                }
            }
        }
        Ok(node)
    }

    /// [`Node::query`] as an `Option`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.query(path).ok()
    }
}

/// Builds a directory node child by child, in the order of the calls.
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
        self.children.push((name.into(), Node::hex_value(value)));
        self
    }

    /// Adds a string child from the value's `Display` form.
    pub fn display(mut self, name: impl Into<String>, value: &(impl Display + ?Sized)) -> Self {
        self.children.push((name.into(), Node::display(value)));
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

    /// Paths find nodes; the root is `""` or `"/"`; a missing segment names itself and its
    /// parent.
    #[test]
    fn query_paths() {
        let n = sample();
        assert_eq!(n.query("").unwrap(), &n);
        assert_eq!(n.query("/").unwrap(), &n);
        assert_eq!(n.query("/sub/on/").unwrap(), &true.inspect());
        assert_eq!(n.get("sub//name"), Some(&Node::str("x")));
        let err = n.query("sub/nope/deeper").unwrap_err();
        assert_eq!(
            (err.parent.as_str(), err.missing.as_str()),
            ("/sub", "nope")
        );
        assert_eq!(err.to_string(), r#"no node "nope" under "/sub""#);
        let err = n.query("nope").unwrap_err();
        assert_eq!(err.parent, "/");
        // A value has no children.
        assert_eq!(n.query("count/x").unwrap_err().parent, "/count");
        assert_eq!(n.get("none/x"), None);
    }

    /// No path, however odd, panics.
    #[test]
    fn odd_paths_do_not_panic() {
        let n = sample();
        for path in [
            "//",
            "///sub",
            "..",
            "sub/..",
            "sub/on/x/y",
            "\0",
            "é/ü",
            " ",
            "sub/ name",
            "0",
        ] {
            let _ = n.query(path);
        }
        assert!(n.get("sub/ name").is_none());
    }

    /// `hex` reaches integers at any depth, signed ones too, and leaves the rest alone.
    #[test]
    fn hex_is_deep() {
        let n = Node::dir()
            .field("list", &[1u8, 255])
            .field("neg", &-31i32)
            .field("name", "x")
            .build()
            .hex();
        assert_eq!(
            n.to_json(),
            serde_json::json!({"list": {"0": "0x1", "1": "0xff"}, "neg": "-0x1f", "name": "x"})
        );
    }

    /// The builder's helpers and merge.
    #[test]
    fn builder() {
        let n = Node::dir()
            .display("addr", &std::net::Ipv4Addr::LOCALHOST)
            .merge("ignored", Node::dir().field("a", &1u8).build())
            .merge("leaf", Node::str("v"))
            .build();
        assert_eq!(
            n.to_json(),
            serde_json::json!({"addr": "127.0.0.1", "a": 1, "leaf": "v"})
        );
        assert_eq!(n.child("a"), Some(&1u8.inspect()));
        assert_eq!(n.children().map(<[_]>::len), Some(3));
        assert_eq!(n.as_value(), None);
        assert_eq!(Node::none().as_value(), Some(&Value::None));
    }
}

/// More misuses of the derive that must not compile (the crate page shows the common ones).
///
/// `hex` on a string rendering:
/// ```compile_fail
/// #[derive(inspect::Inspect)]
/// struct S { #[inspect(hex, display)] id: u32 }
/// ```
/// An attribute given twice:
/// ```compile_fail
/// #[derive(inspect::Inspect)]
/// struct S { #[inspect(skip, skip)] id: u32 }
/// ```
/// A renamed flattened field:
/// ```compile_fail
/// #[derive(inspect::Inspect)]
/// struct S { #[inspect(flatten, rename = "x")] id: u32 }
/// ```
/// Enum attributes on a struct, `transparent` on an enum, unknown variant attributes and
/// unknown `rename_all` styles:
/// ```compile_fail
/// #[derive(inspect::Inspect)]
/// #[inspect(tag = "kind")]
/// struct S { id: u32 }
/// ```
/// ```compile_fail
/// #[derive(inspect::Inspect)]
/// #[inspect(transparent)]
/// enum E { A }
/// ```
/// ```compile_fail
/// #[derive(inspect::Inspect)]
/// enum E { #[inspect(hex)] A }
/// ```
/// ```compile_fail
/// #[derive(inspect::Inspect)]
/// #[inspect(rename_all = "camelCase")]
/// enum E { A }
/// ```
/// A field whose type does not implement `Inspect`:
/// ```compile_fail
/// #[derive(inspect::Inspect)]
/// struct S { id: std::cell::Cell<u8> }
/// ```
/// The same shapes, well formed, compile:
/// ```
/// fn double(v: &u32) -> inspect::Node { inspect::Inspect::inspect(&(u64::from(*v) * 2)) }
///
/// #[derive(inspect::Inspect)]
/// #[inspect(tag = "kind", rename_all = "snake_case")]
/// enum E { #[inspect(rename = "a")] A, B { #[inspect(hex, with = "double")] id: u32 } }
/// ```
#[cfg(doctest)]
mod compile_errors {}
