//! Unit tests of the regions: round trips at every alignment, bounds, atomics, sharing.

use super::*;

fn roundtrip(mem: &dyn SharedMem) {
    // Every offset/length combination around word boundaries.
    for offset in 0..17 {
        for len in 0..25 {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + offset + 1) as u8).collect();
            mem.write_at(offset, &data).unwrap();
            let mut back = vec![0; len];
            mem.read_at(offset, &mut back).unwrap();
            assert_eq!(back, data, "offset {offset} len {len}");
        }
    }
}

/// Byte copies round-trip at every alignment of offset and length.
#[test]
fn heap_copy_roundtrip() {
    roundtrip(&HeapMem::new(64));
}

/// Atomics see the bytes the copies wrote, little-endian on this host.
#[test]
fn heap_atomics_and_bytes_agree() {
    let mem = HeapMem::new(16);
    mem.store_u32(4, 0x1122_3344).unwrap();
    let mut b = [0; 4];
    mem.read_at(4, &mut b).unwrap();
    assert_eq!(u32::from_ne_bytes(b), 0x1122_3344);
    mem.write_at(8, &0xdead_beef_0bad_f00du64.to_ne_bytes())
        .unwrap();
    assert_eq!(mem.load_u64(8).unwrap(), 0xdead_beef_0bad_f00d);
    assert_eq!(mem.load_u32(0).unwrap(), 0);
}

/// Out-of-range and misaligned accesses are typed errors, including offset overflow.
#[test]
fn heap_rejects_bad_accesses() {
    let mem = HeapMem::new(16);
    let oob = |offset, len| MemError::OutOfBounds {
        offset,
        len,
        region_len: 16,
    };
    assert_eq!(mem.read_at(10, &mut [0; 7]), Err(oob(10, 7)));
    assert_eq!(mem.write_at(17, &[]), Err(oob(17, 0)));
    assert_eq!(mem.write_at(usize::MAX, &[1]), Err(oob(usize::MAX, 1)));
    assert_eq!(mem.load_u32(14), Err(oob(14, 4)));
    assert_eq!(mem.load_u64(16), Err(oob(16, 8)));
    assert_eq!(
        mem.load_u32(2),
        Err(MemError::Misaligned { offset: 2, size: 4 })
    );
    assert_eq!(
        mem.store_u64(4, 1),
        Err(MemError::Misaligned { offset: 4, size: 8 })
    );
    // Exactly at the end is fine.
    mem.read_at(16, &mut []).unwrap();
    mem.write_at(8, &[0; 8]).unwrap();
    assert_eq!(mem.len(), 16);
    assert!(HeapMem::new(0).is_empty());
}

/// A copy covering part of a word leaves the word's other bytes as they were.
#[test]
fn partial_word_writes_keep_neighbours() {
    let mem = HeapMem::new(24);
    mem.write_at(0, &[0xee; 24]).unwrap();
    mem.write_at(3, &[1, 2]).unwrap();
    mem.write_at(6, &[3, 4, 5, 6, 7]).unwrap();
    mem.write_at(21, &[8]).unwrap();
    let mut all = [0; 24];
    mem.read_at(0, &mut all).unwrap();
    let mut want = [0xee; 24];
    want[3..5].copy_from_slice(&[1, 2]);
    want[6..11].copy_from_slice(&[3, 4, 5, 6, 7]);
    want[21] = 8;
    assert_eq!(all, want);
}

/// A length that is not a multiple of 8 is honoured exactly.
#[test]
fn heap_odd_length() {
    let mem = HeapMem::new(13);
    mem.write_at(5, &[1; 8]).unwrap();
    assert!(mem.write_at(6, &[1; 8]).is_err());
    assert!(mem.load_u64(8).is_err());
}

/// Two threads hammer the same bytes through the trait, with unaligned and overlapping
/// copies: no UB (Miri checks this), and the release/acquire pair publishes data copied
/// before the flag store. (The flag lives in its own word: `u32` accessors must not race
/// with copies of the same bytes.)
#[test]
fn heap_concurrent_writers_and_publication() {
    let mem = Arc::new(HeapMem::new(64));
    let rounds = if cfg!(miri) { 20 } else { 2000 };
    let peer = {
        let mem = mem.clone();
        std::thread::spawn(move || {
            for i in 0..rounds {
                let byte = (i % 251) as u8;
                mem.write_at(8, &[byte; 24]).unwrap();
                mem.write_at(3, &[byte; 5]).unwrap();
                mem.store_u32(60, i + 1).unwrap();
            }
        })
    };
    let mut seen = 0;
    let mut buf = [0; 24];
    while seen < rounds {
        let now = mem.load_u32(60).unwrap();
        // Racing copy: any mix of bytes is allowed, it just must not be UB.
        mem.read_at(3, &mut buf).unwrap();
        seen = now;
        std::hint::spin_loop();
    }
    peer.join().unwrap();
    let mut last = [0; 24];
    mem.read_at(8, &mut last).unwrap();
    assert_eq!(last, [((rounds - 1) % 251) as u8; 24]);
}

