//! Virtual time and the timer queue.
//!
//! Devices never read the host clock. They read [`Clock::now`] and arm [`Timer`]s; whoever owns
//! the board advances the clock (from host monotonic time in a running machine, by hand in a
//! test), and the clock calls each device back when its deadline passes, in deadline order,
//! with `now` equal to that deadline. So every timing behaviour is deterministic under test.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Nanoseconds of virtual time.
pub type Nanos = u64;

pub const NANOS_PER_SEC: Nanos = 1_000_000_000;

/// A device that owns timers. `token` tells its timers apart.
pub trait TimerTarget: Send {
    fn timer_expired(&mut self, token: u32, now: Nanos);
}

pub type TimerTargetRef = Weak<Mutex<dyn TimerTarget>>;

struct Slot {
    target: TimerTargetRef,
    token: u32,
    /// The armed deadline and the sequence number of its heap entry; older heap entries for
    /// this slot are stale and skipped.
    armed: Option<(Nanos, u64)>,
}

#[derive(Default)]
struct Queue {
    slots: Vec<Slot>,
    free: Vec<usize>,
    heap: BinaryHeap<Reverse<(Nanos, u64, usize)>>,
    next_seq: u64,
    armed_count: usize,
}

impl Queue {
    /// Drop stale entries from the top, then return the earliest live one.
    fn peek_live(&mut self) -> Option<(Nanos, usize)> {
        while let Some(&Reverse((deadline, seq, slot))) = self.heap.peek() {
            if self.slots[slot].armed == Some((deadline, seq)) {
                return Some((deadline, slot));
            }
            self.heap.pop();
        }
        None
    }

    /// Re-arming leaves stale heap entries behind; rebuild before they outnumber live ones
    /// so a device that re-arms on every byte cannot grow the heap without bound.
    fn compact_if_needed(&mut self) {
        if self.heap.len() > 2 * self.armed_count + 64 {
            let live: Vec<_> = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.armed.map(|(d, q)| Reverse((d, q, i))))
                .collect();
            self.heap = BinaryHeap::from(live);
        }
    }

    fn disarm(&mut self, slot: usize) {
        if self.slots[slot].armed.take().is_some() {
            self.armed_count -= 1;
        }
    }
}

struct Inner {
    now: AtomicU64,
    queue: Mutex<Queue>,
}

/// The board's virtual clock and timer queue. Cloning shares the same clock.
#[derive(Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new(0)
    }
}

impl Clock {
    pub fn new(start: Nanos) -> Clock {
        Clock {
            inner: Arc::new(Inner {
                now: AtomicU64::new(start),
                queue: Mutex::new(Queue::default()),
            }),
        }
    }

    pub fn now(&self) -> Nanos {
        self.inner.now.load(Ordering::Acquire)
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.inner.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new, disarmed timer that calls `target.timer_expired(token, now)` when it expires.
    /// Build the target with `Arc::new_cyclic` to hand it a reference to itself.
    pub fn timer(&self, target: TimerTargetRef, token: u32) -> Timer {
        let mut q = self.queue();
        let slot = Slot {
            target,
            token,
            armed: None,
        };
        let index = match q.free.pop() {
            Some(i) => {
                q.slots[i] = slot;
                i
            }
            None => {
                q.slots.push(slot);
                q.slots.len() - 1
            }
        };
        Timer {
            clock: self.clone(),
            slot: index,
        }
    }

    /// The earliest armed deadline.
    pub fn next_deadline(&self) -> Option<Nanos> {
        self.queue().peek_live().map(|(deadline, _)| deadline)
    }

    /// Advance virtual time to `until`, firing every timer whose deadline is at or before it.
    /// Time never goes backwards: an earlier `until` fires nothing. A callback may re-arm its
    /// timer (even for a deadline already passed; it fires in this same call).
    pub fn advance_to(&self, until: Nanos) {
        loop {
            let due = {
                let mut q = self.queue();
                match q.peek_live() {
                    Some((deadline, slot)) if deadline <= until => {
                        q.heap.pop();
                        q.disarm(slot);
                        let s = &q.slots[slot];
                        Some((deadline, s.target.clone(), s.token))
                    }
                    _ => None,
                }
            };
            let Some((deadline, target, token)) = due else {
                break;
            };
            self.inner.now.fetch_max(deadline, Ordering::AcqRel);
            let now = self.now();
            if let Some(target) = target.upgrade() {
                target
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .timer_expired(token, now);
            }
        }
        self.inner.now.fetch_max(until, Ordering::AcqRel);
    }

    pub fn advance_by(&self, delta: Nanos) {
        self.advance_to(self.now().saturating_add(delta));
    }
}

/// A device's handle on one timer. Dropping it frees the timer.
pub struct Timer {
    clock: Clock,
    slot: usize,
}

impl Timer {
    /// Fire at `deadline` (replacing any earlier arming). A deadline in the past fires at the
    /// next advance of the clock.
    pub fn arm(&self, deadline: Nanos) {
        let mut q = self.clock.queue();
        let seq = q.next_seq;
        q.next_seq += 1;
        if q.slots[self.slot].armed.is_none() {
            q.armed_count += 1;
        }
        q.slots[self.slot].armed = Some((deadline, seq));
        q.heap.push(Reverse((deadline, seq, self.slot)));
        q.compact_if_needed();
    }

