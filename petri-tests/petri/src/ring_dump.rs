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
