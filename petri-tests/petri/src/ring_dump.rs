//! `petri ring dump`: every unread packet of a captured ring image, as a reader in a
//! confidential VM would see it (same validation, same refusals).

use serde_json::{Value, json};
use shared_mem::{HeapMem, SharedMem};
use vmbus_ring::{PacketInfo, RingError, RingReader, packet_type};
use vpci_protocol::{ProtocolVersion, Sender};

/// The largest image `petri ring dump` reads (a 4 KiB control page and a data area of up to
/// 256 MiB; Linux's vPCI rings are 16 KiB).
pub const MAX_IMAGE: usize = 4096 + (256 << 20);

/// Why a ring image could not be dumped to the end.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The image is larger than `MAX_IMAGE`.
    #[error("image is {len} bytes, more than the {max} this tool reads")]
    TooLarge {
        /// The image's length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The ring breaks the rules a hardened reader enforces.
    #[error("corrupt ring at file offset {file_offset:#x}: {error}")]
    Ring {
        /// Where in the file (control page included) the problem is.
        file_offset: usize,
        /// The reader's typed error.
        error: RingError,
    },
}

/// The file offset a ring error points at: data-area offsets are shifted past the control
/// page; control-page errors point at the field.
fn file_offset(error: &RingError) -> usize {
    const DATA: usize = vmbus_ring::CONTROL_PAGE_SIZE;
    match *error {
        RingError::InvalidWriteIndex { .. } => vmbus_ring::WRITE_INDEX_OFFSET,
        RingError::InvalidReadIndex { .. } => vmbus_ring::READ_INDEX_OFFSET,
        RingError::TruncatedPacket { offset, .. }
        | RingError::BadPacket { offset, .. }
        | RingError::BadTrailer { offset, .. }
        | RingError::PacketTooLarge { offset, .. } => DATA + offset as usize,
        RingError::RegionSize { .. } | RingError::Memory(_) => 0,
    }
}

fn type_name(ty: u16) -> Option<&'static str> {
    use packet_type as t;
    Some(match ty {
        t::DATA_INBAND => "DATA_INBAND",
        t::COMP => "COMP",
        t::DATA_USING_GPA_DIRECT => "DATA_USING_GPA_DIRECT",
        t::SYNCH => "SYNCH",
        t::ADD_XFER_PAGESET => "ADD_XFER_PAGESET",
        t::RM_XFER_PAGESET => "RM_XFER_PAGESET",
        t::ESTABLISH_GPADL => "ESTABLISH_GPADL",
        t::TEARDOWN_GPADL => "TEARDOWN_GPADL",
        t::DATA_USING_XFER_PAGES => "DATA_USING_XFER_PAGES",
        t::DATA_USING_GPADL => "DATA_USING_GPADL",
        t::CANCEL_REQUEST => "CANCEL_REQUEST",
        t::DATA_USING_ADDITIONAL_PKT => "DATA_USING_ADDITIONAL_PKT",
        t::ADDITIONAL_DATA => "ADDITIONAL_DATA",
        _ => return None,
    })
}

fn packet_json(info: &PacketInfo, buf: &[u8], version: ProtocolVersion, from: Sender) -> Value {
    let meta = info.header.meta;
    let payload = info.payload(buf);
    let mut obj = json!({
        "offset": info.offset,
        "type": type_name(meta.packet_type).unwrap_or("UNKNOWN"),
        "type_id": meta.packet_type,
        "flags": meta.flags,
        "completion_requested": info.header.completion_requested(),
        "transaction_id": meta.transaction_id,
        "payload_len": payload.len(),
    });
    let extra = match meta.packet_type {
        packet_type::DATA_INBAND => match vpci_protocol::decode(payload, from, version) {
            Ok(message) => {
                let mut value = serde_json::to_value(message).unwrap_or(Value::Null);
                crate::decode::humanize(&mut value);
                ("vpci", value)
            }
            Err(e) => ("vpci_error", Value::String(e.to_string())),
        },
        packet_type::COMP => {
            // A completion names no type; its request lives in the other ring. Show the status.
            let status = payload
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes);
            ("status", status.map_or(Value::Null, Value::from))
        }
        _ => ("vpci_error", Value::String("not a vPCI packet type".into())),
    };
    if let Value::Object(map) = &mut obj {
        map.insert(extra.0.into(), extra.1);
        map.insert("payload".into(), Value::String(hex(payload)));
    }
    obj
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Dumps the unread packets of `image`, calling `emit` with one JSON object per packet, in
/// ring order. Stops at the first ring error (after emitting every packet before it).
pub fn dump_image(
    image: &[u8],
    version: ProtocolVersion,
    from: Sender,
    mut emit: impl FnMut(Value),
) -> Result<usize, DumpError> {
    let ring_error = |error: RingError| DumpError::Ring {
        file_offset: file_offset(&error),
        error,
    };
    let mem = HeapMem::new(image.len());
    mem.write_at(0, image)
        .map_err(|e| ring_error(RingError::Memory(e)))?;
    let mut reader = RingReader::new(mem).map_err(ring_error)?;
    let mut buf = vec![0u8; reader.max_packet_len()];
    let mut count = 0;
    while let Some(info) = reader.peek(&mut buf).map_err(ring_error)? {
        emit(packet_json(&info, &buf, version, from));
        reader.consume();
        count += 1;
    }
    Ok(count)
}

