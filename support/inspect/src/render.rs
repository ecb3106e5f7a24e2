//! JSON and text output.

use crate::{Node, Value};
use std::fmt::{self, Write};

/// The node as JSON; see [`Node::to_json`].
pub fn to_json(node: &Node) -> serde_json::Value {
    node.to_json()
}

impl Node {
    /// JSON: directories as objects in the tree's order (the workspace builds `serde_json`
    /// with `preserve_order`), hex integers as `"0x.."` strings, other integers as numbers,
    /// nothing as `null`. If a directory holds two children of one name, the last one wins.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Node::Value(v) => match v {
                Value::None => J::Null,
                Value::Bool(b) => J::Bool(*b),
                Value::Unsigned { value, hex: false } => J::from(*value),
                Value::Signed(v) => J::from(*v),
                Value::Str(s) => J::String(s.clone()),
                Value::Unsigned { .. } | Value::SignedHex(_) => J::String(value_text(v)),
            },
            Node::Dir(children) => J::Object(
                children
                    .iter()
                    .map(|(k, n)| (k.clone(), n.to_json()))
                    .collect(),
            ),
        }
    }

    /// [`Node::to_json`] printed with two-space indentation.
    pub fn to_json_pretty(&self) -> String {
        format!("{:#}", self.to_json())
    }

    /// Indented `name: value` lines, for people: a directory is `name:` followed by its
    /// children two spaces further in (an empty one is `name: {}`), nothing is `-`, hex
    /// integers are `0x..`, and a string that is empty, has surrounding spaces or holds
    /// control characters (a newline) is quoted and escaped so that every entry stays on one
    /// line. A leaf at the root is printed alone.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_text(&mut out, 0);
        out
    }

    fn write_text(&self, out: &mut String, depth: usize) {
        match self {
            Node::Dir(children) => {
                for (k, n) in children {
                    let _ = write!(out, "{:indent$}{k}:", "", indent = depth * 2);
                    match n {
                        Node::Dir(c) if c.is_empty() => out.push_str(" {}\n"),
                        Node::Dir(_) => {
                            out.push('\n');
                            n.write_text(out, depth + 1);
                        }
                        Node::Value(v) => {
                            let _ = writeln!(out, " {}", value_text(v));
                        }
                    }
                }
            }
            Node::Value(v) => {
                let _ = writeln!(out, "{}", value_text(v));
            }
        }
    }
}

/// The text rendering ([`Node::to_text`]).
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::None => "-".into(),
        Value::Bool(b) => b.to_string(),
        Value::Unsigned { value, hex: true } => format!("{value:#x}"),
        Value::Unsigned { value, hex: false } => value.to_string(),
        Value::Signed(v) => v.to_string(),
        Value::SignedHex(v) if *v < 0 => format!("-{:#x}", v.unsigned_abs()),
        Value::SignedHex(v) => format!("{v:#x}"),
        Value::Str(s) => {
            if s.is_empty() || s.trim() != s || s.chars().any(char::is_control) {
                format!("{s:?}")
            } else {
                s.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Inspect, Node};

    fn sample() -> Node {
        Node::dir()
            .field("count", &3u32)
            .hex("id", 0x1f)
            .child(
                "sub",
                Node::dir().field("on", &true).field("name", "x").build(),
            )
            .field("none", &Option::<u8>::None)
            .field("neg", &-4i8)
            .child("empty", Node::dir().build())
            .build()
    }

    /// JSON keeps the order, prints hex as strings and nothing as null.
    #[test]
    fn json_output() {
        let j = crate::to_json(&sample());
        assert_eq!(
            j,
            serde_json::json!({
                "count": 3, "id": "0x1f", "sub": {"on": true, "name": "x"}, "none": null,
                "neg": -4, "empty": {}
            })
        );
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["count", "id", "sub", "none", "neg", "empty"]);
    }

    /// The order of a directory survives into JSON even when it is not alphabetical.
    #[test]
    fn json_order_is_the_tree_order() {
        let names = ["zeta", "alpha", "mu", "beta", "10", "9"];
        let mut b = Node::dir();
        for (i, n) in names.iter().enumerate() {
            b = b.field(*n, &i);
        }
        let j = b.build().to_json();
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, names);
        let pretty = Node::dir()
            .field("b", &1u8)
            .field("a", &2u8)
            .build()
            .to_json_pretty();
        assert_eq!(pretty, "{\n  \"b\": 1,\n  \"a\": 2\n}");
    }

    /// Text output indents directories and marks empty ones.
    #[test]
    fn text_output() {
        let expected =
            "count: 3\nid: 0x1f\nsub:\n  on: true\n  name: x\nnone: -\nneg: -4\nempty: {}\n";
        assert_eq!(sample().to_text(), expected);
        assert_eq!(sample().to_string(), expected);
        assert_eq!(5u8.inspect().to_text(), "5\n");
    }

    /// Strings that would break the one-entry-per-line layout are quoted.
    #[test]
    fn text_quotes_odd_strings() {
        let n = Node::dir()
            .field("multi", "a\nb")
            .field("empty", "")
            .field("padded", " x")
            .field("plain", "a b")
            .build();
        assert_eq!(
            n.to_text(),
            "multi: \"a\\nb\"\nempty: \"\"\npadded: \" x\"\nplain: a b\n"
        );
    }
}
