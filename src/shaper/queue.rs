//! Bounded FIFO lanes sharing one pre-sized arena per tenant.
//!
//! Contract: an [`Arena`] allocates only when it is built or grown (at configuration time);
//! pushing and popping never allocate. Each [`Fifo`] is a singly linked list of arena slots,
//! so one tenant's lanes (one per port) share the tenant's frame budget, a lane can be moved
//! onto another in O(1) (a removed port's frames keep their order), and an item is never lost
//! or duplicated: it lives in exactly one slot of exactly one list until popped or drained.

use super::Nanos;

/// End of a list.
const NIL: u32 = u32::MAX;
/// The flow of an item pushed without one.
pub(crate) const NO_FLOW: u16 = u16::MAX;

/// One arena slot: a queued item or a free slot.
#[derive(Debug)]
struct Slot<T> {
    item: Option<T>,
    bytes: u32,
    enqueued: Nanos,
    /// Bytes queued ahead of this item in its list when it was pushed.
    ahead: u64,
    /// The flow bucket the owner filed it under ([`NO_FLOW`]: none).
    flow: u16,
    next: u32,
}

/// A FIFO of queued items; its slots live in an [`Arena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fifo {
    head: u32,
    tail: u32,
    frames: u32,
    bytes: u64,
}

impl Default for Fifo {
    fn default() -> Self {
        Fifo {
            head: NIL,
            tail: NIL,
            frames: 0,
            bytes: 0,
        }
    }
}

impl Fifo {
    /// Return true when nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Return the number of queued items.
    pub(crate) fn frames(&self) -> u32 {
        self.frames
    }

    /// Return the queued bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Pre-sized storage for the items of several [`Fifo`]s.
#[derive(Debug)]
pub(crate) struct Arena<T> {
    slots: Vec<Slot<T>>,
    /// Head of the free list.
    free: u32,
    used: u32,
}

impl<T> Arena<T> {
    /// Build an arena holding up to `capacity` items (at least one).
    pub(crate) fn with_capacity(capacity: u32) -> Self {
        let mut arena = Arena {
            slots: Vec::new(),
            free: NIL,
            used: 0,
        };
        arena.grow_to(capacity.max(1));
        arena
    }

    /// Return how many items fit.
    pub(crate) fn capacity(&self) -> u32 {
        // `slots.len()` never exceeds `u32::MAX - 1`: `grow_to` takes a u32 and NIL is reserved.
        u32::try_from(self.slots.len()).unwrap_or(NIL)
    }

    /// Return how many items are queued across all lists.
    pub(crate) fn used(&self) -> u32 {
        self.used
    }

    /// Grow to hold `capacity` items; never shrinks (queued items must stay put).
    pub(crate) fn grow_to(&mut self, capacity: u32) {
        let capacity = capacity.min(NIL - 1);
        let old = self.capacity();
        if capacity <= old {
            return;
        }
        self.slots.reserve_exact((capacity - old) as usize);
        // Link the new slots in front of the free list, lowest index first.
        for _ in old..capacity {
            self.slots.push(Slot {
                item: None,
                bytes: 0,
                enqueued: 0,
                ahead: 0,
                flow: NO_FLOW,
                next: NIL,
            });
        }
        for index in (old..capacity).rev() {
            self.slots[index as usize].next = self.free;
            self.free = index;
        }
    }

    /// Append `item` to `fifo`; give it back when the arena is full.
    #[cfg(test)]
    pub(crate) fn push(
        &mut self,
        fifo: &mut Fifo,
        item: T,
        bytes: u32,
        now: Nanos,
    ) -> Result<(), T> {
        self.push_flow(fifo, item, bytes, now, NO_FLOW)
    }

    /// Append `item` to `fifo`, remembering its flow bucket (or [`NO_FLOW`]) for
    /// [`Arena::pop_flow`]; give it back when the arena is full.
    pub(crate) fn push_flow(
        &mut self,
        fifo: &mut Fifo,
        item: T,
        bytes: u32,
        now: Nanos,
        flow: u16,
    ) -> Result<(), T> {
        let index = self.free;
        if index == NIL {
            return Err(item);
        }
        let slot = &mut self.slots[index as usize];
        self.free = slot.next;
        *slot = Slot {
            item: Some(item),
            bytes,
            enqueued: now,
            ahead: fifo.bytes,
            flow,
            next: NIL,
        };
        if fifo.tail == NIL {
            fifo.head = index;
        } else {
            self.slots[fifo.tail as usize].next = index;
        }
        fifo.tail = index;
        fifo.frames += 1;
        fifo.bytes += u64::from(bytes);
        self.used += 1;
        Ok(())
    }

    /// Return the head of `fifo`: when it was pushed and the bytes that were ahead of it
    /// (all sent since, so `ahead / (now − enqueued)` is the list's recent drain rate).
    pub(crate) fn head(&self, fifo: &Fifo) -> Option<(Nanos, u64)> {
        (fifo.head != NIL).then(|| {
            let slot = &self.slots[fifo.head as usize];
            (slot.enqueued, slot.ahead)
        })
    }

