//! The shared region of a ring-backed channel: one channel page, then one ring per direction.
//!
//! ```text
//! offset 0                      channel page (4 KiB): header and one end word per side
//! offset 4096                   ring 0: written by side 0 (the creator), read by side 1
//! offset 4096 + R               ring 1: written by side 1 (the opener), read by side 0
//! (R = 4096 + ring_size: each ring is its control page then its data area)
//! ```
//!
//! The channel page is this crate's own; the rings' pages belong to `vmbus_ring`. The header
//! is written once by the creator and read once, and validated, by the opener: after that
//! neither side trusts it again. Each side writes only its own end word.

use crate::channel::EndReason;
use crate::packet::PacketLimits;
use shared_mem::{MemError, SharedMem};
use thiserror::Error;

/// The page size the layout is built from.
pub(crate) const PAGE: usize = 4096;
/// `"VMBCHAN"` and a format byte.
const MAGIC: u64 = u64::from_le_bytes(*b"VMBCHAN\x01");
const VERSION: u32 = 1;
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_RING_SIZE: usize = 12;
const OFF_MAX_PAYLOAD: usize = 16;
/// The end words sit on separate cache lines.
const OFF_END: [usize; 2] = [64, 128];

const END_OPEN: u32 = 0;
const END_CLOSED: u32 = 1;
const END_REVOKED: u32 = 2;

/// The largest data area per direction the opener accepts.
pub(crate) const MAX_RING_SIZE: usize = 64 * 1024 * 1024;
/// Descriptor (16 bytes) plus trailer (8 bytes) around every payload in a ring.
pub(crate) const PACKET_OVERHEAD: usize = 24;

/// Configuration of a ring-backed channel, chosen by the creating side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingChannelConfig {
    /// The data area of each ring in bytes: a multiple of 4096, at most 64 MiB, and larger
    /// than the biggest packet the limits allow.
    pub ring_size: usize,
    /// Packet limits, enforced on send and receive.
    pub limits: PacketLimits,
}

impl Default for RingChannelConfig {
    fn default() -> Self {
        Self {
            ring_size: 64 * 1024,
            limits: PacketLimits::default(),
        }
    }
}

/// Why a ring channel could not be set up.
#[derive(Debug, Error)]
pub enum SetupError {
    /// The configuration (ours, or the one the creator wrote) is unusable.
    #[error("bad ring channel configuration: {0}")]
    BadConfig(String),
    /// The shared region received does not hold a channel of the expected format.
    #[error("shared region is not a ring channel: {0}")]
    BadRegion(String),
    /// The received message did not carry the expected descriptors.
    #[error("expected {expected} descriptors, received {received}")]
    BadDescriptors {
        /// How many the format needs.
        expected: usize,
        /// How many arrived.
        received: usize,
    },
    /// The shared memory could not be created or mapped.
    #[error("shared memory")]
    Memory(#[from] shared_mem::MemfdError),
    /// The ring layer refused the memory.
    #[error("ring setup: {0}")]
    Ring(String),
    /// An access to the shared region failed.
    #[error("shared memory access")]
    Access(#[from] MemError),
    /// An operating-system call failed.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

impl RingChannelConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), SetupError> {
        let Self { ring_size, limits } = *self;
        if ring_size == 0 || ring_size % PAGE != 0 || ring_size > MAX_RING_SIZE {
            return Err(SetupError::BadConfig(format!(
                "ring size {ring_size:#x} is not a non-zero multiple of 4096 up to 64 MiB"
            )));
        }
        PacketLimits::new(limits.max_payload)
            .map_err(|err| SetupError::BadConfig(err.to_string()))?;
        // A writer needs strictly more free bytes than it writes.
        if limits.max_payload + PACKET_OVERHEAD >= ring_size {
            return Err(SetupError::BadConfig(format!(
                "a {}-byte payload does not fit a ring of {ring_size} bytes",
                limits.max_payload
            )));
        }
        Ok(())
    }

    /// The size of one ring: control page and data area.
    pub(crate) fn ring_region_len(&self) -> usize {
        PAGE + self.ring_size
    }

    /// The size of the whole shared region.
    pub(crate) fn region_len(&self) -> usize {
        PAGE + 2 * self.ring_region_len()
    }

    /// The offset of the ring written by `side`.
    pub(crate) fn ring_offset(&self, side: usize) -> usize {
        PAGE + side * self.ring_region_len()
    }
}

/// A window onto part of a shared region, itself a [`SharedMem`].
#[derive(Debug, Clone)]
pub(crate) struct Window<M> {
    mem: M,
    offset: usize,
    len: usize,
}

impl<M: SharedMem> Window<M> {
    /// The window of `len` bytes at `offset`; `None` if it does not fit.
    pub(crate) fn new(mem: M, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        (end <= mem.len()).then_some(Self { mem, offset, len })
    }

