//! `#[derive(Inspect)]` through the public re-export, every attribute exercised on a
//! realistic nested structure: a bus with functions keyed by slot, counters, enum states and
//! hex ids.

use inspect::{Inspect, Node, Value};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// A PCI slot, shown through its `Display` form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Slot(u8);

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}.0", self.0)
    }
}

#[derive(Debug)]
enum Kind {
    Nic,
}

/// Where a function is: unit variants by name, data variants as a directory.
#[derive(Inspect)]
enum State {
    Announced,
    Ejecting {
        since: Duration,
        #[inspect(hex)]
        txid: u64,
        #[inspect(skip)]
        _waker: (),
    },
    Failed(#[inspect(rename = "reason")] String),
}

#[derive(Inspect)]
struct Counters {
    relayed: u64,
    held: u64,
}

/// A newtype: transparent without being asked.
#[derive(Inspect)]
struct Generation(u32);

/// Asked to be transparent, with hex on its field.
#[derive(Inspect)]
#[inspect(transparent)]
struct InstanceId {
    #[inspect(hex)]
    raw: u64,
}

fn cache_size(c: &BTreeMap<u16, u32>) -> Node {
    c.len().inspect()
}

#[derive(Inspect)]
struct Function {
    #[inspect(display)]
    slot: Slot,
    #[inspect(hex, rename = "vendor")]
    vendor_id: u16,
    #[inspect(hex)]
    #[inspect(rename = "device")]
    device_id: u16,
    state: State,
    #[inspect(debug)]
    kind: Kind,
    #[inspect(with = "cache_size")]
    config: BTreeMap<u16, u32>,
    #[inspect(hex)]
    bars: Option<[u32; 2]>,
    generation: Generation,
}

#[derive(Inspect)]
struct Bus<T> {
    instance: InstanceId,
    functions: BTreeMap<Slot, Function>,
    #[inspect(flatten)]
    counters: Counters,
    extra: T,
    #[inspect(skip)]
    _secret: Vec<u8>,
    r#type: &'static str,
}

/// A tuple struct of two fields names them by index.
#[derive(Inspect)]
struct Pair(u8, bool);

fn function(slot: u8, state: State) -> Function {
    Function {
        slot: Slot(slot),
        vendor_id: 0x1414,
        device_id: 0xb5,
        state,
        kind: Kind::Nic,
        config: BTreeMap::from([(0, 0x00b5_1414), (4, 0)]),
        bars: (slot == 1).then_some([0xfe00_0000, 0]),
        generation: Generation(3),
    }
}

fn bus() -> Bus<Pair> {
    Bus {
        instance: InstanceId { raw: 0xab },
        functions: BTreeMap::from([
            (Slot(1), function(1, State::Announced)),
            (
                Slot(2),
                function(
                    2,
                    State::Ejecting {
                        since: Duration::from_millis(250),
                        txid: 0x1f,
                        _waker: (),
                    },
                ),
            ),
            (Slot(0x10), function(0x10, State::Failed("timeout".into()))),
        ]),
        counters: Counters {
            relayed: 7,
            held: 1,
        },
        extra: Pair(9, true),
        _secret: vec![1, 2, 3],
        r#type: "vpci",
    }
}

/// Every path of the tree, each with a missing child below it, and a few odd ones.
fn paths(node: &Node, prefix: &str, out: &mut Vec<String>) {
    out.push(prefix.to_owned());
    out.push(format!("{prefix}/nope"));
    out.push(format!("{prefix}/0"));
    out.push(format!("{prefix}/state"));
    for (k, n) in node.children().unwrap_or_default() {
        paths(n, &format!("{prefix}/{k}"), out);
    }
}

/// `inspect::query`, which builds only the path, finds what a query of the whole tree finds.
fn check_query_agrees(value: &(impl Inspect + ?Sized)) {
    let tree = value.inspect();
    let mut all = vec![
        "".to_owned(),
        "/".to_owned(),
        "//".to_owned(),
        "01".to_owned(),
    ];
    paths(&tree, "", &mut all);
    for p in &all {
        assert_eq!(
            inspect::query(value, p),
            tree.query(p).cloned(),
            "path {p:?}"
        );
    }
}

/// Every attribute and shape lands in the JSON as documented, in declaration order.
#[test]
fn derive_json() {
    check_query_agrees(&bus());
    let json = bus().inspect().to_json();
    let function = |slot: &str, state, bars| {
        json!({
            "slot": slot, "vendor": "0x1414", "device": "0xb5", "state": state, "kind": "Nic",
            "config": 2, "bars": bars, "generation": 3
        })
    };
    assert_eq!(
        json,
        json!({
            "instance": "0xab",
            "functions": {
                "01.0": function("01.0", json!("Announced"), json!({"0": "0xfe000000", "1": "0x0"})),
                "02.0": function(
                    "02.0",
                    json!({"state": "Ejecting", "since": "250ms", "txid": "0x1f"}),
                    json!(null),
                ),
                "10.0": function("10.0", json!({"state": "Failed", "reason": "timeout"}), json!(null)),
            },
            "relayed": 7,
            "held": 1,
            "extra": {"0": 9, "1": true},
            "type": "vpci",
        })
    );
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["instance", "functions", "relayed", "held", "extra", "type"]
    );
}