    /// Remove and return the head of `fifo` with its size.
    pub(crate) fn pop(&mut self, fifo: &mut Fifo) -> Option<(T, u32)> {
        self.pop_flow(fifo).map(|(item, bytes, _)| (item, bytes))
    }

    /// Remove and return the head of `fifo` with its size and flow bucket.
    pub(crate) fn pop_flow(&mut self, fifo: &mut Fifo) -> Option<(T, u32, u16)> {
        let index = fifo.head;
        if index == NIL {
            return None;
        }
        let slot = &mut self.slots[index as usize];
        let item = slot.item.take()?;
        let bytes = slot.bytes;
        let flow = slot.flow;
        fifo.head = slot.next;
        slot.next = self.free;
        self.free = index;
        if fifo.head == NIL {
            fifo.tail = NIL;
        }
        fifo.frames -= 1;
        fifo.bytes -= u64::from(bytes);
        self.used -= 1;
        Some((item, bytes, flow))
    }

    /// Move every item of `src` to the tail of `dst`, keeping their order.
    pub(crate) fn append(&mut self, dst: &mut Fifo, src: &mut Fifo) {
        if src.head == NIL {
            return;
        }
        if dst.tail == NIL {
            dst.head = src.head;
        } else {
            self.slots[dst.tail as usize].next = src.head;
        }
        dst.tail = src.tail;
        dst.frames += src.frames;
        dst.bytes += src.bytes;
        *src = Fifo::default();
    }

    /// Pop every item of `fifo` into `out`, in order.
    pub(crate) fn drain(&mut self, fifo: &mut Fifo, mut out: impl FnMut(T, u32)) {
        while let Some((item, bytes)) = self.pop(fifo) {
            out(item, bytes);
        }
    }

    /// Check that `fifo` links exactly its counted items (walks the list).
    pub(crate) fn fifo_is_valid(&self, fifo: &Fifo) -> bool {
        let (mut frames, mut bytes, mut index, mut last) = (0u32, 0u64, fifo.head, NIL);
        while index != NIL {
            let Some(slot) = self.slots.get(index as usize) else {
                return false;
            };
            if slot.item.is_none() || frames > self.used {
                return false;
            }
            frames += 1;
            bytes += u64::from(slot.bytes);
            last = index;
            index = slot.next;
        }
        frames == fifo.frames && bytes == fifo.bytes && last == fifo.tail
    }

    /// Check the free list: free slots + used slots = capacity.
    pub(crate) fn is_valid(&self) -> bool {
        let (mut free, mut index) = (0u32, self.free);
        while index != NIL {
            let Some(slot) = self.slots.get(index as usize) else {
                return false;
            };
            if slot.item.is_some() || free > self.capacity() {
                return false;
            }
            free += 1;
            index = slot.next;
        }
        free + self.used == self.capacity()
            && self.slots.iter().filter(|s| s.item.is_some()).count() == self.used as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_order_and_counts() {
        let mut arena = Arena::with_capacity(3);
        let (mut a, mut b) = (Fifo::default(), Fifo::default());
        arena.push(&mut a, 1, 10, 0).unwrap();
        arena.push(&mut b, 2, 20, 1).unwrap();
        arena.push(&mut a, 3, 30, 2).unwrap();
        assert_eq!(arena.push(&mut b, 4, 40, 3), Err(4));
        assert_eq!((a.frames(), a.bytes()), (2, 40));
        assert_eq!(arena.head(&a), Some((0, 0)));
        assert_eq!(arena.head(&b), Some((1, 0)));
        assert_eq!(arena.pop(&mut a), Some((1, 10)));
        arena.push(&mut b, 4, 40, 3).unwrap();
        assert!(arena.fifo_is_valid(&a) && arena.fifo_is_valid(&b) && arena.is_valid());
        arena.append(&mut a, &mut b);
        assert!(b.is_empty());
        let mut out = Vec::new();
        arena.drain(&mut a, |item, _| out.push(item));
        assert_eq!(out, [3, 2, 4]);
        assert_eq!(arena.used(), 0);
        assert!(arena.is_valid());
    }

    #[test]
    fn grows_without_losing_items() {
        let mut arena = Arena::with_capacity(1);
        let mut a = Fifo::default();
        arena.push(&mut a, 'x', 1, 0).unwrap();
        assert!(arena.push(&mut a, 'y', 1, 0).is_err());
        arena.grow_to(4);
        assert_eq!(arena.capacity(), 4);
        for c in ['y', 'z', 'w'] {
            arena.push(&mut a, c, 1, 0).unwrap();
        }
        assert!(arena.is_valid() && arena.fifo_is_valid(&a));
        let mut out = Vec::new();
        arena.drain(&mut a, |item, _| out.push(item));
        assert_eq!(out, ['x', 'y', 'z', 'w']);
    }
}
