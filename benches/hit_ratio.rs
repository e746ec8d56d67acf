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

use std::hint::black_box;
use std::time::{Duration, Instant};

use sealcache::{SealCache, testing};

/// Entries in the cache, as in the criterion benches.
const ENTRIES: usize = 1000;
/// Operations per timed batch.
const BATCH: usize = 2000;
/// Batches per side.
const ROUNDS: usize = 600;

fn key(i: usize) -> String {
    format!("secret/{i:06}")
}

/// Nanoseconds per operation of one batch of `op`.
fn batch(op: &mut dyn FnMut(usize), start: usize) -> f64 {
    let began = Instant::now();
    for i in start..start + BATCH {
        op(i);
    }
    began.elapsed().as_nanos() as f64 / BATCH as f64
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Times `base` and `measured` in alternating batches and prints the result
/// (unless the command line names a filter that `name` does not contain).
fn compare(name: &str, base: &mut dyn FnMut(usize), measured: &mut dyn FnMut(usize)) {
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    if filter.is_some_and(|filter| !name.contains(filter.as_str())) {
        return;
    }
    let (mut bases, mut measures, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let b = batch(base, round * BATCH);
        let m = batch(measured, round * BATCH);
        bases.push(b);
        measures.push(m);
        ratios.push(m / b);
    }
    for v in [&mut bases, &mut measures, &mut ratios] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "{name:<34} {:>8.0} ns {:>8.0} ns   ratio p10 {:.2}  p50 {:.2}  p90 {:.2}",
        percentile(&bases, 0.5),
        percentile(&measures, 0.5),
        percentile(&ratios, 0.1),
        percentile(&ratios, 0.5),
        percentile(&ratios, 0.9),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; other flags are ignored, and the first
    // other argument filters the pairs (`-- "get 64"` runs one pair).
    println!(
        "{:<34} {:>11} {:>11}   per-batch ratio ({ROUNDS} pairs of {BATCH}-operation batches)",
        "pair", "base p50", "measured"
    );
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
