//! The virtual clock: a priority queue of timed events, earliest first, ties in the order
//! they were pushed, so a run depends on nothing but its inputs.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A point on the virtual clock, in microseconds since the start of the run.
pub type Micros = u64;

struct Entry<E> {
    at: Micros,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    // Reversed: `BinaryHeap` is a max-heap and we want the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Events ordered by time, then by insertion.
pub struct EventQueue<E> {
    heap: BinaryHeap<Entry<E>>,
    next_seq: u64,
    now: Micros,
}

impl<E> EventQueue<E> {
    /// An empty queue at time zero.
    pub fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
            now: 0,
        }
    }

    /// The time of the last event popped.
    pub fn now(&self) -> Micros {
        self.now
    }

    /// Schedules `event` at `at` (clamped to now: the past is gone).
    pub fn push(&mut self, at: Micros, event: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry {
            at: at.max(self.now),
            seq,
            event,
        });
    }

    /// The earliest event at or before `deadline`, advancing the clock to it; `None` (and the
    /// clock at `deadline`) when there is none.
    pub fn pop_until(&mut self, deadline: Micros) -> Option<(Micros, E)> {
        if self.heap.peek().is_some_and(|entry| entry.at <= deadline) {
            let entry = self.heap.pop()?;
            self.now = entry.at;
            Some((entry.at, entry.event))
        } else {
            self.now = self.now.max(deadline);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_fifo() {
        let mut queue = EventQueue::new();
        queue.push(20, 'c');
        queue.push(10, 'a');
        queue.push(10, 'b');
        queue.push(30, 'd');
        assert_eq!(queue.pop_until(25), Some((10, 'a')));
        assert_eq!(queue.pop_until(25), Some((10, 'b')));
        assert_eq!(queue.pop_until(25), Some((20, 'c')));
        assert_eq!(queue.pop_until(25), None);
        assert_eq!(queue.now(), 25);
        queue.push(5, 'e');
        assert_eq!(queue.pop_until(100), Some((25, 'e')));
    }
}
