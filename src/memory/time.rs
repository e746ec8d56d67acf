//! The boot-time clock: monotonic, and counting time spent suspended, so
//! that expiry deadlines hold across a laptop's or VM's suspend.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
#[cfg(not(target_os = "linux"))]
const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;

/// Time since boot from `CLOCK_BOOTTIME` (`CLOCK_MONOTONIC` off Linux).
///
/// `clock_gettime` cannot fail for these clocks on a supported kernel; if it
/// ever did, this falls back to a reading from [`Instant`] (monotonic but
/// not counting suspend) offset by the last good boot-time reading seen, so
/// the result never panics and, for the fallback readings, never goes
/// backwards.
pub(crate) fn boottime_now() -> Duration {
    static FALLBACK_ORIGIN: OnceLock<(Instant, Duration)> = OnceLock::new();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the result is checked.
    let rc = unsafe { libc::clock_gettime(CLOCK, &mut ts) };
    let reading = (rc == 0)
        .then(|| {
            let secs = u64::try_from(ts.tv_sec).ok()?;
            let nanos = u32::try_from(ts.tv_nsec)
                .ok()
                .filter(|n| *n < 1_000_000_000)?;
            Some(Duration::new(secs, nanos))
        })
        .flatten();
    match reading {
        Some(now) => {
            // Anchor the fallback at the first good reading.
            FALLBACK_ORIGIN.get_or_init(|| (Instant::now(), now));
            now
        }
        None => {
            let (origin, at) = *FALLBACK_ORIGIN.get_or_init(|| (Instant::now(), Duration::ZERO));
            at.saturating_add(origin.elapsed())
        }
    }
}
