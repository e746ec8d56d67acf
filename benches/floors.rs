//! How much room issue 6's `get` targets leave for the cache itself.
//!
//! A *bare hit* is the thinnest hit any cache built to the design brief
//! pays: read the boot clock (the TTL is exact), hash the key with the
//! standard library's keyed SipHash (the cache keys may come from clients),
//! lock one of 64 shards, find the entry, check its expiry, copy its sealed
//! bytes out, unlock, open them with the crate's own open (the same one the
//! ratio targets divide by) and hand back a buffer that is zeroized when
//! dropped. It has none of `SealCache`'s bookkeeping: no recency, no
//! counters, no epoch-key lookup or lock, no fork check. A *bare unlocked
//! hit* also skips the shard lock (its tables are never written after they
//! are filled): the ceiling of any lock-free read path.
//!
//! Single thread, alternating batches in one process (as `hit_ratio`):
//! the bare hit against the crate's open, `get` against the bare hit and
//! against the open, `get` with exact LRU (`recency_resolution(0)`) against
//! `get` at the default resolution, and what the clock read and the hash
//! alone add to an open. Then 1 → 2 thread scaling on distinct keys, each round timing every
//! variant once on one thread and once on two. See BENCHMARKS.md ("Sixth
//! session: LRU at a resolution, and the floors of the targets").
//!
//! ```text
//! cargo bench --features test-hooks --bench floors
//! ```

mod common;

use std::hash::{BuildHasher, RandomState};
use std::hint::black_box;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use common::{ENTRIES, compare, index, key, percentile, print_header, run_threads};
use hashbrown::HashTable;
use sealcache::{BootClock, Clock, SealCache, testing};
use zeroize::Zeroizing;

const SIZE: usize = 64;
const SHARDS: usize = 64;
/// Sealed bytes of a 64-byte secret, with room to spare.
const SEALED_MAX: usize = 128;
/// Hits per thread per timed run of the scaling rounds.
const MT_ITERS: u64 = 100_000;
/// Scaling rounds (each times every variant on 1 and on 2 threads).
const MT_ROUNDS: usize = 15;

struct BareEntry {
    key: Box<[u8]>,
    expires: u64,
    sealed: Box<[u8]>,
}

/// The thinnest sealed cache the brief allows (see the module docs).
struct Bare {
    locked: Vec<Mutex<HashTable<BareEntry>>>,
    unlocked: Vec<HashTable<BareEntry>>,
    hasher: RandomState,
    epoch_key: [u8; 32],
}

fn now() -> u64 {
    u64::try_from(BootClock.now().as_nanos()).unwrap_or(u64::MAX)
}

impl Bare {
    fn new(keys: &[String], epoch_key: [u8; 32]) -> Self {
        let hasher = RandomState::new();
        let mut unlocked: Vec<HashTable<BareEntry>> =
            (0..SHARDS).map(|_| HashTable::new()).collect();
        let mut locked = unlocked
            .iter()
            .map(|_| HashTable::new())
            .collect::<Vec<_>>();
        let expires = now() + 3_600_000_000_000;
        for k in keys {
            let hash = hasher.hash_one(k.as_bytes());
            let entry = || BareEntry {
                key: k.as_bytes().into(),
                expires,
                sealed: testing::seal(&epoch_key, 1, k.as_bytes(), &[5u8; SIZE]).into(),
            };
            let rehash = |e: &BareEntry| hasher.hash_one(&*e.key);
            let shard = Self::shard(hash);
            unlocked[shard].insert_unique(hash, entry(), rehash);
            locked[shard].insert_unique(hash, entry(), rehash);
        }
        Self {
            locked: locked.into_iter().map(Mutex::new).collect(),
            unlocked,
            hasher,
            epoch_key,
        }
    }

    fn shard(hash: u64) -> usize {
        (hash >> 32) as usize & (SHARDS - 1)
    }

    /// Copies the live entry under `key` out of `table`; its length.
    fn copy_out(
        table: &HashTable<BareEntry>,
        hash: u64,
        key: &[u8],
        now: u64,
        out: &mut [u8],
    ) -> usize {
        let entry = table.find(hash, |e| &*e.key == key).expect("cached");
        assert!(now < entry.expires, "bare entries do not expire");
        out[..entry.sealed.len()].copy_from_slice(&entry.sealed);
        entry.sealed.len()
    }

    fn hit(&self, key: &[u8], lock: bool) -> Zeroizing<Vec<u8>> {
        let now = now();
        let hash = self.hasher.hash_one(key);
        let shard = Self::shard(hash);
        let mut sealed = [0u8; SEALED_MAX];
        let len = if lock {
            let table = self.locked[shard]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Self::copy_out(&table, hash, key, now, &mut sealed)
        } else {
            Self::copy_out(&self.unlocked[shard], hash, key, now, &mut sealed)
        };
        Zeroizing::new(testing::open(&self.epoch_key, 1, key, &sealed[..len]).expect("opens"))
    }
}

/// One scaling variant: `op(thread, i)`.
type Variant<'a> = (&'a str, &'a (dyn Fn(usize, u64) + Sync));

