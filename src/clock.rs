//! Time as the cache sees it: a monotonic reading that keeps counting across
//! system suspend, behind the [`Clock`] trait so that tests can drive it.
//!
//! Every expiry decision and every epoch-key deadline is computed from
//! [`Clock::now`]. [`BootClock`] (the default) reads `CLOCK_BOOTTIME` on Linux,
//! so a laptop that sleeps for an hour does not resurrect entries that expired
//! while it slept. [`ManualClock`] only moves when told to, and wakes every
//! cache's reaper synchronously when it does, so tests never sleep through a
//! TTL.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A callback a clock runs after it jumps forward; returns `false` once its
/// receiver is gone for good (a cache's reaper: the cache was dropped, or
/// this is a forked child), so the clock can forget it.
pub type ClockWaker = Box<dyn Fn() -> bool + Send + Sync>;

/// A monotonic source of time for a [`SealCache`](crate::SealCache).
///
/// `now` must never go backwards. Its origin is arbitrary (boot, process
/// start, zero): only differences matter. The cache counts in `u64`
/// nanoseconds: a reading must stay at least TTL + `max_stale` below
/// `u64::MAX` nanoseconds (584 years), or expiries saturate at the end of
/// that range and entries expire as soon as they are stored.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current reading.
    fn now(&self) -> Duration;

    /// Registers a waker to run after the clock jumps. Real clocks never
    /// jump and ignore it (the default); [`ManualClock`] runs every waker
    /// after each [`advance`](ManualClock::advance), which lets the cache's
    /// reaper react to test time deterministically.
    fn register_waker(&self, waker: ClockWaker) {
        drop(waker);
    }
}

/// The default clock: `CLOCK_BOOTTIME` (monotonic, counts suspend). The
/// crate builds only for Linux.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootClock;

impl Clock for BootClock {
    fn now(&self) -> Duration {
        crate::memory::boottime_now()
    }
}

/// A clock for tests: starts at zero and moves only by [`advance`](Self::advance).
///
/// Clones share the same time. Advancing runs every registered waker before
/// returning: each cache built on this clock has then let its reaper wipe
/// every epoch key whose deadline has passed.
///
/// ```
/// use sealcache::{ManualClock, SealCache};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let cache = SealCache::builder()
///     .ttl(Duration::from_secs(60))
///     .clock(clock.clone())
///     .build()?;
/// cache.insert("api-key", "s3cr3t")?;
/// clock.advance(Duration::from_secs(60));
/// assert!(cache.get("api-key")?.is_none());
/// # Ok::<(), sealcache::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Default)]
struct ManualInner {
    nanos: AtomicU64,
    wakers: Mutex<Vec<ClockWaker>>,
}

impl ManualClock {
    /// A clock reading zero.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward by `by` (saturating), then wakes every reaper
    /// registered on this clock and waits until each has processed the
    /// deadlines that are now due.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let mut current = self.inner.nanos.load(Ordering::Acquire);
        loop {
            let next = current.saturating_add(by);
            match self.inner.nanos.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        self.wake();
    }

    /// Runs every registered waker without moving time (drives the reapers).
    pub fn wake(&self) {
        let mut wakers = self
            .inner
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        wakers.retain(|waker| waker());
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish_non_exhaustive()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.inner.nanos.load(Ordering::Acquire))
    }

    fn register_waker(&self, waker: ClockWaker) {
        self.inner
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(waker);
    }
}

/// Nanoseconds of a clock reading, saturating at `u64::MAX` (584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced_and_clones_share_time() {
        let clock = ManualClock::new();
        let other = clock.clone();
        assert_eq!(clock.now(), Duration::ZERO);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(other.now(), Duration::from_millis(1500));
    }

    #[test]
    fn manual_clock_saturates_instead_of_wrapping() {
        let clock = ManualClock::new();
        clock.advance(Duration::MAX);
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn wakers_run_on_advance_and_are_dropped_when_they_say_so() {
        use std::sync::atomic::AtomicUsize;
        let clock = ManualClock::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        clock.register_waker(Box::new(move || seen.fetch_add(1, Ordering::SeqCst) == 0));
        clock.advance(Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn boot_clock_is_monotonic() {
        let a = BootClock.now();
        let b = BootClock.now();
        assert!(b >= a);
        assert!(a > Duration::ZERO);
    }
}
