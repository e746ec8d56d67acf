//! The boot-time clock: monotonic, and counting time spent suspended, so
//! that expiry deadlines hold across a laptop's or VM's suspend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[cfg(target_os = "linux")]
const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
#[cfg(not(target_os = "linux"))]
const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;

/// How coarsely the fallback records good readings (1 ms): how far ahead of
/// the real boot time a fallback reading can run.
const GRAIN_NANOS: u64 = 1_000_000;

/// Which clocks the test hook makes fail on this thread.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClockFault {
    /// `CLOCK_BOOTTIME` fails; `CLOCK_MONOTONIC` works.
    Boot,
    /// Both fail.
    Both,
}

#[cfg(test)]
thread_local! {
    /// The clocks that fail on this thread (test hook).
    pub(super) static CLOCK_FAULT: core::cell::Cell<Option<ClockFault>> =
        const { core::cell::Cell::new(None) };
}

/// Whether the test hook fails `clock` (always `false` outside tests).
#[inline(always)]
fn injected(clock: libc::clockid_t) -> bool {
    #[cfg(test)]
    {
        CLOCK_FAULT.with(|cell| match cell.get() {
            None => false,
            Some(ClockFault::Boot) => clock == CLOCK,
            Some(ClockFault::Both) => true,
        })
    }
    #[cfg(not(test))]
    {
        let _ = clock;
        false
    }
}

/// A checked `clock_gettime` of `clock`, in nanoseconds.
fn read_nanos(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the result is checked.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 || injected(clock) {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// What keeps the clock monotonic when `CLOCK_BOOTTIME` fails: every field
/// is in nanoseconds and only ever raised (`fetch_max`), so it needs no
/// lock (a forked child cannot find one held) and a good reading costs two
/// loads of rarely written words, plus a store at most once per
/// [`GRAIN_NANOS`].
pub(super) struct Fallback {
    /// A recent good reading: every good reading seen so far is below
    /// `good + GRAIN_NANOS`.
    good: AtomicU64,
    /// The largest fallback reading returned: nothing returned later is
    /// less.
    high: AtomicU64,
    /// Boot time minus `CLOCK_MONOTONIC` at the latest fallback reading, so
    /// that fallback readings advance with `CLOCK_MONOTONIC` from there.
    offset: AtomicU64,
}

impl Fallback {
    pub(super) const fn new() -> Self {
        Self {
            good: AtomicU64::new(0),
            high: AtomicU64::new(0),
            offset: AtomicU64::new(0),
        }
    }

    /// Records a good boot-time reading and returns it, or the last fallback
    /// reading if that is larger (the clock then stands still, by at most
    /// [`GRAIN_NANOS`], until boot time catches up).
    pub(super) fn good(&self, now: u64) -> u64 {
        if now
            >= self
                .good
                .load(Ordering::Relaxed)
                .saturating_add(GRAIN_NANOS)
        {
            self.good.fetch_max(now, Ordering::Relaxed);
        }
        now.max(self.high.load(Ordering::Relaxed))
    }

    /// A reading without boot time: `monotonic` (`CLOCK_MONOTONIC`, if it
    /// could be read) advanced from the latest fallback reading, and never
    /// less than the last good reading or any earlier reading. Without
    /// `monotonic` the clock stands still.
    pub(super) fn fallback(&self, monotonic: Option<u64>) -> u64 {
        let floor = self
            .good
            .load(Ordering::Relaxed)
            .saturating_add(GRAIN_NANOS)
            .max(self.high.load(Ordering::Relaxed));
        let value = match monotonic {
            Some(mono) => {
                let value = floor.max(self.offset.load(Ordering::Relaxed).saturating_add(mono));
                self.offset
                    .fetch_max(value.saturating_sub(mono), Ordering::Relaxed);
                value
            }
            None => floor,
        };
        value.max(self.high.fetch_max(value, Ordering::Relaxed))
    }
}

/// Time since boot from `CLOCK_BOOTTIME` (`CLOCK_MONOTONIC` off Linux).
///
/// `clock_gettime` cannot fail for these clocks on a supported kernel; if it
/// ever did (a seccomp filter, say), this falls back to `CLOCK_MONOTONIC`
/// (not counting suspend) advanced from the last good boot-time reading,
/// and, if that fails too, to the last reading returned. The result never
/// panics and never goes backwards: no reading is less than one returned
/// before, good or not. A fallback reading can run up to 1 ms ahead of boot
/// time; good readings then wait for boot time to catch up.
pub(crate) fn boottime_now() -> Duration {
    static FALLBACK: Fallback = Fallback::new();
    let nanos = match read_nanos(CLOCK) {
        Some(now) => FALLBACK.good(now),
        None => FALLBACK.fallback(read_nanos(libc::CLOCK_MONOTONIC)),
    };
    Duration::from_nanos(nanos)
}