    pub fn cancel(&self) {
        self.clock.queue().disarm(self.slot);
    }

    pub fn deadline(&self) -> Option<Nanos> {
        self.clock.queue().slots[self.slot].armed.map(|(d, _)| d)
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let mut q = self.clock.queue();
        q.disarm(self.slot);
        q.free.push(self.slot);
    }
}

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer")
            .field("deadline", &self.deadline())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder {
        fired: Vec<(u32, Nanos)>,
        timers: Vec<Timer>,
        rearm_period: Option<Nanos>,
    }

    impl TimerTarget for Recorder {
        fn timer_expired(&mut self, token: u32, now: Nanos) {
            self.fired.push((token, now));
            if let Some(p) = self.rearm_period {
                self.timers[token as usize].arm(now + p);
            }
        }
    }

    fn recorder(clock: &Clock, n: u32, rearm_period: Option<Nanos>) -> Arc<Mutex<Recorder>> {
        Arc::new_cyclic(|me: &Weak<Mutex<Recorder>>| {
            let timers = (0..n).map(|t| clock.timer(me.clone(), t)).collect();
            Mutex::new(Recorder {
                fired: Vec::new(),
                timers,
                rearm_period,
            })
        })
    }

    #[test]
    fn fires_in_deadline_order_with_now_at_the_deadline() {
        let clock = Clock::new(0);
        let r = recorder(&clock, 3, None);
        {
            let r = r.lock().unwrap();
            r.timers[0].arm(300);
            r.timers[1].arm(100);
            r.timers[2].arm(200);
        }
        assert_eq!(clock.next_deadline(), Some(100));
        clock.advance_to(250);
        assert_eq!(r.lock().unwrap().fired, vec![(1, 100), (2, 200)]);
        assert_eq!(clock.now(), 250);
        clock.advance_to(1000);
        assert_eq!(r.lock().unwrap().fired.last(), Some(&(0, 300)));
        assert_eq!(clock.next_deadline(), None);
    }

    #[test]
    fn rearm_replaces_and_cancel_disarms() {
        let clock = Clock::new(0);
        let r = recorder(&clock, 2, None);
        {
            let r = r.lock().unwrap();
            r.timers[0].arm(100);
            r.timers[0].arm(500);
            r.timers[1].arm(50);
            r.timers[1].cancel();
        }
        clock.advance_to(400);
        assert!(r.lock().unwrap().fired.is_empty());
        clock.advance_to(500);
        assert_eq!(r.lock().unwrap().fired, vec![(0, 500)]);
    }

    #[test]
    fn periodic_rearm_from_callback_fires_every_period() {
        let clock = Clock::new(0);
        let r = recorder(&clock, 1, Some(10));
        r.lock().unwrap().timers[0].arm(10);
        clock.advance_to(95);
        let fired = r.lock().unwrap().fired.clone();
        assert_eq!(fired.len(), 9);
        assert_eq!(fired[8], (0, 90));
        assert_eq!(r.lock().unwrap().timers[0].deadline(), Some(100));
    }

    #[test]
    fn time_never_goes_backwards_and_heap_stays_bounded() {
        let clock = Clock::new(1000);
        clock.advance_to(10);
        assert_eq!(clock.now(), 1000);
        let r = recorder(&clock, 1, None);
        for i in 0..100_000 {
            r.lock().unwrap().timers[0].arm(2000 + i);
        }
        assert!(clock.queue().heap.len() < 200);
        clock.advance_to(1_000_000);
        assert_eq!(r.lock().unwrap().fired, vec![(0, 2000 + 99_999)]);
    }

    #[test]
    fn dropped_target_is_skipped() {
        let clock = Clock::new(0);
        let r = recorder(&clock, 1, None);
        r.lock().unwrap().timers[0].arm(5);
        let weak = Arc::downgrade(&r);
        // Dropping the device drops its timers, which disarms them.
        drop(r);
        assert!(weak.upgrade().is_none());
        clock.advance_to(10);
        assert_eq!(clock.next_deadline(), None);
    }
}
