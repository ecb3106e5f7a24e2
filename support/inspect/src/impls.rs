//! `Inspect` for standard types.

use crate::{Inspect, Node, Value, descend};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::num::{
    NonZeroI8, NonZeroI16, NonZeroI32, NonZeroI64, NonZeroIsize, NonZeroU8, NonZeroU16, NonZeroU32,
    NonZeroU64, NonZeroUsize,
};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16,
    AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::time::Duration;

fn unsigned(value: u64) -> Node {
    Node::Value(Value::Unsigned { value, hex: false })
}

fn signed(value: i64) -> Node {
    Node::Value(Value::Signed(value))
}

macro_rules! integers {
    ($make:ident as $wide:ty: $($t:ty),*) => {$(
        impl Inspect for $t {
            fn inspect(&self) -> Node {
                // Lossless: every type listed is at most 64 bits wide.
                $make(*self as $wide)
            }
        }
    )*};
}
integers!(unsigned as u64: u8, u16, u32, u64, usize);
integers!(signed as i64: i8, i16, i32, i64, isize);

macro_rules! via_get {
    ($($t:ty),*) => {$(
        impl Inspect for $t {
            fn inspect(&self) -> Node {
                self.get().inspect()
            }
        }
    )*};
}
via_get!(
    NonZeroU8,
    NonZeroU16,
    NonZeroU32,
    NonZeroU64,
    NonZeroUsize,
    NonZeroI8,
    NonZeroI16,
    NonZeroI32,
    NonZeroI64,
    NonZeroIsize
);

/// Atomics are read with `Relaxed` ordering: a counter's value at some recent moment.
macro_rules! atomics {
    ($($t:ty),*) => {$(
        impl Inspect for $t {
            fn inspect(&self) -> Node {
                self.load(Ordering::Relaxed).inspect()
            }
        }
    )*};
}
atomics!(
    AtomicBool,
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicUsize,
    AtomicI8,
    AtomicI16,
    AtomicI32,
    AtomicI64,
    AtomicIsize
);

impl Inspect for bool {
    fn inspect(&self) -> Node {
        Node::Value(Value::Bool(*self))
    }
}

impl Inspect for char {
    fn inspect(&self) -> Node {
        Node::str(*self)
    }
}

impl Inspect for str {
    fn inspect(&self) -> Node {
        Node::str(self)
    }
}

impl Inspect for String {
    fn inspect(&self) -> Node {
        Node::str(self.as_str())
    }
}

impl Inspect for Cow<'_, str> {
    fn inspect(&self) -> Node {
        Node::str(self.as_ref())
    }
}

/// A duration is its `Debug` form (`"1.5s"`, `"250ms"`).
impl Inspect for Duration {
    fn inspect(&self) -> Node {
        Node::debug(self)
    }
}

/// The unit is nothing.
impl Inspect for () {
    fn inspect(&self) -> Node {
        Node::none()
    }
}

impl Inspect for Node {
    fn inspect(&self) -> Node {
        self.clone()
    }

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        let mut node = self;
        for segment in segments {
            node = node.child(segment)?;
        }
        Some(node.clone())
    }
}

impl<T: Inspect> Inspect for Option<T> {
    fn inspect(&self) -> Node {
        match self {
            Some(v) => v.inspect(),
            None => Node::none(),
        }
    }

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        match self {
            Some(v) => v.inspect_at(segments),
            None => descend(Node::none(), segments),
        }
    }
}

fn list<'a, T: Inspect + 'a>(items: impl Iterator<Item = &'a T>) -> Node {
    Node::Dir(
        items
            .enumerate()
            .map(|(i, v)| (i.to_string(), v.inspect()))
            .collect(),
    )
}

/// The element at index `segments[0]`, written as `list` writes it (no sign, no leading zero).
fn list_at<'a, T: Inspect + 'a>(
    mut items: impl Iterator<Item = &'a T>,
    segments: &[&str],
) -> Option<Node> {
    let Some((first, rest)) = segments.split_first() else {
        return Some(list(items));
    };
    let index: usize = first.parse().ok()?;
    if index.to_string() != *first {
        return None;
    }
    items.nth(index)?.inspect_at(rest)
}

impl<T: Inspect> Inspect for [T] {
    fn inspect(&self) -> Node {
        list(self.iter())
    }

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        list_at(self.iter(), segments)
    }
}

impl<T: Inspect, const N: usize> Inspect for [T; N] {
    fn inspect(&self) -> Node {
        list(self.iter())
    }

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        list_at(self.iter(), segments)
    }
}

impl<T: Inspect> Inspect for Vec<T> {
    fn inspect(&self) -> Node {
        list(self.iter())
    }

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        list_at(self.iter(), segments)
    }
}

impl<T: Inspect> Inspect for VecDeque<T> {
    fn inspect(&self) -> Node {
        list(self.iter())
    }

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        list_at(self.iter(), segments)
    }
}

impl<T: Inspect> Inspect for BTreeSet<T> {
    fn inspect(&self) -> Node {
        list(self.iter())
    }
}

/// In the elements' order, like a `BTreeSet`.
impl<T: Inspect + Ord, S> Inspect for HashSet<T, S> {
    fn inspect(&self) -> Node {
        let mut items: Vec<&T> = self.iter().collect();
        items.sort();
        list(items.into_iter())
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

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        let Some((first, rest)) = segments.split_first() else {
            return Some(self.inspect());
        };
        // The first key of that name, as a query of the whole tree finds.
        let (_, v) = self.iter().find(|(k, _)| k.to_string() == *first)?;
        v.inspect_at(rest)
    }
}

