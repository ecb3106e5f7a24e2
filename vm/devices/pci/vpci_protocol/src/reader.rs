//! A bounds-checked cursor over a payload: every read reports its offset on failure.

use crate::error::DecodeError;
use crate::wire::Reserved;
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    fn rest_slice(&self) -> &'a [u8] {
        self.bytes.get(self.offset..).unwrap_or_default()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest_slice().len()
    }

    /// Reads one fixed-layout value and checks its reserved bits.
    pub(crate) fn read<T>(&mut self, what: &'static str) -> Result<T, DecodeError>
    where
        T: FromBytes + KnownLayout + Immutable + Unaligned + Reserved,
    {
        let (value, _) =
            T::read_from_prefix(self.rest_slice()).map_err(|_| DecodeError::Truncated {
                offset: self.offset,
                what,
                needed: size_of::<T>(),
                available: self.remaining(),
            })?;
        value.check_reserved(self.offset)?;
        self.offset += size_of::<T>();
        Ok(value)
    }

    /// Takes `len` raw bytes.
    pub(crate) fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = self.rest_slice();
        let taken = rest.get(..len).ok_or(DecodeError::Truncated {
            offset: self.offset,
            what,
            needed: len,
            available: rest.len(),
        })?;
        self.offset += len;
        Ok(taken)
    }

    /// Takes whatever is left (padding, a dialect's extra reserved bytes).
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.rest_slice();
        self.offset = self.bytes.len();
        rest
    }

    /// Checks that `count` items of `item_size` bytes fit in what is left (and under `limit`),
    /// returning the byte length; `field_offset` is where the count was read.
    pub(crate) fn fit_count(
        &self,
        field: &'static str,
        field_offset: usize,
        count: u64,
        item_size: usize,
        limit: u64,
    ) -> Result<usize, DecodeError> {
        let fits = (self.remaining() / item_size.max(1)) as u64;
        let max = fits.min(limit);
        if count > max {
            return Err(DecodeError::CountTooLarge {
                offset: field_offset,
                field,
                count,
                limit: max,
            });
        }
        // count <= fits, so count * item_size <= remaining: no overflow.
        Ok(count as usize * item_size)
    }
}
