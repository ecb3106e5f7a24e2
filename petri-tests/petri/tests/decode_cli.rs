//! `petri decode` as a user runs it: JSON on stdout, or one error line and exit code 2.

mod cli;

use cli::petri;

use std::process::Output;

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn fails_with(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(!err.contains("panicked"));
}

/// BUS_RELATIONS2 with two functions: the message id and the vendor ids in hex, slots as
/// numbers.
#[test]
fn bus_relations2_two_functions() {
    let hex = "19 00 49 42 02 00 00 00 \
               14 14 11 b1 01 00 02 01 00 00 00 00 01 00 00 00 05 00 00 00 01 00 00 00 02 00 00 00 \
               86 80 22 22 00 00 02 01 00 00 00 00 22 00 00 00 06 00 00 00 00 00 00 00 00 00 00 00";
    let v = json(&petri(&["decode", hex]));
    assert_eq!(v["type"], "PCI_BUS_RELATIONS2");
    assert_eq!(v["device_count"], 2);
    let d = &v["description"];
    assert_eq!(v["type_id"], "0x42490019");
    assert_eq!(d[0]["v_id"], "0x1414");
    assert_eq!(d[1]["v_id"], "0x8086");
    assert_eq!(d[0]["d_id"], "0xb111");
    assert_eq!(d[0]["wslot"], 1);
    assert_eq!(d[1]["wslot"], 0x22);
    assert_eq!(d[0]["virtual_numa_node"], 2);
}

/// Hex may come as several arguments and with 0x; the sender and version flags apply.
#[test]
fn guest_message_with_flags() {
    let v = json(&petri(&[
        "decode",
        "--from",
        "guest",
        "--version",
        "1.1",
        "0x13004942",
        "01000100",
    ]));
    assert_eq!(v["type"], "PCI_QUERY_PROTOCOL_VERSION");
    assert_eq!(
        v["protocol_version"], "1.1",
        "versions read as 1.1, not 65537"
    );
}

/// --completion-of decodes a completion of the named request.
#[test]
fn completion_of() {
    let v = json(&petri(&[
        "decode",
        "--completion-of",
        "PCI_CREATE_INTERRUPT_MESSAGE2",
        "00000000 00000000 0000 0100 41400000 0010e0fe00000000",
    ]));
    assert_eq!(v["type"], "COMPLETION");
    assert_eq!(v["completion_of"], "PCI_CREATE_INTERRUPT_MESSAGE2");
    assert_eq!(v["status"], 0);
    assert_eq!(v["status_name"], "SUCCESS");
    assert_eq!(v["int_desc"]["data"], 0x4041);
    assert_eq!(v["int_desc"]["address"], 0xfee0_1000u64);
}

/// Truncated input exits 2 naming the offset.
#[test]
fn truncated() {
    fails_with(&petri(&["decode", "19 00 49"]), "offset 0");
    fails_with(
        &petri(&["decode", "--from", "guest", "14 00 49 42 00 00"]),
        "offset 4",
    );
}

/// A count larger than the packet exits 2 naming the count's offset.
#[test]
fn oversized_count() {
    fails_with(
        &petri(&["decode", "19 00 49 42 ff 00 00 00 14 14"]),
        "device_count 255 at offset 4",
    );
}

/// An unknown message type exits 2.
#[test]
fn unknown_type() {
    fails_with(
        &petri(&["decode", "ff 00 49 42"]),
        "unknown message type 0x424900ff",
    );
}

/// Bad hex, a wrong sender, an unknown completion type: exit 2, one line.
#[test]
fn other_bad_input() {
    fails_with(&petri(&["decode", "0b 00 49 4z"]), "offset 3");
    fails_with(
        &petri(&["decode", "--from", "guest", "0b 00 49 42 00 00 00 00"]),
        "guest",
    );
    fails_with(
        &petri(&["decode", "--completion-of", "PCI_NOPE", "00000000"]),
        "PCI_NOPE",
    );
    let out = petri(&["decode", "--version", "1.9", "00"]);
    assert_eq!(out.status.code(), Some(2));
}
