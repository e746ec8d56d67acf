//! An arbitrary sequence of cache operations (insert, get, with,
//! get_or_try_load with loaders that succeed, fail or report not-found,
//! invalidate, invalidate_all, clock advances that land exactly on expiries
//! and key deadlines, reaper steps, tampering) run against the real cache on
//! a `ManualClock` and against the reference model of
//! `tests/common/model.rs`. Any divergence in a returned value, in expiry,
//! in LRU eviction, in `len()` or in the statistics panics.
//!
//! With the opt-in loader knobs `negative_ttl` (cached "not found":
//! negative hits, no loader call) and `max_stale` (stale-if-error within a
//! grace period, longer key deadlines) when the configuration turns them on,
//! and a recency resolution from zero (exact LRU) to the whole TTL (the
//! cache must evict what a model applying the resolution's rule evicts; the
//! rule implies the eviction guarantee, which the model asserts).
//!
//! Input format (see `fuzz/README.md`): three configuration bytes (TTL,
//! epochs per TTL, max entries), then operations of one tag byte and fixed
//! arguments each; at most 256 operations. The knobs come from the high
//! bits of the configuration bytes (`(b0 >> 2) % 8` picks `negative_ttl`,
//! `(b1 >> 3) % 8` picks `max_stale`, `(b2 >> 3) % 8` the recency
//! resolution; 0 and 7 are off, or exact LRU), so inputs with `b0 < 4`,
//! `b1 < 8` and `b2 < 8`, like the older seeds, run with all three off. A
//! `ToExpiry` whose entry byte has bit 7 set lands on the end of the stale
//! grace instead of the expiry.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/model.rs"]
mod model;

fuzz_target!(|data: &[u8]| {
    let (config, ops) = model::decode(data);
    model::Harness::run(config, &ops);
});
