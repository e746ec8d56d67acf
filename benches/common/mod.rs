//! Harness code shared by the benches. Timing in alternating batches within
//! one process (`hit_ratio`, `floors`): the machine's drift between
//! processes and between criterion rows cancels out of a per-batch
//! ratio. Also the thread harness of the multi-thread benches (`threads`,
//! `floors`). Each bench uses part of this module.
#![allow(dead_code)]

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Entries in every cache the benches build, as in the criterion benches.
pub const ENTRIES: usize = 1000;
/// Operations per timed batch.
pub const BATCH: usize = 2000;
/// Batches per side.
pub const ROUNDS: usize = 600;

/// The cache key of entry `i`: 13 bytes.
pub fn key(i: usize) -> String {
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

/// The `q` quantile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Whether the command line names a filter that `name` does not contain
/// (`cargo bench` passes `--bench`; the first other argument filters).
pub fn filtered_out(name: &str) -> bool {
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    filter.is_some_and(|filter| !name.contains(filter.as_str()))
}

/// Prints the header line of [`compare`]'s table.
pub fn print_header() {
    println!(
        "{:<34} {:>11} {:>11}   per-batch ratio ({ROUNDS} pairs of {BATCH}-operation batches)",
        "pair", "base p50", "measured"
    );
}

/// Times `base` and `measured` in alternating batches and prints the median
/// of each side and the 10th, 50th and 90th percentiles of the per-batch
/// ratio (unless [`filtered_out`]).
pub fn compare(name: &str, base: &mut dyn FnMut(usize), measured: &mut dyn FnMut(usize)) {
    if filtered_out(name) {
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

/// Index of the `i`-th key of thread `t` of `threads`: thread `t` reads keys
/// `t`, `t + threads`, `t + 2 threads`, ... (no key shared between threads).
pub fn index(t: usize, i: u64, threads: usize) -> usize {
    (t + (i as usize % (ENTRIES / threads)) * threads) % ENTRIES
}

/// Runs `op(thread, i)` `iters` times on each of `threads` threads started
/// together; returns the wall time of the slowest thread.
pub fn run_threads(threads: usize, iters: u64, op: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        op(t, i);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap_or_default()
    })
}