    /// The whole region the window looks onto.
    pub(crate) fn region(&self) -> &M {
        &self.mem
    }

    fn at(&self, offset: usize, len: usize) -> Result<usize, MemError> {
        let out_of_bounds = MemError::OutOfBounds {
            offset,
            len,
            region_len: self.len,
        };
        let end = offset.checked_add(len).ok_or(out_of_bounds)?;
        if end > self.len {
            return Err(out_of_bounds);
        }
        // `offset + self.offset <= self.len + self.offset <= mem.len()`: no overflow.
        Ok(self.offset + offset)
    }
}

impl<M: SharedMem> SharedMem for Window<M> {
    fn len(&self) -> usize {
        self.len
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        self.mem.read_at(self.at(offset, buf.len())?, buf)
    }

    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        self.mem.write_at(self.at(offset, data.len())?, data)
    }

    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.mem.load_u32(self.at(offset, 4)?)
    }

    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.mem.store_u32(self.at(offset, 4)?, value)
    }

    fn load_u64(&self, offset: usize) -> Result<u64, MemError> {
        self.mem.load_u64(self.at(offset, 8)?)
    }

    fn store_u64(&self, offset: usize, value: u64) -> Result<(), MemError> {
        self.mem.store_u64(self.at(offset, 8)?, value)
    }

    fn read_words(&self, offset: usize, buf: &mut [u64]) -> Result<(), MemError> {
        let len = buf.len().saturating_mul(8);
        self.mem.read_words(self.at(offset, len)?, buf)
    }

    fn write_words(&self, offset: usize, data: &[u64]) -> Result<(), MemError> {
        let len = data.len().saturating_mul(8);
        self.mem.write_words(self.at(offset, len)?, data)
    }
}

/// Writes the channel page header (creator side).
pub(crate) fn write_header(
    mem: &impl SharedMem,
    config: &RingChannelConfig,
) -> Result<(), SetupError> {
    let too_big = |what: &str| SetupError::BadConfig(format!("{what} does not fit in 32 bits"));
    let ring_size = u32::try_from(config.ring_size).map_err(|_| too_big("ring size"))?;
    let max_payload =
        u32::try_from(config.limits.max_payload).map_err(|_| too_big("payload limit"))?;
    mem.store_u32(OFF_VERSION, VERSION)?;
    mem.store_u32(OFF_RING_SIZE, ring_size)?;
    mem.store_u32(OFF_MAX_PAYLOAD, max_payload)?;
    for off in OFF_END {
        mem.store_u32(off, END_OPEN)?;
    }
    // The magic last: a reader that sees it sees the rest.
    mem.store_u64(OFF_MAGIC, MAGIC)?;
    Ok(())
}

/// Reads and validates the channel page header (opener side) of a region of `region_len`
/// bytes. Every value is read once.
pub(crate) fn read_header(
    mem: &impl SharedMem,
    region_len: usize,
) -> Result<RingChannelConfig, SetupError> {
    let magic = mem.load_u64(OFF_MAGIC)?;
    if magic != MAGIC {
        return Err(SetupError::BadRegion(format!("magic {magic:#x}")));
    }
    let version = mem.load_u32(OFF_VERSION)?;
    if version != VERSION {
        return Err(SetupError::BadRegion(format!("version {version}")));
    }
    let ring_size = mem.load_u32(OFF_RING_SIZE)? as usize;
    let max_payload = mem.load_u32(OFF_MAX_PAYLOAD)? as usize;
    let limits =
        PacketLimits::new(max_payload).map_err(|err| SetupError::BadConfig(err.to_string()))?;
    let config = RingChannelConfig { ring_size, limits };
    config.validate()?;
    if region_len != config.region_len() {
        return Err(SetupError::BadRegion(format!(
            "region of {region_len} bytes, the header implies {}",
            config.region_len()
        )));
    }
    Ok(config)
}

