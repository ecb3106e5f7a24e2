//! `petri ring dump` on ring images built by hand from the spec's offsets: control page
//! (write_index @0, read_index @4, ...), then the data area; each packet a 16-byte descriptor,
//! the payload padded to 8, and an 8-byte trailer with the start offset in its upper half.

use std::process::{Command, Output};

const CONTROL: usize = 4096;

struct Image {
    bytes: Vec<u8>,
    data_size: usize,
    write: usize,
}

impl Image {
    fn new(data_size: usize, read_index: usize) -> Self {
        let mut bytes = vec![0u8; CONTROL + data_size];
        bytes[4..8].copy_from_slice(&(read_index as u32).to_le_bytes());
        let mut image = Self {
            bytes,
            data_size,
            write: read_index,
        };
        image.set_write_index(read_index);
        image
    }

    fn set_write_index(&mut self, v: usize) {
        self.bytes[0..4].copy_from_slice(&(v as u32).to_le_bytes());
    }

    fn put(&mut self, at: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let pos = (at + i) % self.data_size;
            self.bytes[CONTROL + pos] = *b;
        }
    }

    /// Appends one packet of `ty` with `payload` (padded) and its trailer.
    fn packet(&mut self, ty: u16, flags: u16, txid: u64, payload: &[u8]) -> &mut Self {
        let padded = payload.len().div_ceil(8) * 8;
        let len8 = ((16 + padded) / 8) as u16;
        let start = self.write;
        let mut p = Vec::new();
        p.extend_from_slice(&ty.to_le_bytes());
        p.extend_from_slice(&2u16.to_le_bytes()); // offset8
        p.extend_from_slice(&len8.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&txid.to_le_bytes());
        p.extend_from_slice(payload);
        p.resize(16 + padded, 0);
        p.extend_from_slice(&((start as u64) << 32).to_le_bytes());
        self.put(start, &p);
        self.write = (start + p.len()) % self.data_size;
        self.set_write_index(self.write);
        self
    }

    fn dump(&self, extra: &[&str]) -> Output {
        let dir = std::env::temp_dir().join(format!(
            "petri-ring-{}-{:x}",
            std::process::id(),
            self.bytes
                .iter()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)))
        ));
        std::fs::write(&dir, &self.bytes).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_petri"))
            .args(["ring", "dump"])
            .args(extra)
            .arg(&dir)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&dir);
        out
    }
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

const EJECT_SLOT_3: [u8; 8] = [0x0b, 0, 0x49, 0x42, 3, 0, 0, 0];

/// An EJECT and a completion, in order, with their descriptor fields and vPCI decode.
#[test]
fn packets_in_order() {
    let mut img = Image::new(4096, 0);
    img.packet(6, 0, 0, &EJECT_SLOT_3)
        .packet(11, 0, 42, &[0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd]);
    let out = img.dump(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = lines(&out);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["type"], "DATA_INBAND");
    assert_eq!(v[0]["payload_len"], 8);
    assert_eq!(v[0]["vpci"]["type"], "PCI_EJECT");
    assert_eq!(v[0]["vpci"]["wslot"], 3);
    assert_eq!(v[1]["type"], "COMP");
    assert_eq!(v[1]["transaction_id"], 42);
    assert_eq!(v[1]["offset"], 32);
    assert_eq!(v[1]["status"], 0);
}

/// A packet that wraps around the end of the data area is reassembled.
#[test]
fn wrapped_packet() {
    let mut img = Image::new(4096, 4096 - 24);
    // QUERY_PROTOCOL_VERSION from the guest: descriptor 16 + payload 8 + trailer 8 = 32 bytes
    // starting 24 bytes before the end, so the payload's last bytes and the trailer wrap.
    img.packet(6, 1, 7, &[0x13, 0, 0x49, 0x42, 4, 0, 1, 0]);
    let out = img.dump(&["--from", "guest"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = lines(&out);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["completion_requested"], true);
    assert_eq!(v[0]["vpci"]["type"], "PCI_QUERY_PROTOCOL_VERSION");
    assert_eq!(v[0]["vpci"]["protocol_version"], "1.4");
}

/// A payload that is not valid vPCI is printed with its error and the dump goes on.
#[test]
fn bad_vpci_payload_continues() {
    let mut img = Image::new(4096, 0);
    img.packet(6, 0, 0, &[0xff, 0xff, 0xff, 0xff])
        .packet(6, 0, 0, &EJECT_SLOT_3);
    let out = img.dump(&[]);
    assert!(out.status.success());
    let v = lines(&out);
    assert_eq!(v.len(), 2);
    assert!(
        v[0]["vpci_error"]
            .as_str()
            .unwrap()
            .contains("unknown message type")
    );
    assert_eq!(v[1]["vpci"]["type"], "PCI_EJECT");
}

fn corrupt(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(!err.contains("panicked"));
}

/// A misaligned write index is refused with the field's offset.
#[test]
fn bad_write_index() {
    let mut img = Image::new(4096, 0);
    img.set_write_index(13);
    corrupt(&img.dump(&[]), "file offset 0x0");
}

/// A packet longer than what the writer published is refused at its offset, after the good
/// packets before it are printed.
#[test]
fn bad_descriptor_after_good_packet() {
    let mut img = Image::new(4096, 0);
    img.packet(6, 0, 0, &EJECT_SLOT_3);
    let bad_at = img.write;
    img.packet(6, 0, 0, &EJECT_SLOT_3);
    // Claim a length far beyond the published bytes.
    img.put(bad_at + 4, &200u16.to_le_bytes());
    let out = img.dump(&[]);
    assert_eq!(lines(&out).len(), 1);
    corrupt(&out, &format!("file offset {:#x}", 4096 + bad_at));
}

/// A trailer that does not name its packet's start is refused.
#[test]
fn bad_trailer() {
    let mut img = Image::new(4096, 0);
    img.packet(6, 0, 0, &EJECT_SLOT_3);
    img.put(24, &[0xff; 8]);
    corrupt(&img.dump(&[]), "trailer");
}

/// An image that is not a control page plus whole data pages is refused.
#[test]
fn bad_size() {
    let img = Image {
        bytes: vec![0; 5000],
        data_size: 904,
        write: 0,
    };
    corrupt(&img.dump(&[]), "region");
}