/// Reads the image at `path` (bounded by [`MAX_IMAGE`]) and dumps it.
pub fn dump_file(
    path: &str,
    version: ProtocolVersion,
    from: Sender,
    emit: impl FnMut(Value),
) -> Result<usize, DumpError> {
    use std::io::Read;
    let io = |source| DumpError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > MAX_IMAGE as u64 {
        return Err(DumpError::TooLarge {
            len,
            max: MAX_IMAGE,
        });
    }
    let mut image = Vec::with_capacity(len as usize);
    file.take(MAX_IMAGE as u64 + 1)
        .read_to_end(&mut image)
        .map_err(io)?;
    dump_image(&image, version, from, emit)
}

/// Why a ring image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The packets need a larger ring than a VMBus ring can be.
    #[error("{needed} bytes of packets do not fit a VMBus ring")]
    TooLarge {
        /// The bytes the packets take, framed.
        needed: usize,
    },
    /// The ring refused a packet.
    #[error("writing packet {index}: {error}")]
    Write {
        /// Which packet.
        index: usize,
        /// Why.
        error: String,
    },
}

/// A ring image (a 4 KiB control page, then the data area) holding `packets` in order, all
/// unread (the read index at the first): what `petri ring dump` reads back. The data area is
/// the smallest whole number of pages (16 KiB at least, Linux's vPCI ring size) with room
/// for every packet and its trailer.
pub fn ring_image(packets: &[vmbus_channel::Packet]) -> Result<Vec<u8>, ImageError> {
    const PAGE: usize = 4096;
    let needed = packets
        .iter()
        .map(|p| vmbus_ring::framed_len(p.payload.len()).map(|l| l + 8))
        .try_fold(0usize, |sum, l| l.and_then(|l| sum.checked_add(l)))
        .ok_or(ImageError::TooLarge { needed: usize::MAX })?;
    // One byte more than the packets: a full ring reads as empty.
    let data = (needed + 8).div_ceil(PAGE).max(4) * PAGE;
    if data > MAX_IMAGE - PAGE {
        return Err(ImageError::TooLarge { needed });
    }
    let mem = HeapMem::new(vmbus_ring::CONTROL_PAGE_SIZE + data);
    let write_error = |index: usize, error: String| ImageError::Write { index, error };
    let ring = vmbus_ring::Ring::new(mem).map_err(|e| write_error(0, e.to_string()))?;
    ring.initialize()
        .map_err(|e| write_error(0, e.to_string()))?;
    let mut writer =
        vmbus_ring::RingWriter::from_ring(ring).map_err(|e| write_error(0, e.to_string()))?;
    for (index, p) in packets.iter().enumerate() {
        let meta = vmbus_ring::PacketMeta {
            packet_type: p.kind.to_raw(),
            flags: p.flags.0,
            transaction_id: p.transaction_id,
        };
        // Whether the reader would need signalling does not matter for an image.
        let _signal = writer
            .write_packet(&meta, &p.payload)
            .map_err(|e| write_error(index, e.to_string()))?;
    }
    let mem = writer.ring().mem();
    let mut image = vec![0u8; mem.len()];
    mem.read_at(0, &mut image)
        .map_err(|e| write_error(packets.len(), e.to_string()))?;
    Ok(image)
}

#[cfg(test)]
mod image_tests {
    use super::*;
    use vmbus_channel::{Packet, PacketFlags, PacketKind};

    /// An image built from packets reads back as those packets, in order, with their types,
    /// flags, transaction ids and payloads; none is an empty ring.
    #[test]
    fn image_reads_back() {
        let packets = vec![
            Packet {
                kind: PacketKind::InBand,
                flags: PacketFlags::COMPLETION_REQUESTED,
                transaction_id: 7,
                payload: 0x4207_0001u32.to_le_bytes().to_vec(),
            },
            Packet {
                kind: PacketKind::Completion,
                flags: PacketFlags::NONE,
                transaction_id: 7,
                payload: vec![0; 8],
            },
        ];
        let image = ring_image(&packets).unwrap();
        assert_eq!(image.len(), 4096 + 16384);
        let mut seen = Vec::new();
        let n = dump_image(&image, ProtocolVersion::V1_4, Sender::Guest, |v| {
            seen.push(v)
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(seen[0]["type"], "DATA_INBAND");
        assert_eq!(seen[0]["transaction_id"], 7);
        assert_eq!(seen[0]["completion_requested"], true);
        assert_eq!(seen[1]["type"], "COMP");
        let empty = ring_image(&[]).unwrap();
        assert_eq!(
            dump_image(&empty, ProtocolVersion::V1_4, Sender::Host, |_| {}).unwrap(),
            0
        );
    }
}
