//! Virtual time and the event queue: the only clock the fleet loop has.
//!
//! Events due at the same instant come out in the order they were scheduled (a sequence
//! number breaks the tie), so a run never depends on how the heap happens to order equal keys.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Virtual time in microseconds since the start of the run.
pub type Micros = u64;

/// One millisecond of virtual time.
pub const MILLISECOND: Micros = 1_000;
/// One second of virtual time.
pub const SECOND: Micros = 1_000_000;

/// A min-queue of events on virtual time, first-scheduled-first-out among equal times.
#[derive(Debug)]
pub struct EventQueue<E> {
    heap: BinaryHeap<Scheduled<E>>,
    next_seq: u64,
    now: Micros,
}

#[derive(Debug)]
struct Scheduled<E> {
    at: Micros,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Scheduled<E> {}

impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Scheduled<E> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest, then the first scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
            now: 0,
        }
    }
}

impl<E> EventQueue<E> {
    /// An empty queue at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The time of the event popped last (zero before the first).
    pub fn now(&self) -> Micros {
        self.now
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Schedules `event` at `at`; a time in the past is taken as now (time never goes back).
    pub fn schedule(&mut self, at: Micros, event: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Scheduled {
            at: at.max(self.now),
            seq,
            event,
        });
    }

    /// Schedules `event` `delay` after now.
    pub fn after(&mut self, delay: Micros, event: E) {
        self.schedule(self.now.saturating_add(delay), event);
    }

    /// The time of the next event, if any.
    pub fn peek_time(&self) -> Option<Micros> {
        self.heap.peek().map(|s| s.at)
    }

    /// Takes the next event and moves the clock to its time.
    pub fn pop(&mut self) -> Option<(Micros, E)> {
        let next = self.heap.pop()?;
        self.now = next.at;
        Some((next.at, next.event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_events_come_first_and_ties_keep_scheduling_order() {
        let mut queue = EventQueue::new();
        queue.schedule(30, "c");
        queue.schedule(10, "a1");
        queue.schedule(20, "b");
        queue.schedule(10, "a2");
        queue.schedule(10, "a3");
        let order: Vec<(Micros, &str)> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(
            order,
            [(10, "a1"), (10, "a2"), (10, "a3"), (20, "b"), (30, "c")]
        );
        assert_eq!(queue.now(), 30);
    }

    #[test]
    fn the_clock_never_goes_back() {
        let mut queue = EventQueue::new();
        queue.schedule(50, 1);
        assert_eq!(queue.pop(), Some((50, 1)));
        queue.schedule(10, 2);
        queue.after(5, 3);
        assert_eq!(queue.pop(), Some((50, 2)), "a past time is taken as now");
        assert_eq!(queue.pop(), Some((55, 3)));
        assert!(queue.is_empty());
    }
}