/// Paths reach into derived trees; skipped fields are not there; a missing segment is named.
#[test]
fn derive_query() {
    let tree = bus().inspect();
    assert_eq!(
        tree.query("functions/02.0/state/txid").unwrap(),
        &Node::hex_value(0x1f)
    );
    assert_eq!(
        tree.get("/functions/10.0/state/reason"),
        Some(&Node::str("timeout"))
    );
    assert_eq!(
        tree.get("functions/01.0/state").and_then(Node::as_value),
        Some(&Value::Str("Announced".into()))
    );
    assert!(tree.get("_secret").is_none());
    assert!(tree.get("counters").is_none(), "flattened away");
    let err = tree.query("functions/03.0/state").unwrap_err();
    assert_eq!(
        (err.parent.as_str(), err.missing.as_str()),
        ("/functions", "03.0")
    );
}

/// The text rendering of a derived tree, for a CLI.
#[test]
fn derive_text() {
    let tree = bus().inspect();
    assert_eq!(
        tree.query("functions/02.0").unwrap().to_text(),
        "\
slot: 02.0
vendor: 0x1414
device: 0xb5
state:
  state: Ejecting
  since: 250ms
  txid: 0x1f
kind: Nic
config: 2
bars: -
generation: 3
"
    );
}

/// `rename_all`, variant `rename` and `tag` change how enums are named.
#[test]
fn enum_naming() {
    #[derive(Inspect)]
    #[inspect(rename_all = "snake_case", tag = "kind")]
    enum Stage {
        NotStarted,
        #[inspect(rename = "in-flight")]
        Pending,
        TimedOut {
            after_ms: u32,
        },
    }
    for s in [
        Stage::NotStarted,
        Stage::Pending,
        Stage::TimedOut { after_ms: 1 },
    ] {
        check_query_agrees(&s);
    }
    check_query_agrees(&Link::LostAt(1, 2));
    assert_eq!(Stage::NotStarted.inspect().to_json(), json!("not_started"));
    assert_eq!(Stage::Pending.inspect().to_json(), json!("in-flight"));
    assert_eq!(
        Stage::TimedOut { after_ms: 5 }.inspect().to_json(),
        json!({"kind": "timed_out", "after_ms": 5})
    );

    #[derive(Inspect)]
    #[inspect(rename_all = "lowercase")]
    enum Link {
        Up,
        LostAt(#[inspect(hex)] u8, u8),
    }
    assert_eq!(Link::Up.inspect().to_json(), json!("up"));
    assert_eq!(
        Link::LostAt(16, 16).inspect().to_json(),
        json!({"state": "lostat", "0": "0x10", "1": 16})
    );
}

/// Flattening an enum with data merges its tag and fields; flattening a leaf keeps its name.
#[test]
fn flatten_shapes() {
    #[derive(Inspect)]
    struct Outer {
        #[inspect(flatten)]
        state: State,
        #[inspect(flatten)]
        leaf: u8,
        #[inspect(flatten)]
        list: Vec<u8>,
    }
    let o = Outer {
        state: State::Failed("x".into()),
        leaf: 4,
        list: vec![7],
    };
    check_query_agrees(&o);
    assert_eq!(
        o.inspect().to_json(),
        json!({"state": "Failed", "reason": "x", "leaf": 4, "0": 7})
    );
}

/// Generic parameters get an `Inspect` bound; lifetimes and where clauses are kept.
#[test]
fn generics() {
    #[derive(Inspect)]
    struct Holder<'a, T, U: Copy, const N: usize>
    where
        T: Clone,
    {
        borrowed: &'a T,
        array: [U; N],
    }
    #[derive(Inspect)]
    enum Either<L, R> {
        Left(L),
        Right { value: R },
    }
    let x = String::from("s");
    let h = Holder {
        borrowed: &x,
        array: [1u8, 2],
    };
    check_query_agrees(&h);
    check_query_agrees(&Either::<u8, Pair>::Right {
        value: Pair(1, false),
    });
    assert_eq!(
        h.inspect().to_json(),
        json!({"borrowed": "s", "array": {"0": 1, "1": 2}})
    );
    assert_eq!(
        Either::<u8, bool>::Left(1).inspect().to_json(),
        json!({"state": "Left", "0": 1})
    );
    assert_eq!(
        Either::<u8, bool>::Right { value: true }
            .inspect()
            .to_json(),
        json!({"state": "Right", "value": true})
    );
    // Every type parameter is bounded, even one used only by a skipped field.
    #[derive(Inspect)]
    struct Marked<T> {
        id: u8,
        #[inspect(skip)]
        _marker: PhantomData<T>,
    }
    assert_eq!(
        Marked::<u8> {
            id: 1,
            _marker: PhantomData
        }
        .inspect()
        .to_json(),
        json!({"id": 1})
    );
}

/// Unit structs are empty directories; an enum with no variants still derives.
#[test]
fn degenerate_shapes() {
    #[derive(Inspect)]
    struct Unit;
    #[derive(Inspect)]
    #[allow(dead_code)]
    enum Never {}
    #[derive(Inspect)]
    struct Empty {}
    assert_eq!(Unit.inspect(), Node::Dir(vec![]));
    assert_eq!(Empty {}.inspect().to_text(), "");
    fn _never_inspects(n: &Never) -> Node {
        n.inspect()
    }
    #[derive(Inspect)]
    #[inspect(transparent)]
    struct Skipping {
        #[inspect(skip)]
        _cache: Vec<u8>,
        #[inspect(display)]
        slot: Slot,
    }
    let s = Skipping {
        _cache: vec![],
        slot: Slot(3),
    };
    assert_eq!(s.inspect(), Node::str("03.0"));
    check_query_agrees(&s);
    check_query_agrees(&Unit);
}

/// `with` and `hex` combine: the function's node, in hex; `debug` shows the `Debug` form.
#[test]
fn with_and_hex() {
    fn double(v: &u32) -> Node {
        (u64::from(*v) * 2).inspect()
    }
    #[derive(Inspect)]
    struct Regs {
        #[inspect(with = "double", hex)]
        bar: u32,
        #[inspect(debug)]
        pending: Option<u8>,
        #[inspect(with = "double")]
        plain: u32,
    }
    let r = Regs {
        bar: 0x80,
        pending: None,
        plain: 4,
    };
    check_query_agrees(&r);
    assert_eq!(
        r.inspect().to_json(),
        json!({"bar": "0x100", "pending": "None", "plain": 8})
    );
}

/// Two children of one name: both the tree and the direct query find the first.
#[test]
fn duplicate_names_find_the_first() {
    #[derive(Inspect)]
    enum Tagged {
        V {
            #[inspect(rename = "state")]
            shadow: u8,
            a: u8,
            #[inspect(rename = "a")]
            b: u8,
        },
    }
    let t = Tagged::V {
        shadow: 1,
        a: 2,
        b: 3,
    };
    check_query_agrees(&t);
    assert_eq!(inspect::query(&t, "a"), Ok(2u8.inspect()));
    assert_eq!(inspect::query(&t, "state"), Ok(Node::str("V")));
}

/// A direct query builds the node it finds and not its siblings.
#[test]
fn query_builds_only_the_path() {
    use std::cell::Cell;
    struct Counted<'a>(&'a Cell<u32>);
    impl Inspect for Counted<'_> {
        fn inspect(&self) -> Node {
            self.0.set(self.0.get() + 1);
            Node::str("built")
        }
    }
    #[derive(Inspect)]
    struct Function<'a> {
        a: Counted<'a>,
        b: Counted<'a>,
    }
    #[derive(Inspect)]
    struct Bus<'a> {
        functions: BTreeMap<u8, Function<'a>>,
        list: Vec<Option<Box<Counted<'a>>>>,
    }
    let built = Cell::new(0);
    let bus = Bus {
        functions: (0..10)
            .map(|i| {
                (
                    i,
                    Function {
                        a: Counted(&built),
                        b: Counted(&built),
                    },
                )
            })
            .collect(),
        list: (0..10).map(|_| Some(Box::new(Counted(&built)))).collect(),
    };
    assert_eq!(
        inspect::query(&bus, "functions/7/b"),
        Ok(Node::str("built"))
    );
    assert_eq!(inspect::query(&bus, "list/9"), Ok(Node::str("built")));
    assert_eq!(built.get(), 2);
    let _ = bus.inspect();
    assert_eq!(built.get(), 2 + 30);
}
