//! Frame buffers reused across frames, so the data path does not allocate per frame.
//!
//! Contract: [`BufferPool::take`] returns an empty `Vec` with at least the requested capacity,
//! from the free list when one fits; [`BufferPool::give`] returns it. Two size classes keep
//! queued MTU-sized frames from pinning 64 KiB each. The free lists are capped, so a burst
//! that needed many buffers gives the memory back once it has drained.

/// Capacity of the small class: an MTU-1500 frame (plus VLAN slack) fits.
pub const SMALL: usize = 2048;
/// Buffers kept per class when idle.
const KEEP: usize = 4096;

/// Free lists of frame buffers in two size classes.
#[derive(Debug, Default)]
pub struct BufferPool {
    small: Vec<Vec<u8>>,
    large: Vec<Vec<u8>>,
    large_size: usize,
}

impl BufferPool {
    /// Create a pool whose large class holds `large_size` bytes.
    pub fn new(large_size: usize) -> BufferPool {
        BufferPool {
            small: Vec::new(),
            large: Vec::new(),
            large_size,
        }
    }

    /// Return an empty buffer able to hold `len` bytes.
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        let (list, size) = if len <= SMALL {
            (&mut self.small, SMALL)
        } else {
            (&mut self.large, self.large_size.max(len))
        };
        match list.pop() {
            Some(mut buf) if buf.capacity() >= len => {
                buf.clear();
                buf
            }
            _ => Vec::with_capacity(size),
        }
    }

    /// Take a buffer holding a copy of `frame`.
    pub fn copy_of(&mut self, frame: &[u8]) -> Vec<u8> {
        let mut buf = self.take(frame.len());
        buf.extend_from_slice(frame);
        buf
    }

    /// Return a buffer to its free list (or free it when the list is full).
    pub fn give(&mut self, buf: Vec<u8>) {
        let list = if buf.capacity() >= self.large_size {
            &mut self.large
        } else if buf.capacity() >= SMALL {
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
        let mut pool = BufferPool::new(65_536);
        let a = pool.copy_of(&[1u8; 100]);
        let ptr = a.as_ptr();
        assert!(a.capacity() >= SMALL && a.capacity() < 65_536);
        pool.give(a);
        let b = pool.take(1500);
        assert_eq!(b.as_ptr(), ptr, "small buffer reused");
        assert!(b.is_empty());
        let big = pool.take(9000);
        assert!(big.capacity() >= 65_536);
        pool.give(big);
        assert_eq!(pool.large.len(), 1);
    }
}
