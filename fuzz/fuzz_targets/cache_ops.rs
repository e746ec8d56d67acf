//! An arbitrary sequence of cache operations (insert, get, with,
//! get_or_try_load with loaders that succeed, fail or report not-found,
//! invalidate, invalidate_all, clock advances that land exactly on expiries
//! and key deadlines, reaper steps, tampering) run against the real cache on
//! a `ManualClock` and against the reference model of
//! `tests/common/model.rs`. Any divergence in a returned value, in expiry,
//! in LRU eviction, in `len()` or in the statistics panics.
//!
//! Input format (see `fuzz/README.md`): three configuration bytes (TTL,
//! epochs per TTL, max entries), then operations of one tag byte and fixed
//! arguments each; at most 256 operations.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/model.rs"]
mod model;

fuzz_target!(|data: &[u8]| {
    let (config, ops) = model::decode(data);
    model::Harness::run(config, &ops);
});
