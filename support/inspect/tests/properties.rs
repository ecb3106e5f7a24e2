//! Properties of any tree: no query, JSON or text rendering panics, and every output keeps
//! the tree's order.

use inspect::{Node, Value};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        (any::<u64>(), any::<bool>()).prop_map(|(value, hex)| Value::Unsigned { value, hex }),
        any::<i64>().prop_map(Value::Signed),
        any::<i64>().prop_map(Value::SignedHex),
        prop_oneof![".{0,6}", "[a \n\r\t]{0,4}"].prop_map(Value::Str),
    ]
}

/// Names drawn from a small set so that queries hit, with an occasional odd one.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-c0-2]".prop_map(String::from),
        1 => ".{0,4}",
    ]
}

fn tree() -> impl Strategy<Value = Node> {
    value()
        .prop_map(Node::Value)
        .prop_recursive(4, 48, 5, |inner| {
            prop::collection::vec((name(), inner), 0..5).prop_map(Node::Dir)
        })
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec("[a-c0-2]", 0..5).prop_map(|s| s.join("/")),
        ".{0,10}",
    ]
}

/// Counts the text lines a tree should print: one per child at every level, or one for a
/// leaf root.
fn entries(node: &Node) -> usize {
    match node {
        Node::Value(_) => 1,
        Node::Dir(children) => children
            .iter()
            .map(|(_, n)| match n {
                Node::Dir(c) if !c.is_empty() => 1 + entries(n),
                _ => 1,
            })
            .sum(),
    }
}

proptest! {
    /// A query either finds a node or names a missing segment of the path; it never panics,
    /// and what it finds is reached again by the path of the nodes walked.
    #[test]
    fn queries_never_panic(t in tree(), p in path()) {
        match t.query(&p) {
            Ok(found) => {
                let mut node = &t;
                for segment in p.split('/').filter(|s| !s.is_empty()) {
                    node = node.child(segment).expect("found by query");
                }
                prop_assert_eq!(found, node);
            }
            Err(e) => {
                prop_assert!(p.split('/').any(|s| s == e.missing));
                prop_assert!(t.get(&p).is_none());
            }
        }
    }

    /// `inspect::query` on a tree finds what `Node::query` finds, errors included.
    #[test]
    fn direct_query_agrees(t in tree(), p in path()) {
        prop_assert_eq!(inspect::query(&t, &p), t.query(&p).cloned());
    }

    /// JSON objects list a directory's names in the tree's order (first appearance of a
    /// repeated name), and pretty JSON parses back to the same value.
    #[test]
    fn json_keeps_order(t in tree()) {
        let json = t.to_json();
        if let (Node::Dir(children), Some(obj)) = (&t, json.as_object()) {
            let mut expected: Vec<&str> = Vec::new();
            for (k, _) in children {
                if !expected.contains(&k.as_str()) {
                    expected.push(k);
                }
            }
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            prop_assert_eq!(keys, expected);
        }
        let back: serde_json::Value = serde_json::from_str(&t.to_json_pretty()).unwrap();
        prop_assert_eq!(back, json);
    }

    /// The text rendering is one line per entry, whatever the string values hold (names with
    /// line breaks aside: they are printed as they are).
    #[test]
    fn text_is_one_line_per_entry(t in tree()) {
        let text = t.to_text();
        fn names_clean(n: &Node) -> bool {
            n.children().is_none_or(|c| {
                c.iter().all(|(k, n)| !k.contains(['\n', '\r']) && names_clean(n))
            })
        }
        prop_assume!(names_clean(&t));
        prop_assert_eq!(text.lines().count(), entries(&t));
    }
}
