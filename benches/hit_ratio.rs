//! The ratios issue 6 sets targets on, measured so that the machine's
//! process-to-process noise cancels out: a `get` hit against the crate's own
//! open of the same size, a `with` hit against the same open, and an
//! `insert` against the crate's own seal (nonce included), each pair timed in
//! alternating batches within one process. Prints, per pair, the median time
//! of each side and the 10th, 50th and 90th percentiles of the per-batch
//! ratio. See BENCHMARKS.md ("Interleaved ratios").
//!
//! ```text
//! cargo bench --features test-hooks --bench hit_ratio
//! cargo bench --features test-hooks --bench hit_ratio -- "get 64"   # one pair
//! ```

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{ENTRIES, compare, key, print_header};
use sealcache::{SealCache, testing};

fn main() {
    // `cargo bench` passes `--bench`; other flags are ignored, and the first
    // other argument filters the pairs (`-- "get 64"` runs one pair).
    print_header();
    for size in [64usize, 1024] {
        let cache = SealCache::builder()
            .ttl(Duration::from_secs(3600))
            .max_entries(ENTRIES)
            .build()
            .expect("cache (needs mlock: run as root or raise RLIMIT_MEMLOCK)");
        let keys: Vec<String> = (0..ENTRIES).map(key).collect();
        let value: Vec<u8> = (0..size).map(|j| j as u8).collect();
        for k in &keys {
            cache.insert(k.as_str(), value.as_slice()).unwrap();
        }
        let epoch_key = [7u8; 32];
        let sealed = testing::seal(&epoch_key, 1, keys[1].as_bytes(), &value);
        let mut open = |_: usize| {
            black_box(testing::open(
                &epoch_key,
                1,
                keys[1].as_bytes(),
                black_box(&sealed),
            ));
        };
        let mut get = |i: usize| {
            black_box(cache.get(keys[i % ENTRIES].as_str()).unwrap());
        };
        compare(&format!("get {size} B / crate open"), &mut open, &mut get);
        let mut with = |i: usize| {
            black_box(cache.with(keys[i % ENTRIES].as_str(), |b| b[0]).unwrap());
        };
        compare(&format!("with {size} B / crate open"), &mut open, &mut with);
        let mut seal = |_: usize| {
            black_box(testing::seal(
                &epoch_key,
                1,
                keys[1].as_bytes(),
                black_box(&value),
            ));
        };
        let mut insert = |i: usize| {
            cache
                .insert(keys[i % ENTRIES].as_str(), black_box(value.as_slice()))
                .unwrap();
        };
        compare(
            &format!("insert {size} B / crate seal"),
            &mut seal,
            &mut insert,
        );
    }
}