/// Keys whose text is an integer come first in numeric order, then the others in text order.
impl<K: Display, V: Inspect, S> Inspect for HashMap<K, V, S> {
    fn inspect(&self) -> Node {
        let mut children: Vec<(String, Node)> = self
            .iter()
            .map(|(k, v)| (k.to_string(), v.inspect()))
            .collect();
        // A total order (numbers, then text), so the sort is well defined for any keys.
        children.sort_by_cached_key(|(k, _)| match k.parse::<i128>() {
            Ok(n) => (false, n, String::new()),
            Err(_) => (true, 0, k.clone()),
        });
        Node::Dir(children)
    }

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        let Some((first, rest)) = segments.split_first() else {
            return Some(self.inspect());
        };
        let mut found = self.iter().filter(|(k, _)| k.to_string() == *first);
        match (found.next(), found.next()) {
            (Some((_, v)), None) => v.inspect_at(rest),
            // Two keys print alike: which one the tree shows first is up to the sort.
            (Some(_), Some(_)) => descend(self.inspect(), segments),
            (None, _) => None,
        }
    }
}

impl<T: Inspect + ?Sized> Inspect for &T {
    fn inspect(&self) -> Node {
        (**self).inspect()
    }

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        (**self).inspect_at(segments)
    }
}

impl<T: Inspect + ?Sized> Inspect for &mut T {
    fn inspect(&self) -> Node {
        (**self).inspect()
    }

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        (**self).inspect_at(segments)
    }
}

impl<T: Inspect + ?Sized> Inspect for Box<T> {
    fn inspect(&self) -> Node {
        (**self).inspect()
    }

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        (**self).inspect_at(segments)
    }
}

impl<T: Inspect + ?Sized> Inspect for Rc<T> {
    fn inspect(&self) -> Node {
        (**self).inspect()
    }

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        (**self).inspect_at(segments)
    }
}

impl<T: Inspect + ?Sized> Inspect for Arc<T> {
    fn inspect(&self) -> Node {
        (**self).inspect()
    }

    fn inspect_at(&self, segments: &[&str]) -> Option<Node> {
        (**self).inspect_at(segments)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Inspect, Node};
    use serde_json::json;
    use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::time::Duration;

    fn j(v: &(impl Inspect + ?Sized)) -> serde_json::Value {
        v.inspect().to_json()
    }

    /// Integers keep their full range; signed ones stay signed.
    #[test]
    fn integers() {
        assert_eq!(j(&u64::MAX), json!(u64::MAX));
        assert_eq!(j(&i64::MIN), json!(i64::MIN));
        assert_eq!(j(&usize::MAX), json!(usize::MAX));
        assert_eq!(j(&-1i8), json!(-1));
        assert_eq!(j(&std::num::NonZeroU16::MIN), json!(1));
        assert_eq!(j(&AtomicU64::new(9)), json!(9));
        assert_eq!(j(&AtomicBool::new(true)), json!(true));
        assert_eq!(
            i64::MIN.inspect().hex().to_json(),
            json!("-0x8000000000000000")
        );
    }

    /// Strings, chars, durations, unit and options.
    #[test]
    fn scalars() {
        assert_eq!(j("a"), json!("a"));
        assert_eq!(j(&String::from("b")), json!("b"));
        assert_eq!(j(&std::borrow::Cow::Borrowed("c")), json!("c"));
        assert_eq!(j(&'d'), json!("d"));
        assert_eq!(j(&Duration::from_millis(1500)), json!("1.5s"));
        assert_eq!(j(&()), json!(null));
        assert_eq!(j(&Some(3u8)), json!(3));
        assert_eq!(j(&None::<u8>), json!(null));
    }

    /// Sequences are directories `"0"`, `"1"`, ... in order.
    #[test]
    fn sequences() {
        let expected = json!({"0": 1, "1": 2});
        assert_eq!(j(&[1u8, 2]), expected);
        assert_eq!(j(&vec![1u8, 2]), expected);
        assert_eq!(j(&[1u8, 2][..]), expected);
        assert_eq!(j(&VecDeque::from([1u8, 2])), expected);
        assert_eq!(j(&BTreeSet::from([2u8, 1])), expected);
        assert_eq!(j(&HashSet::from([2u8, 1])), expected);
        assert_eq!(j(&Vec::<u8>::new()), json!({}));
    }

    /// Pointers are transparent.
    #[test]
    fn pointers() {
        let x = 5u8;
        assert_eq!(j(&&x), json!(5));
        assert_eq!(j(&Box::new(x)), json!(5));
        assert_eq!(j(&std::rc::Rc::new(x)), json!(5));
        let dynamic: Arc<dyn Inspect> = Arc::new(x);
        assert_eq!(j(&dynamic), json!(5));
        assert_eq!(j(&Node::str("n")), json!("n"));
    }

    /// Maps use the keys' `Display`; a `HashMap` is in a fixed order whatever its hasher.
    #[test]
    fn maps() {
        let b = BTreeMap::from([(2u8, "b"), (1, "a")]);
        assert_eq!(j(&b), json!({"1": "a", "2": "b"}));
        let keys = |n: Node| -> Vec<String> {
            n.children()
                .unwrap()
                .iter()
                .map(|(k, _)| k.clone())
                .collect()
        };
        let h: HashMap<i32, u8> = (-3..12).map(|i| (i, 0)).collect();
        let expected: Vec<String> = (-3..12).map(|i| i.to_string()).collect();
        assert_eq!(keys(h.inspect()), expected);
        let h: HashMap<&str, u8> = ["b", "10", "a", "9", "1a"].map(|k| (k, 0)).into();
        assert_eq!(keys(h.inspect()), ["9", "10", "1a", "a", "b"]);
    }
}