/// Times every variant on 1 and on 2 threads, [`MT_ROUNDS`] rounds in
/// turn, and prints per variant the median time per hit and the 10th,
/// 50th and 90th percentiles of the per-round scaling.
fn scaling(variants: &[Variant<'_>]) {
    println!(
        "\n{:<30} {:>10} {:>16}   1 -> 2 thread scaling ({MT_ROUNDS} rounds of {MT_ITERS} hits per thread)",
        "variant (distinct keys)", "1 thread", "2 threads, each"
    );
    let mut results = vec![(Vec::new(), Vec::new(), Vec::new()); variants.len()];
    for _ in 0..MT_ROUNDS {
        for ((_, op), (one, two, ratios)) in variants.iter().zip(&mut results) {
            let single = run_threads(1, MT_ITERS, op).as_secs_f64();
            let double = run_threads(2, MT_ITERS, op).as_secs_f64();
            one.push(single / MT_ITERS as f64 * 1e9);
            two.push(double / MT_ITERS as f64 * 1e9);
            ratios.push(2.0 * single / double);
        }
    }
    for ((name, _), (one, two, ratios)) in variants.iter().zip(&mut results) {
        for v in [&mut *one, &mut *two, &mut *ratios] {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "{name:<30} {:>7.0} ns {:>13.0} ns   p10 {:.2}  p50 {:.2}  p90 {:.2}",
            percentile(one, 0.5),
            percentile(two, 0.5),
            percentile(ratios, 0.1),
            percentile(ratios, 0.5),
            percentile(ratios, 0.9),
        );
    }
}

fn main() {
    // The default recency resolution (1 s at this TTL), and exact LRU.
    let [cache, exact] = [None, Some(Duration::ZERO)].map(|resolution| {
        let mut builder = SealCache::builder()
            .ttl(Duration::from_secs(3600))
            .max_entries(ENTRIES);
        if let Some(resolution) = resolution {
            builder = builder.recency_resolution(resolution);
        }
        builder
            .build()
            .expect("cache (needs mlock: run as root or raise RLIMIT_MEMLOCK)")
    });
    let keys: Vec<String> = (0..ENTRIES).map(key).collect();
    for cache in [&cache, &exact] {
        for k in &keys {
            cache.insert(k.as_str(), &[5u8; SIZE]).unwrap();
        }
    }
    let epoch_key = [7u8; 32];
    let bare = Bare::new(&keys, epoch_key);
    let sealed: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| testing::seal(&epoch_key, 1, k.as_bytes(), &[5u8; SIZE]))
        .collect();

    print_header();
    // As in `hit_ratio`: the base opens one entry, hot in the L1 cache.
    let open_one = || testing::open(&epoch_key, 1, keys[1].as_bytes(), black_box(&sealed[1]));
    let mut open = |_: usize| {
        black_box(open_one());
    };
    let mut bare_hit = |i: usize| {
        black_box(bare.hit(keys[i % ENTRIES].as_bytes(), true));
    };
    let mut get = |i: usize| {
        black_box(cache.get(keys[i % ENTRIES].as_str()).unwrap());
    };
    compare("bare hit 64 B / crate open", &mut open, &mut bare_hit);
    compare("get 64 B / bare hit", &mut bare_hit, &mut get);
    compare("get 64 B / crate open", &mut open, &mut get);
    let mut get_exact = |i: usize| {
        black_box(exact.get(keys[i % ENTRIES].as_str()).unwrap());
    };
    compare("get exact LRU 64 B / get", &mut get, &mut get_exact);
    let mut open_and_clock = |_: usize| {
        black_box(now());
        black_box(open_one());
    };
    compare("open + clock read / open", &mut open, &mut open_and_clock);
    let hasher = RandomState::new();
    let mut open_and_hash = |i: usize| {
        black_box(hasher.hash_one(keys[i % ENTRIES].as_bytes()));
        black_box(open_one());
    };
    compare(
        "open + SipHash of the key / open",
        &mut open,
        &mut open_and_hash,
    );

    if common::filtered_out("scaling") {
        return;
    }
    let open_own = |t: usize, i: u64| {
        let j = index(t, i, 2);
        black_box(testing::open(&epoch_key, 1, keys[j].as_bytes(), &sealed[j]));
    };
    let get_own = |t: usize, i: u64| {
        black_box(cache.get(keys[index(t, i, 2)].as_str()).unwrap());
    };
    let get_exact_own = |t: usize, i: u64| {
        black_box(exact.get(keys[index(t, i, 2)].as_str()).unwrap());
    };
    let bare_locked = |t: usize, i: u64| {
        black_box(bare.hit(keys[index(t, i, 2)].as_bytes(), true));
    };
    let bare_unlocked = |t: usize, i: u64| {
        black_box(bare.hit(keys[index(t, i, 2)].as_bytes(), false));
    };
    scaling(&[
        ("crate open (no shared state)", &open_own),
        ("sealcache get", &get_own),
        ("sealcache get, exact LRU", &get_exact_own),
        ("bare hit", &bare_locked),
        ("bare unlocked hit", &bare_unlocked),
    ]);
}