/// Reads the end word of `side`. A value the peer should never write counts as closed.
pub(crate) fn load_end(mem: &impl SharedMem, side: usize) -> Result<Option<EndReason>, MemError> {
    Ok(match mem.load_u32(OFF_END[side])? {
        END_OPEN => None,
        END_REVOKED => Some(EndReason::Revoked),
        _ => Some(EndReason::Closed),
    })
}

/// Writes the end word of `side`.
pub(crate) fn store_end(
    mem: &impl SharedMem,
    side: usize,
    reason: EndReason,
) -> Result<(), MemError> {
    let value = match reason {
        EndReason::Closed => END_CLOSED,
        EndReason::Revoked => END_REVOKED,
    };
    mem.store_u32(OFF_END[side], value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mem::HeapMem;

    /// A header written by the creator reads back as the same configuration.
    #[test]
    fn header_round_trips() {
        let config = RingChannelConfig::default();
        let mem = HeapMem::new(config.region_len());
        write_header(&mem, &config).unwrap();
        assert_eq!(read_header(&mem, mem.len()).unwrap(), config);
        assert_eq!(load_end(&mem, 0).unwrap(), None);
        store_end(&mem, 1, EndReason::Revoked).unwrap();
        assert_eq!(load_end(&mem, 1).unwrap(), Some(EndReason::Revoked));
        mem.store_u32(OFF_END[0], 77).unwrap();
        assert_eq!(load_end(&mem, 0).unwrap(), Some(EndReason::Closed));
    }

    /// Hostile headers are refused: bad magic, sizes, limits, or a region of the wrong length.
    #[test]
    fn bad_headers_are_refused() {
        let config = RingChannelConfig::default();
        let fresh = || {
            let mem = HeapMem::new(config.region_len());
            write_header(&mem, &config).unwrap();
            mem
        };
        let mem = fresh();
        mem.store_u64(OFF_MAGIC, 0).unwrap();
        assert!(matches!(
            read_header(&mem, mem.len()),
            Err(SetupError::BadRegion(_))
        ));
        let mem = fresh();
        mem.store_u32(OFF_RING_SIZE, 4095).unwrap();
        assert!(matches!(
            read_header(&mem, mem.len()),
            Err(SetupError::BadConfig(_))
        ));
        let mem = fresh();
        mem.store_u32(OFF_RING_SIZE, !4095).unwrap();
        assert!(matches!(
            read_header(&mem, mem.len()),
            Err(SetupError::BadConfig(_))
        ));
        let mem = fresh();
        mem.store_u32(OFF_RING_SIZE, 2 * config.ring_size as u32)
            .unwrap();
        assert!(matches!(
            read_header(&mem, mem.len()),
            Err(SetupError::BadRegion(_))
        ));
        let mem = fresh();
        mem.store_u32(OFF_MAX_PAYLOAD, config.ring_size as u32)
            .unwrap();
        assert!(matches!(
            read_header(&mem, mem.len()),
            Err(SetupError::BadConfig(_))
        ));
        let mem = fresh();
        mem.store_u32(OFF_MAX_PAYLOAD, 7).unwrap();
        assert!(matches!(
            read_header(&mem, mem.len()),
            Err(SetupError::BadConfig(_))
        ));
    }

    /// A window forwards accesses with its offset and refuses what lies outside it.
    #[test]
    fn window_bounds() {
        let mem = HeapMem::new(3 * PAGE);
        assert!(Window::new(&mem, 2 * PAGE, PAGE + 1).is_none());
        assert!(Window::new(&mem, usize::MAX, 2).is_none());
        let w = Window::new(&mem, PAGE, PAGE).unwrap();
        w.store_u32(8, 0xdead_beef).unwrap();
        assert_eq!(mem.load_u32(PAGE + 8).unwrap(), 0xdead_beef);
        assert!(w.load_u32(PAGE).is_err());
        assert!(w.read_at(PAGE - 1, &mut [0; 2]).is_err());
        assert!(w.write_at(usize::MAX, &[0]).is_err());
        w.write_at(PAGE - 2, &[1, 2]).unwrap();
        let mut buf = [0; 2];
        mem.read_at(2 * PAGE - 2, &mut buf).unwrap();
        assert_eq!(buf, [1, 2]);
    }
}
