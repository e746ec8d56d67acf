//! Measures the memory a `SealCache` entry costs: heap bytes per cached
//! 64-byte secret (a counting global allocator) and locked bytes against
//! the number of entries (`locked_bytes()` and the kernel's `VmLck`).
//!
//! ```text
//! cargo run --release --example heap_per_entry
//! cargo run --release --features test-hooks --example heap_per_entry   # + testing::heap_bytes
//! ```
//!
//! Keys are `secret/000042` (13 bytes); each entry stores key + sealed value
//! (64 + 41 bytes) in one allocation, plus its share of the shard's node
//! vector and hash table.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::Duration;

use sealcache::SealCache;

/// Counts requested bytes (`Layout::size`) and, separately, the bytes glibc
/// really hands out (`malloc_usable_size`), live at any moment.
struct Counting;

static REQUESTED: AtomicIsize = AtomicIsize::new(0);
static USABLE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Live allocations of each requested size below 512 bytes (index = size),
/// and of larger sizes summed in bytes (last slot): where the bytes go.
static BY_SIZE: [AtomicIsize; 513] = [const { AtomicIsize::new(0) }; 513];

/// While set, the sizes of new allocations are recorded in `TRACED`.
static TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static TRACED: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];
static TRACED_N: AtomicUsize = AtomicUsize::new(0);

fn count(size: usize, sign: isize) {
    if sign > 0 && TRACE.load(Ordering::Relaxed) {
        let n = TRACED_N.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = TRACED.get(n) {
            slot.store(size, Ordering::Relaxed);
        }
    }
    if size < 512 {
        BY_SIZE[size].fetch_add(sign, Ordering::Relaxed);
    } else {
        BY_SIZE[512].fetch_add(sign * size as isize, Ordering::Relaxed);
    }
}

