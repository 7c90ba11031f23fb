//! Frame buffers reused across frames, so the data path does not allocate per frame.
//!
//! Contract: two size classes. Small buffers (≤ [`SMALL`] bytes) hold copies of MTU-sized
//! frames that must wait in a shaper queue; large buffers ([`LARGE`] bytes, kept at full
//! length so they never need re-zeroing) are read targets, and a large frame that must wait
//! keeps its read buffer instead of being copied. Free lists are capped, so memory a burst
//! needed is given back once it drains; in steady state nothing is allocated.

/// Capacity of a small buffer: an MTU-1500 frame with room to spare.
pub const SMALL: usize = 2048;
/// Length of a large buffer: the largest frame a TAP read can return (a 64 KiB GSO frame,
/// its Ethernet header and the virtio-net header), with room to spare.
pub const LARGE: usize = 65_536 + 256;
/// Buffers kept per class when idle.
const KEEP: usize = 4096;

/// Free lists of frame buffers in two size classes.
#[derive(Debug, Default)]
pub struct BufferPool {
    small: Vec<Vec<u8>>,
    large: Vec<Vec<u8>>,
}

impl BufferPool {
    /// Return a buffer holding a copy of `frame` (which must be at most [`SMALL`] bytes).
    pub fn copy_small(&mut self, frame: &[u8]) -> Vec<u8> {
        debug_assert!(frame.len() <= SMALL);
        let mut buf = self
            .small
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(SMALL));
        buf.clear();
        buf.extend_from_slice(frame);
        buf
    }

    /// Return a large buffer of exactly [`LARGE`] bytes (contents unspecified).
    pub fn take_large(&mut self) -> Vec<u8> {
        self.large.pop().unwrap_or_else(|| vec![0; LARGE])
    }

    /// Return a buffer to its free list (or free it when the list is full).
    pub fn give(&mut self, buf: Vec<u8>) {
        let list = if buf.len() == LARGE {
            &mut self.large
        } else if buf.capacity() >= SMALL && buf.capacity() < LARGE {
            &mut self.small
        } else {
            return;
        };
        if list.len() < KEEP {
            list.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_buffers_by_class() {
        let mut pool = BufferPool::default();
        let a = pool.copy_small(&[1u8; 100]);
        let ptr = a.as_ptr();
        assert_eq!(a, vec![1u8; 100]);
        pool.give(a);
        let b = pool.copy_small(&[2u8; 1500]);
        assert_eq!(b.as_ptr(), ptr, "small buffer reused");
        assert_eq!(b.len(), 1500);
        let big = pool.take_large();
        let big_ptr = big.as_ptr();
        assert_eq!(big.len(), LARGE);
        pool.give(big);
        let again = pool.take_large();
        assert_eq!(again.as_ptr(), big_ptr, "large buffer reused");
    }
}
