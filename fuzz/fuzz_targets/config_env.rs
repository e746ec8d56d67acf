//! Arbitrary `SEALCACHE_*` environment values through
//! `Builder::from_env_with`, checked against an independent oracle. The
//! property and the input format live in `tests/common/fuzz_config_env.rs`,
//! which `tests/fuzz_seeds.rs` also runs on the committed seeds.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/fuzz_config_env.rs"]
mod config_env;

fuzz_target!(|data: &[u8]| config_env::check(data));
