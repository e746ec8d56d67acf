//! Opening sealed entries that the fuzzer alters: never a panic, and an
//! entry opens only when key, epoch, cache key and bytes are exactly the
//! originals. The property and the input format live in
//! `tests/common/fuzz_open_entry.rs`, which `tests/fuzz_seeds.rs` also runs
//! on the committed seeds.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/fuzz_open_entry.rs"]
mod open_entry;

fuzz_target!(|data: &[u8]| open_entry::check(data));
