//! `#[derive(Inspect)]` through the public re-export, every attribute exercised on a
//! realistic nested structure.

use inspect::{Inspect, Node};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Inspect)]
enum State {
    Announced,
    Ejecting { since_ms: u64 },
    Failed(String),
}

#[derive(Clone, Copy)]
struct Slot(u8);

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}.0", self.0)
    }
}

#[derive(Inspect)]
struct Counters {
    relayed: u64,
    held: u64,
}

#[derive(Inspect)]
#[inspect(transparent)]
struct Version(u32);

fn double(v: &u32) -> Node {
    (v * 2).inspect()
}

#[derive(Inspect)]
struct Function {
    #[inspect(display)]
    slot: Slot,
    #[inspect(hex, rename = "vendor")]
    vendor_id: u16,
    state: State,
    #[inspect(debug)]
    kind: Option<u8>,
    #[inspect(with = "double")]
    doubled: u32,
}

#[derive(Inspect)]
struct Bus<T> {
    #[inspect(hex)]
    instance: u32,
    version: Version,
    functions: BTreeMap<u8, Function>,
    #[inspect(flatten)]
    counters: Counters,
    extra: T,
    #[inspect(skip)]
    _secret: Vec<u8>,
}

#[derive(Inspect)]
struct Pair(u8, bool);

fn bus() -> Bus<Pair> {
    Bus {
        instance: 0xab,
        version: Version(0x10004),
        functions: BTreeMap::from([
            (
                1,
                Function {
                    slot: Slot(1),
                    vendor_id: 0x1414,
                    state: State::Announced,
                    kind: Some(3),
                    doubled: 21,
                },
            ),
            (
                2,
                Function {
                    slot: Slot(2),
                    vendor_id: 0x8086,
                    state: State::Ejecting { since_ms: 5 },
                    kind: None,
                    doubled: 1,
                },
            ),
        ]),
        counters: Counters {
            relayed: 7,
            held: 1,
        },
        extra: Pair(9, true),
        _secret: vec![1, 2, 3],
    }
}

/// Every attribute and shape lands in the JSON as documented.
#[test]
fn derive_json() {
    let json = bus().inspect().to_json();
    assert_eq!(
        json,
        serde_json::json!({
            "instance": "0xab",
            "version": 65540,
            "functions": {
                "1": {"slot": "01.0", "vendor": "0x1414", "state": "Announced", "kind": "Some(3)", "doubled": 42},
                "2": {"slot": "02.0", "vendor": "0x8086", "state": {"state": "Ejecting", "since_ms": 5}, "kind": "None", "doubled": 2}
            },
            "relayed": 7,
            "held": 1,
            "extra": {"0": 9, "1": true}
        })
    );
}

/// Paths reach into derived trees; tuple variants name their fields by index.
#[test]
fn derive_query() {
    let tree = bus().inspect();
    assert_eq!(
        tree.query("functions/2/state/since_ms").unwrap().to_json(),
        5
    );
    assert!(tree.query("_secret").is_err());
    let failed = State::Failed("boom".into()).inspect();
    assert_eq!(failed.query("0").unwrap().to_json(), "boom");
    assert_eq!(failed.query("state").unwrap().to_json(), "Failed");
}

/// The text rendering of a derived tree.
#[test]
fn derive_text() {
    let text = Counters {
        relayed: 1,
        held: 2,
    }
    .inspect()
    .to_text();
    assert_eq!(text, "relayed: 1\nheld: 2\n");
}