fn usable(ptr: *mut u8) -> isize {
    // SAFETY: `ptr` is a live allocation made by the system allocator
    // (`System` is malloc on Linux, also for aligned layouts up to 16 bytes;
    // larger alignments go through posix_memalign, also malloc-owned).
    unsafe { libc::malloc_usable_size(ptr.cast()) as isize }
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are
// side effects only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            REQUESTED.fetch_add(layout.size() as isize, Ordering::Relaxed);
            USABLE.fetch_add(usable(p), Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            count(layout.size(), 1);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            REQUESTED.fetch_add(layout.size() as isize, Ordering::Relaxed);
            USABLE.fetch_add(usable(p), Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            count(layout.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        REQUESTED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        count(layout.size(), -1);
        USABLE.fetch_sub(usable(ptr), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let before = usable(ptr);
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            REQUESTED.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            USABLE.fetch_add(usable(p) - before, Ordering::Relaxed);
            count(layout.size(), -1);
            count(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn snapshot() -> (isize, isize) {
    (
        REQUESTED.load(Ordering::Relaxed),
        USABLE.load(Ordering::Relaxed),
    )
}

/// `VmLck` of this process, in bytes (what the kernel counts as mlocked).
fn vm_locked() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmLck:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() -> Result<(), sealcache::Error> {
    println!("secret: 64 bytes; key: 13 bytes (`secret/000042`)");
    println!(
        "{:>9} {:>14} {:>14} {:>12} {:>12} {:>13} {:>10}",
        "entries",
        "req B/entry",
        "malloc B/entry",
        "heap_bytes/e",
        "locked_bytes",
        "VmLck bytes",
        "protection"
    );
    for entries in [1_000usize, 10_000, 100_000, 1_000_000] {
        let vm_before = vm_locked();
        let sizes_before: Vec<isize> = BY_SIZE.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let base = snapshot();
        let cache = SealCache::builder()
            .ttl(Duration::from_secs(3600))
            .max_entries(entries)
            .build()?;
        let empty = snapshot();
        let locked_empty = cache.locked_bytes();
        let vm_empty = vm_locked();
        let secret = [0x5au8; 64];
        let mut key = String::with_capacity(16);
        for i in 0..entries {
            use std::fmt::Write;
            key.clear();
            write!(key, "secret/{i:06}").unwrap();
            cache.insert(key.as_str(), &secret)?;
        }
        // Exercise the read paths too (`with` takes a locked scratch buffer).
        cache.get("secret/000000")?;
        cache.with("secret/000001", |b| b.len())?;
        assert_eq!(cache.len(), entries);
        let full = snapshot();
        let per_req = (full.0 - empty.0) as f64 / entries as f64;
        let per_usable = (full.1 - empty.1) as f64 / entries as f64;
        #[cfg(feature = "test-hooks")]
        let hooks = format!(
            "{:.1}",
            sealcache::testing::heap_bytes(&cache) as f64 / entries as f64
        );
        #[cfg(not(feature = "test-hooks"))]
        let hooks = "n/a".to_string();
        let vm_full = vm_locked();
        println!(
            "{:>9} {:>14.1} {:>14.1} {:>12} {:>12} {:>13} {:>10}",
            entries,
            per_req,
            per_usable,
            hooks,
            format!("{} -> {}", locked_empty, cache.locked_bytes()),
            format!(
                "{}->{}->{}",
                vm_before.unwrap_or(0),
                vm_empty.unwrap_or(0),
                vm_full.unwrap_or(0)
            ),
            cache.protections().backend.to_string(),
        );
        println!(
            "          empty cache: {} B requested, {} B malloc'd",
            empty.0 - base.0,
            empty.1 - base.1
        );
        let mut growth: Vec<(usize, isize)> = BY_SIZE
            .iter()
            .zip(&sizes_before)
            .enumerate()
            .map(|(size, (now, before))| (size, now.load(Ordering::Relaxed) - before))
            .filter(|&(_, n)| n != 0)
            .collect();
        growth.sort_by_key(|&(size, n)| {
            std::cmp::Reverse(if size == 512 { n } else { n * size as isize })
        });
        let top: Vec<String> = growth
            .iter()
            .take(4)
            .map(|&(size, n)| {
                if size == 512 {
                    format!(
                        "{:.1} B/entry in blocks >= 512 B",
                        n as f64 / entries as f64
                    )
                } else {
                    format!("{n} x {size} B")
                }
            })
            .collect();
        println!("          live allocations added: {}", top.join(", "));
        drop(cache);
    }
    // Which allocations one steady-state operation makes.
    let cache = SealCache::builder().max_entries(10).build()?;
    for i in 0..20 {
        cache.insert(format!("secret/{i:06}").as_str(), &[1u8; 64])?;
    }
    let traced = |label: &str, op: &dyn Fn()| {
        TRACED_N.store(0, Ordering::Relaxed);
        TRACE.store(true, Ordering::Relaxed);
        op();
        TRACE.store(false, Ordering::Relaxed);
        let n = TRACED_N.load(Ordering::Relaxed).min(TRACED.len());
        let sizes: Vec<usize> = TRACED[..n]
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect();
        println!(
            "{label}: {} allocation(s) of {:?} bytes",
            sizes.len(),
            sizes
        );
    };
    traced("insert (replace) of a 64-byte secret", &|| {
        cache.insert("secret/000015", &[2u8; 64]).unwrap();
    });
    traced("get hit of a 64-byte secret", &|| {
        drop(cache.get("secret/000015").unwrap());
    });
    traced(
        "first with hit (locks a scratch buffer for the pool)",
        &|| {
            cache.with("secret/000015", |b| b.len()).unwrap();
        },
    );
    traced("with hit of a 64-byte secret (pooled buffer)", &|| {
        cache.with("secret/000015", |b| b.len()).unwrap();
    });
    println!("allocations in total: {}", ALLOCS.load(Ordering::Relaxed));
    Ok(())
}