/// A memfd whose size is not a multiple of 8 is usable up to its last byte.
#[test]
#[cfg_attr(miri, ignore)]
fn memfd_odd_size() {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd =
        rustix::fs::memfd_create("odd", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, 13).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
    let mem = MemfdMem::from_fd(fd).unwrap();
    assert_eq!(mem.len(), 13);
    mem.write_at(9, &[1, 2, 3, 4]).unwrap();
    let mut back = [0; 5];
    mem.read_at(8, &mut back).unwrap();
    assert_eq!(back, [0, 1, 2, 3, 4]);
    assert!(mem.write_at(10, &[0; 4]).is_err());
}

/// A memfd region maps, round-trips and is shared with a second mapping of its fd.
#[test]
#[cfg_attr(miri, ignore)]
fn memfd_two_mappings_share_pages() {
    let a = MemfdMem::create("shared_mem-test", 8192).unwrap();
    roundtrip(&a);
    let b = MemfdMem::from_fd(a.try_clone_fd().unwrap()).unwrap();
    assert_eq!(b.len(), 8192);
    a.store_u64(4096, 0x0123_4567_89ab_cdef).unwrap();
    assert_eq!(b.load_u64(4096).unwrap(), 0x0123_4567_89ab_cdef);
    b.write_at(8190, &[9, 8]).unwrap();
    let mut back = [0; 2];
    a.read_at(8190, &mut back).unwrap();
    assert_eq!(back, [9, 8]);
    assert!(a.read_at(8191, &mut [0; 2]).is_err());
}

/// An unsealed memfd is refused: its owner could shrink it under the mapping.
#[test]
#[cfg_attr(miri, ignore)]
fn memfd_unsealed_is_refused() {
    let fd = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 4096).unwrap();
    assert!(matches!(
        MemfdMem::from_fd(fd),
        Err(MemfdError::NotSealed(_))
    ));
    assert!(matches!(
        MemfdMem::create("empty", 0),
        Err(MemfdError::Empty)
    ));
}

/// The region can be used as a trait object behind an `Arc`.
#[test]
fn trait_objects_forward() {
    let mem: Arc<dyn SharedMem> = Arc::new(HeapMem::new(8));
    mem.store_u32(4, 7).unwrap();
    fn generic<M: SharedMem>(m: M) -> u32 {
        m.load_u32(4).unwrap()
    }
    assert_eq!(generic(&mem), 7);
    assert_eq!(generic(mem.clone()), 7);
    assert_eq!(mem.len(), 8);
}

/// Memory that implements only the required methods, so the word copies take the defaults.
struct BytesOnly(HeapMem);

impl SharedMem for BytesOnly {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        self.0.write_at(offset, data)
    }
    fn load_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.0.load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.0.store_u32(offset, value)
    }
    fn load_u64(&self, offset: usize) -> Result<u64, MemError> {
        self.0.load_u64(offset)
    }
    fn store_u64(&self, offset: usize, value: u64) -> Result<(), MemError> {
        self.0.store_u64(offset, value)
    }
}

/// Word copies agree with byte copies (little-endian words), reject misaligned offsets and
/// ranges past the end (including a count whose byte length overflows), and leave the
/// neighbouring words alone; for the fast path and for the trait's defaults alike.
fn words_agree_with_bytes(mem: &dyn SharedMem) {
    let words = [0x0102_0304_0506_0708u64, 0x1112_1314_1516_1718, u64::MAX];
    mem.write_words(8, &words).unwrap();
    let mut bytes = [0u8; 40];
    mem.read_at(0, &mut bytes).unwrap();
    assert_eq!(&bytes[..8], &[0; 8]);
    assert_eq!(&bytes[8..16], &words[0].to_le_bytes());
    assert_eq!(&bytes[16..24], &words[1].to_le_bytes());
    assert_eq!(&bytes[24..32], &words[2].to_le_bytes());
    assert_eq!(&bytes[32..], &[0; 8]);
    let data: Vec<u8> = (0..40).collect();
    mem.write_at(0, &data).unwrap();
    let mut back = [0u64; 5];
    mem.read_words(0, &mut back).unwrap();
    for (i, w) in back.iter().enumerate() {
        assert_eq!(w.to_le_bytes(), data[i * 8..i * 8 + 8], "word {i}");
    }
    let mut one = [7u64];
    assert_eq!(
        mem.read_words(4, &mut one),
        Err(MemError::Misaligned { offset: 4, size: 8 })
    );
    assert_eq!(
        mem.write_words(12, &one),
        Err(MemError::Misaligned {
            offset: 12,
            size: 8
        })
    );
    assert!(matches!(
        mem.read_words(40, &mut one),
        Err(MemError::OutOfBounds { .. })
    ));
    assert!(matches!(
        mem.write_words(usize::MAX - 7, &one),
        Err(MemError::OutOfBounds { .. })
    ));
    assert_eq!(one, [7]);
    assert_eq!(
        mem.load_u64(32).unwrap(),
        u64::from_le_bytes(data[32..40].try_into().unwrap())
    );
}

/// The region's own word copies.
#[test]
fn heap_word_copies() {
    words_agree_with_bytes(&HeapMem::new(40));
}

/// The trait's default word copies, built on the byte copies.
#[test]
fn default_word_copies() {
    words_agree_with_bytes(&BytesOnly(HeapMem::new(40)));
}

/// A word count whose byte length overflows is out of bounds, not a panic.
#[test]
fn word_count_overflow_is_refused() {
    let mem = HeapMem::new(40);
    assert!(matches!(
        mem.raw.word_range(0, usize::MAX / 4),
        Err(MemError::OutOfBounds { .. })
    ));
}
