//! A reference model of `SealCache`, and a harness that runs one sequence of
//! operations against the real cache and the model in lock step.
//!
//! Shared by the proptest state-machine test (`tests/model.rs`) and the
//! `cache_ops` fuzz target (`fuzz/fuzz_targets/cache_ops.rs`, which includes
//! this file by path). The model is written from the semantics in the API
//! notes, not from the implementation: a plain `Vec` of entries with exact
//! expiry (`t + ttl`), one global recency stamp for LRU at the configured
//! resolution (exact at zero), and a list
//! of epoch keys with their deadlines (`(e + 1) * R + ttl + max_stale`), and
//! the two opt-in loader knobs `negative_ttl` (cached "not found" entries)
//! and `max_stale` (stale-if-error within a grace period). Any divergence
//! in a returned value, in `len()` or in the statistics panics with the
//! operation that caused it.
//!
//! Time stays far from `u64::MAX` nanoseconds (every advance is bounded), so
//! no clock reading or deadline saturates: a key's deadline is then always
//! in the future when the key is made, and the reaper only acts inside
//! `ManualClock::advance`, which keeps the run deterministic.

#![allow(dead_code)]

use std::time::Duration;

use sealcache::{Error, ExposeSecret, LoadError, ManualClock, SealCache, Stats, testing};

/// Nanoseconds in a second.
pub const SEC: u64 = 1_000_000_000;
/// Cache keys are `key-0` .. `key-11`.
pub const KEYS: u8 = 12;
/// Longest operation sequence the harness runs.
pub const MAX_OPS: usize = 256;
/// Longest generated secret.
pub const MAX_VALUE_LEN: u8 = 48;

/// The cache configuration of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// TTL in whole seconds, 1..=4.
    pub ttl_secs: u64,
    /// The epoch is `ttl / epochs_per_ttl`, 1..=64.
    pub epochs_per_ttl: u32,
    /// Bound on the number of entries, 1..=8.
    pub max_entries: usize,
    /// `Builder::negative_ttl` in nanoseconds (1 ms..=ttl), or off.
    pub negative_ttl: Option<u64>,
    /// `Builder::max_stale` in nanoseconds (0..=ttl; 0 is off).
    pub max_stale: u64,
    /// `Builder::recency_resolution` in nanoseconds (0..=ttl; 0 is exact
    /// LRU).
    pub recency_resolution: u64,
}

impl Config {
    /// The configuration the issue names: TTL 4 s, epoch 1 s.
    pub const DEFAULT: Self = Self {
        ttl_secs: 4,
        epochs_per_ttl: 4,
        max_entries: 4,
        negative_ttl: None,
        max_stale: 0,
        recency_resolution: 0,
    };

    /// Builds a config from arbitrary numbers, folding each into its range.
    ///
    /// The low bits pick TTL (`ttl % 4`), epoch (`epochs % 8`) and bound
    /// (`max_entries % 8`) as they always did; the loader knobs come from
    /// bits that used to be ignored, so a byte below 4 (TTL) or 8 (epochs)
    /// leaves them off: `(ttl >> 2) % 8` picks `negative_ttl`, `(epochs >> 3)
    /// % 8` picks `max_stale` (0 and 7 are off for both), and `(max_entries
    /// >> 3) % 8` the recency resolution (0 and 7: exact LRU).
    pub fn from_raw(ttl: u8, epochs: u8, max_entries: u8) -> Self {
        const EPOCHS: [u32; 8] = [1, 2, 3, 4, 4, 7, 16, 64];
        const MS: u64 = 1_000_000;
        let ttl_secs = u64::from(ttl % 4) + 1;
        let t = ttl_secs * SEC;
        let negative_ttl = match (ttl >> 2) % 8 {
            0 | 7 => None,
            1 => Some(MS),
            2 => Some(100 * MS),
            3 => Some(SEC - 1),
            4 => Some(SEC),
            5 => Some(t / 2),
            _ => Some(t),
        };
        let max_stale = match (epochs >> 3) % 8 {
            0 | 7 => 0,
            1 => 1,
            2 => MS,
            3 => SEC / 2,
            4 => SEC,
            5 => t / 2,
            _ => t,
        };
        let recency_resolution = match (max_entries >> 3) % 8 {
            0 | 7 => 0,
            1 => 1,
            2 => MS,
            3 => 100 * MS,
            4 => SEC / 2,
            5 => SEC,
            _ => t,
        };
        Self {
            ttl_secs,
            epochs_per_ttl: EPOCHS[usize::from(epochs % 8)],
            max_entries: usize::from(max_entries % 8) + 1,
            negative_ttl,
            max_stale,
            recency_resolution,
        }
    }
}

/// Where to land relative to an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// One nanosecond before.
    Before,
    /// Exactly at.
    At,
    /// One nanosecond after.
    After,
}

impl Offset {
    fn apply(self, instant: u64) -> u64 {
        match self {
            Self::Before => instant - 1,
            Self::At => instant,
            Self::After => instant + 1,
        }
    }

    /// Picks an offset from an arbitrary byte.
    pub fn from_raw(raw: u8) -> Self {
        match raw % 3 {
            0 => Self::Before,
            1 => Self::At,
            _ => Self::After,
        }
    }
}

/// What a loader passed to `get_or_try_load` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// Returns a fresh value of this length.
    Found(u8),
    /// Reports "not found" (`Ok(None)`).
    NotFound,
    /// Fails (`Err`).
    Fail,
}

/// One operation of a run. Keys are indices (`key % KEYS`), lengths are
/// folded to `0..=MAX_VALUE_LEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `insert(key, fresh value of len bytes)`.
    Insert { key: u8, len: u8 },
    /// `get(key)`.
    Get { key: u8 },
    /// `with(key, copy)`.
    With { key: u8 },
    /// `get_or_try_load(key, loader)`.
    Load { key: u8, loader: Loader },
    /// `invalidate(key)`.
    Invalidate { key: u8 },
    /// `invalidate_all()`.
    InvalidateAll,
    /// `clock.advance(nanos)`.
    Advance { nanos: u64 },
    /// `clock.advance(secs s)`: a large step.
    AdvanceSecs { secs: u16 },
    /// Advance to just before, at or after the expiry of the `entry % len`-th
    /// held entry (in model order), or, if bit 7 of `entry` is set, the end
    /// of its stale grace (expiry + `max_stale`; the same instant when
    /// `max_stale` is off); nothing if that instant has passed.
    ToExpiry { entry: u8, offset: Offset },
    /// Advance to just before, at or after the deadline of the `key`-th
    /// live epoch key; nothing if that instant has passed.
    ToDeadline { key: u8, offset: Offset },
    /// `cache.sync_reaper()`.
    SyncReaper,
    /// `clock.advance(Duration::ZERO)`.
    AdvanceZero,
    /// Flip bits of the stored sealed bytes of `key` with `testing::tamper`.
    Tamper { key: u8, position: u16, mask: u8 },
}

/// The fresh secret of the `serial`-th value made in a run: distinct for
/// distinct serials whenever `len >= 1`.
pub fn value_of(serial: u64, key: u8, len: u8) -> Vec<u8> {
    let len = usize::from(len % (MAX_VALUE_LEN + 1));
    let mut out: Vec<u8> = (0..len)
        .map(|i| {
            (serial as u8)
                .wrapping_mul(31)
                .wrapping_add(key.wrapping_mul(7))
                .wrapping_add(i as u8)
        })
        .collect();
    let stamp = serial.to_le_bytes();
    let n = out.len().min(stamp.len());
    out[..n].copy_from_slice(&stamp[..n]);
    out
}

/// The cache key of index `key`.
pub fn key_name(key: u8) -> String {
    format!("key-{}", key % KEYS)
}

#[derive(Debug, Clone)]
struct Entry {
    key: u8,
    value: Vec<u8>,
    expires: u64,
    key_id: u64,
    /// Recency stamp of the last refresh.
    tick: u64,
    /// Time of the last refresh (the stamp is this, or later when stamps
    /// ran ahead of a clock that stood still).
    refreshed: u64,
    /// Time of the last use: the insert, or the last read that found the
    /// entry live, refreshing or not.
    used: u64,
    /// A cached "not found" (`negative_ttl`): no value and no sealed
    /// bytes; its key id is the epoch key current when it was stored.
    negative: bool,
    /// Bits flipped in the stored sealed bytes, per position (all zero:
    /// intact; flipping the same bits twice restores the entry).
    damage: Vec<u8>,
}

impl Entry {
    fn corrupt(&self) -> bool {
        self.damage.iter().any(|&d| d != 0)
    }
}

#[derive(Debug, Clone, Copy)]
struct EpochKey {
    id: u64,
    deadline: u64,
}

/// Counters the model predicts (the subset of [`Stats`] it covers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelStats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub integrity_failures: u64,
    pub keys_created: u64,
    pub keys_wiped: u64,
    pub live_keys: u64,
    pub loads: u64,
    pub load_errors: u64,
    pub negative_hits: u64,
    pub stale_served: u64,
}

impl ModelStats {
    fn of(stats: &Stats) -> Self {
        Self {
            hits: stats.hits,
            misses: stats.misses,
            inserts: stats.inserts,
            evictions: stats.evictions,
            expirations: stats.expirations,
            integrity_failures: stats.integrity_failures,
            keys_created: stats.keys_created,
            keys_wiped: stats.keys_wiped,
            live_keys: stats.live_keys,
            loads: stats.loads,
            load_errors: stats.load_errors,
            negative_hits: stats.negative_hits,
            stale_served: stats.stale_served,
        }
    }
}

/// What a read of the model found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A live entry's value.
    Value(Vec<u8>),
    /// Nothing live.
    Nothing,
    /// A live entry that fails authentication (it is dropped).
    Corrupt,
    /// A live cached "not found" (a negative hit).
    Negative,
    /// An entry past its expiry but within `max_stale` (a miss, kept).
    Stale(Vec<u8>),
}

/// The reference model.
#[derive(Debug, Clone)]
pub struct Model {
    ttl: u64,
    epoch: u64,
    max_entries: usize,
    negative_ttl: Option<u64>,
    max_stale: u64,
    recency_resolution: u64,
    now: u64,
    entries: Vec<Entry>,
    keys: Vec<EpochKey>,
    /// The key of the current epoch: (epoch, key id).
    current: Option<(u64, u64)>,
    next_key_id: u64,
    tick: u64,
    stats: ModelStats,
}

impl Model {
    /// An empty model at time zero.
    pub fn new(ttl: u64, epoch: u64, max_entries: usize) -> Self {
        Self {
            ttl,
            epoch,
            max_entries,
            negative_ttl: None,
            max_stale: 0,
            recency_resolution: 0,
            now: 0,
            entries: Vec::new(),
            keys: Vec::new(),
            current: None,
            next_key_id: 1,
            tick: 0,
            stats: ModelStats::default(),
        }
    }

    /// The model with the loader knobs set (nanoseconds).
    pub fn with_knobs(mut self, negative_ttl: Option<u64>, max_stale: u64) -> Self {
        self.negative_ttl = negative_ttl;
        self.max_stale = max_stale;
        self
    }

    /// The model with a recency resolution (nanoseconds; 0: exact LRU).
    pub fn with_recency_resolution(mut self, resolution: u64) -> Self {
        self.recency_resolution = resolution;
        self
    }

    /// Entries held (expired ones included until something removes them).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The predicted counters.
    pub fn stats(&self) -> ModelStats {
        ModelStats {
            live_keys: self.keys.len() as u64,
            ..self.stats
        }
    }

    fn position(&self, key: u8) -> Option<usize> {
        self.entries.iter().position(|e| e.key == key)
    }

    /// A new recency stamp: the time now, or one past the last stamp if
    /// that is later (stamps are unique and increase).
    fn next_tick(&mut self) -> u64 {
        self.tick = self.now.max(self.tick + 1);
        self.tick
    }

    /// A read of a live entry refreshes its recency, unless it was
    /// refreshed less than the resolution ago (a stamp ahead of the clock
    /// counts as just refreshed).
    fn refresh(&mut self, i: usize) {
        let now = self.now;
        self.entries[i].used = now;
        if now.saturating_sub(self.entries[i].tick) >= self.recency_resolution {
            let tick = self.next_tick();
            self.entries[i].tick = tick;
            self.entries[i].refreshed = now;
        }
    }

    /// The eviction guarantee of `Builder::recency_resolution`: the victim
    /// was last used at most a resolution after any other entry, give or
    /// take how far the other entry's stamp ran ahead of its refresh.
    fn check_victim(&self, victim: &Entry) {
        for other in &self.entries {
            let ahead = other.tick - other.refreshed;
            assert!(
                victim.used <= other.used + ahead + self.recency_resolution,
                "evicted key-{} (used at {}) although key-{} was used at {} \
                 (stamp {} ns ahead of its refresh; resolution {} ns)",
                victim.key,
                victim.used,
                other.key,
                other.used,
                ahead,
                self.recency_resolution,
            );
        }
    }

    /// The id of the current epoch's key, made on first use.
    fn current_key(&mut self) -> u64 {
        let epoch = self.now / self.epoch;
        if let Some((e, id)) = self.current
            && e == epoch
            && self.keys.iter().any(|k| k.id == id)
        {
            return id;
        }
        let id = self.next_key_id;
        self.next_key_id += 1;
        self.keys.push(EpochKey {
            id,
            deadline: (epoch + 1) * self.epoch + self.ttl + self.max_stale,
        });
        self.current = Some((epoch, id));
        self.stats.keys_created += 1;
        id
    }

    /// `insert(key, value)` now.
    pub fn insert(&mut self, key: u8, value: Vec<u8>) {
        let key_id = self.current_key();
        let expires = self.now + self.ttl;
        self.store(key, value, expires, key_id, false);
    }

    /// A loader's "not found" that was not fenced: any entry for `key` is
    /// removed, and with `negative_ttl` a negative entry is stored as a new
    /// most recently used entry (an insert, which may evict).
    pub fn load_not_found(&mut self, key: u8) {
        self.invalidate(key);
        if let Some(negative_ttl) = self.negative_ttl {
            // Tied to the current epoch key (made if needed), so the reaper
            // drops it with that key, after it expired.
            let key_id = self.current_key();
            let expires = self.now + negative_ttl;
            self.store(key, Vec::new(), expires, key_id, true);
        }
    }

    /// Stores an entry as the most recently used, replacing any under
    /// `key`; evicts the least recently used entry beyond the bound.
    fn store(&mut self, key: u8, value: Vec<u8>, expires: u64, key_id: u64, negative: bool) {
        let tick = self.next_tick();
        self.stats.inserts += 1;
        let entry = Entry {
            key,
            value,
            expires,
            key_id,
            tick,
            refreshed: self.now,
            used: self.now,
            negative,
            damage: Vec::new(),
        };
        if let Some(i) = self.position(key) {
            self.entries[i] = entry;
            return;
        }
        self.entries.push(entry);
        if self.entries.len() > self.max_entries {
            let (lru, _) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.tick)
                .expect("not empty");
            let victim = self.entries.remove(lru);
            self.check_victim(&victim);
            if self.now >= victim.expires {
                self.stats.expirations += 1;
            } else {
                self.stats.evictions += 1;
            }
        }
    }

    /// A counted read (`get`, `with`, or the first look of a load).
    pub fn read(&mut self, key: u8) -> Found {
        let Some(i) = self.position(key) else {
            self.stats.misses += 1;
            return Found::Nothing;
        };
        let entry = &self.entries[i];
        let past = self.now >= entry.expires;
        // Negative entries get no grace; others are kept (stale) until
        // `max_stale` past their expiry.
        if past && (entry.negative || self.now - entry.expires >= self.max_stale) {
            self.entries.remove(i);
            self.stats.misses += 1;
            self.stats.expirations += 1;
            return Found::Nothing;
        }
        if past {
            // Stale: a miss, kept, recency untouched, and not opened (so a
            // damaged stale entry is not noticed here).
            self.stats.misses += 1;
            return Found::Stale(entry.value.clone());
        }
        // A live entry (a negative one too) is refreshed when it is found,
        // before it is opened: one that then fails to open took a stamp.
        let (negative, corrupt) = (entry.negative, entry.corrupt());
        self.refresh(i);
        if negative {
            self.stats.negative_hits += 1;
            return Found::Negative;
        }
        if corrupt {
            self.entries.remove(i);
            self.stats.integrity_failures += 1;
            return Found::Corrupt;
        }
        self.stats.hits += 1;
        Found::Value(self.entries[i].value.clone())
    }

    /// A failed load's fallback, read when the loader gives up: the stale
    /// entry under `key` opened (not counted as a hit or miss); a damaged
    /// one is removed and counted as an integrity failure.
    pub fn fallback(&mut self, key: u8) -> Option<Vec<u8>> {
        let i = self.position(key)?;
        let entry = &self.entries[i];
        let stale = !entry.negative
            && self.now >= entry.expires
            && self.now - entry.expires < self.max_stale;
        if !stale {
            return None;
        }
        if entry.corrupt() {
            self.entries.remove(i);
            self.stats.integrity_failures += 1;
            return None;
        }
        Some(entry.value.clone())
    }

    /// `invalidate(key)`: whether an entry (live or expired) was held.
    pub fn invalidate(&mut self, key: u8) -> bool {
        match self.position(key) {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// `invalidate_all()`: every entry gone, every key shredded.
    pub fn invalidate_all(&mut self) {
        self.entries.clear();
        self.stats.keys_wiped += self.keys.len() as u64;
        self.keys.clear();
        self.current = None;
    }

    /// The clock moves to `to`; the reaper wipes every key due by then and
    /// drops the entries sealed under it.
    pub fn advance_to(&mut self, to: u64) {
        assert!(to >= self.now, "the model clock never goes back");
        self.now = to;
        let now = self.now;
        let due: Vec<u64> = self
            .keys
            .iter()
            .filter(|k| k.deadline <= now)
            .map(|k| k.id)
            .collect();
        for id in due {
            self.keys.retain(|k| k.id != id);
            self.stats.keys_wiped += 1;
            let before = self.entries.len();
            self.entries.retain(|e| e.key_id != id);
            self.stats.expirations += (before - self.entries.len()) as u64;
        }
    }

    /// Flips the bits `mask` of byte `at` of `key`'s stored sealed entry;
    /// whether it was held.
    pub fn tamper(&mut self, key: u8, at: usize, mask: u8) -> bool {
        let Some(i) = self.position(key) else {
            return false;
        };
        if self.entries[i].negative {
            // No sealed bytes to flip.
            return true;
        }
        let sealed_len = self.entries[i].value.len() + testing::SEAL_OVERHEAD;
        let damage = &mut self.entries[i].damage;
        damage.resize(sealed_len, 0);
        damage[at] ^= mask;
        true
    }

    /// Sealed length of `key`'s stored entry, if held.
    pub fn sealed_len(&self, key: u8) -> Option<usize> {
        self.position(key).map(|i| {
            let entry = &self.entries[i];
            if entry.negative {
                0
            } else {
                entry.value.len() + testing::SEAL_OVERHEAD
            }
        })
    }

    /// The end of the stale grace of the `index`-th held entry (wrapping):
    /// its expiry, plus `max_stale` unless it is a negative entry.
    pub fn stale_end_of(&self, index: u8) -> Option<u64> {
        if self.entries.is_empty() {
            return None;
        }
        let entry = &self.entries[usize::from(index) % self.entries.len()];
        Some(if entry.negative {
            entry.expires
        } else {
            entry.expires + self.max_stale
        })
    }

    /// The expiry of the `index`-th held entry (wrapping), if any.
    pub fn expiry_of(&self, index: u8) -> Option<u64> {
        if self.entries.is_empty() {
            return None;
        }
        Some(self.entries[usize::from(index) % self.entries.len()].expires)
    }

    /// The deadline of the `index`-th live key (wrapping), if any.
    pub fn deadline_of(&self, index: u8) -> Option<u64> {
        if self.keys.is_empty() {
            return None;
        }
        Some(self.keys[usize::from(index) % self.keys.len()].deadline)
    }

    /// The model's clock reading.
    pub fn now(&self) -> u64 {
        self.now
    }
}

/// The error the failing loader returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderFailed(pub u64);

/// A real cache on a `ManualClock` and the model, driven together.
pub struct Harness {
    pub clock: ManualClock,
    pub cache: SealCache,
    pub model: Model,
    /// Values made so far (serial numbers of fresh secrets).
    serial: u64,
    /// Reads that returned `Ok` and counted one hit or one miss (negative
    /// hits count in neither).
    reads: u64,
    /// Operations applied.
    step: usize,
}

impl Harness {
    /// A fresh cache with `config` and a model in the same state.
    pub fn new(config: Config) -> Self {
        let clock = ManualClock::new();
        let ttl = Duration::from_secs(config.ttl_secs);
        let mut builder = SealCache::builder()
            .ttl(ttl)
            .epoch_length(ttl / config.epochs_per_ttl)
            .max_entries(config.max_entries)
            .clock(clock.clone());
        if let Some(negative_ttl) = config.negative_ttl {
            builder = builder.negative_ttl(Duration::from_nanos(negative_ttl));
        }
        if config.max_stale > 0 {
            builder = builder.max_stale(Duration::from_nanos(config.max_stale));
        }
        builder = builder.recency_resolution(Duration::from_nanos(config.recency_resolution));
        let cache = builder
            .build()
            .expect("a cache builds with every protection on this machine");
        let epoch = u64::try_from(cache.epoch_length().as_nanos()).expect("small");
        assert_eq!(cache.ttl(), ttl);
        assert_eq!(cache.max_entries(), config.max_entries);
        let model = Model::new(config.ttl_secs * SEC, epoch, config.max_entries)
            .with_knobs(config.negative_ttl, config.max_stale)
            .with_recency_resolution(config.recency_resolution);
        Self {
            clock,
            cache,
            model,
            serial: 0,
            reads: 0,
            step: 0,
        }
    }

    /// Runs `ops` (at most [`MAX_OPS`]) on a fresh cache, checking every step.
    pub fn run(config: Config, ops: &[Op]) {
        let mut harness = Self::new(config);
        for op in ops.iter().take(MAX_OPS) {
            harness.apply(op);
        }
        harness.finish();
    }

    fn fresh_value(&mut self, key: u8, len: u8) -> Vec<u8> {
        self.serial += 1;
        value_of(self.serial, key, len)
    }

    fn advance(&mut self, by: u64) {
        self.clock.advance(Duration::from_nanos(by));
        self.model.advance_to(self.model.now() + by);
    }

    /// The real clock reading, in nanoseconds.
    fn real_now(&self) -> u64 {
        use sealcache::Clock;
        u64::try_from(self.clock.now().as_nanos()).expect("small")
    }

    /// Applies one operation to both and compares everything observable.
    pub fn apply(&mut self, op: &Op) {
        self.step += 1;
        let step = self.step;
        match *op {
            Op::Insert { key, len } => {
                let value = self.fresh_value(key, len);
                self.cache
                    .insert(&key_name(key), value.as_slice())
                    .unwrap_or_else(|e| panic!("step {step} {op:?}: insert failed: {e:?}"));
                self.model.insert(key % KEYS, value);
            }
            Op::Get { key } => {
                let real = self.cache.get(&key_name(key)).map(|found| match found {
                    Some(secret) => Found::Value(secret.expose_secret().to_vec()),
                    None => Found::Nothing,
                });
                self.compare_read(op, real);
            }
            Op::With { key } => {
                let mut calls = 0;
                let real = self
                    .cache
                    .with(&key_name(key), |bytes| {
                        calls += 1;
                        bytes.to_vec()
                    })
                    .map(|found| match found {
                        Some(bytes) => Found::Value(bytes),
                        None => Found::Nothing,
                    });
                let expected_calls = usize::from(matches!(real, Ok(Found::Value(_))));
                assert_eq!(calls, expected_calls, "step {step} {op:?}: closure calls");
                self.compare_read(op, real);
            }
            Op::Load { key, loader } => self.load(op, key, loader),
            Op::Invalidate { key } => {
                let real = self.cache.invalidate(&key_name(key));
                let expected = self.model.invalidate(key % KEYS);
                assert_eq!(real, expected, "step {step} {op:?}: invalidate result");
            }
            Op::InvalidateAll => {
                self.cache.invalidate_all();
                self.model.invalidate_all();
            }
            Op::Advance { nanos } => self.advance(nanos % (8 * SEC)),
            Op::AdvanceSecs { secs } => self.advance(u64::from(secs) * SEC),
            Op::ToExpiry { entry, offset } => {
                let instant = if entry & 0x80 == 0 {
                    self.model.expiry_of(entry)
                } else {
                    self.model.stale_end_of(entry)
                };
                if let Some(expiry) = instant {
                    let target = offset.apply(expiry);
                    if target >= self.model.now() {
                        self.advance(target - self.model.now());
                    }
                }
            }
            Op::ToDeadline { key, offset } => {
                if let Some(deadline) = self.model.deadline_of(key) {
                    let target = offset.apply(deadline);
                    if target >= self.model.now() {
                        self.advance(target - self.model.now());
                    }
                }
            }
            Op::SyncReaper => {
                assert!(self.cache.sync_reaper(), "step {step}: reaper stopped");
            }
            Op::AdvanceZero => self.advance(0),
            Op::Tamper {
                key,
                position,
                mask,
            } => {
                let at = self
                    .model
                    .sealed_len(key % KEYS)
                    .and_then(|len| usize::from(position).checked_rem(len));
                let mut seen_len = None;
                let real = testing::tamper(&self.cache, key_name(key).as_bytes(), |sealed| {
                    seen_len = Some(sealed.len());
                    if let Some(at) = at
                        && at < sealed.len()
                    {
                        sealed[at] ^= mask;
                    }
                });
                let expected = self.model.tamper(key % KEYS, at.unwrap_or(0), mask);
                assert_eq!(real, expected, "step {step} {op:?}: tamper found the entry");
                assert_eq!(
                    seen_len,
                    self.model.sealed_len(key % KEYS),
                    "step {step} {op:?}: stored sealed length"
                );
            }
        }
        self.check(op);
    }

    fn compare_read(&mut self, op: &Op, real: Result<Found, Error>) {
        let step = self.step;
        let key = match *op {
            Op::Get { key } | Op::With { key } => key,
            _ => unreachable!("only reads"),
        };
        let expected = self.model.read(key % KEYS);
        // Negative and stale entries read as nothing; only a negative hit
        // is not a hit or a miss.
        let counted = expected != Found::Negative;
        let expected = match expected {
            Found::Negative | Found::Stale(_) => Found::Nothing,
            other => other,
        };
        match (real, expected) {
            (Err(Error::Integrity), Found::Corrupt) => {}
            (Ok(found), expected) => {
                self.reads += u64::from(counted);
                assert_eq!(
                    found,
                    expected,
                    "step {step} {op:?} at t={}ns: value",
                    self.model.now()
                );
            }
            (real, expected) => {
                panic!("step {step} {op:?}: cache returned {real:?}, model expects {expected:?}")
            }
        }
    }

    fn load(&mut self, op: &Op, key: u8, loader: Loader) {
        let step = self.step;
        let fresh = match loader {
            Loader::Found(len) => Some(self.fresh_value(key, len)),
            _ => None,
        };
        let serial = self.serial;
        let mut called = 0;
        let real = self.cache.get_or_try_load(&key_name(key), || {
            called += 1;
            match loader {
                Loader::Found(_) => Ok(fresh.clone()),
                Loader::NotFound => Ok(None),
                Loader::Fail => Err(LoaderFailed(serial)),
            }
        });
        let expected = self.model.read(key % KEYS);
        let expected_calls = usize::from(matches!(expected, Found::Nothing | Found::Stale(_)));
        assert_eq!(called, expected_calls, "step {step} {op:?}: loader calls");
        match (real, expected) {
            (Err(LoadError::Cache(Error::Integrity)), Found::Corrupt) => {}
            // A negative hit: "not found" without a load, not a hit or miss.
            (Ok(None), Found::Negative) => {}
            (Ok(Some(secret)), Found::Value(value)) => {
                self.reads += 1;
                assert_eq!(
                    secret.expose_secret(),
                    value.as_slice(),
                    "step {step} {op:?}: cached value"
                );
            }
            (real, expected @ (Found::Nothing | Found::Stale(_))) => {
                self.reads += 1;
                self.model.stats.loads += 1;
                // Only a failed load reads its fallback, when it gives up.
                let stale = match (&expected, loader) {
                    (Found::Stale(_), Loader::Fail) => self.model.fallback(key % KEYS),
                    _ => None,
                };
                match (real, loader, fresh) {
                    (Ok(Some(secret)), Loader::Found(_), Some(value)) => {
                        assert_eq!(
                            secret.expose_secret(),
                            value.as_slice(),
                            "step {step} {op:?}: loaded value"
                        );
                        self.model.insert(key % KEYS, value);
                    }
                    (Ok(None), Loader::NotFound, _) => {
                        self.model.load_not_found(key % KEYS);
                    }
                    // Stale-if-error: the old value instead of the error;
                    // the stale entry stays as it was.
                    (Ok(Some(secret)), Loader::Fail, _) if stale.is_some() => {
                        assert_eq!(
                            Some(secret.expose_secret()),
                            stale.as_deref(),
                            "step {step} {op:?}: stale value served"
                        );
                        self.model.stats.load_errors += 1;
                        self.model.stats.stale_served += 1;
                    }
                    (Err(LoadError::Loader(err)), Loader::Fail, _) if stale.is_none() => {
                        assert_eq!(*err, LoaderFailed(serial), "step {step} {op:?}");
                        self.model.stats.load_errors += 1;
                    }
                    (real, loader, _) => {
                        panic!("step {step} {op:?}: loader {loader:?} but cache returned {real:?}")
                    }
                }
            }
            (real, expected) => {
                panic!("step {step} {op:?}: cache returned {real:?}, model expects {expected:?}")
            }
        }
    }

    /// Compares `len()`, `is_empty()`, the clock and the statistics.
    pub fn check(&self, op: &Op) {
        let step = self.step;
        assert_eq!(
            self.real_now(),
            self.model.now(),
            "step {step} {op:?}: clock"
        );
        assert_eq!(
            self.cache.len(),
            self.model.len(),
            "step {step} {op:?} at t={}ns: len",
            self.model.now()
        );
        assert_eq!(self.cache.is_empty(), self.model.len() == 0);
        let stats = self.cache.stats();
        assert_eq!(
            ModelStats::of(&stats),
            self.model.stats(),
            "step {step} {op:?} at t={}ns: stats",
            self.model.now()
        );
        assert_eq!(
            stats.hits + stats.misses,
            self.reads,
            "step {step} {op:?}: every read is one hit or one miss"
        );
        assert!(stats.reaper_alive, "step {step}: reaper alive");
        assert_eq!(
            (stats.coalesced_waits, stats.refreshes),
            (0, 0),
            "step {step} {op:?}: features that are off stay at zero"
        );
    }

    /// End of a run: shredding everything leaves an empty cache and slab.
    pub fn finish(mut self) {
        let op = Op::InvalidateAll;
        self.apply(&op);
        assert!(testing::slab_is_zero(&self.cache), "slab wiped");
        assert_eq!(self.cache.stats().live_keys, 0);
    }
}

/// Reads fuzzer bytes front to back; past the end every read is zero.
pub struct ByteReader<'a> {
    data: &'a [u8],
}

impl<'a> ByteReader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte, or 0.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next two bytes as a little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// The next four bytes as a little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

/// Decodes a `cache_ops` fuzz input (the format is in `fuzz/README.md`):
/// three configuration bytes, then operations of one tag byte (`tag % 13`)
/// and fixed-size arguments each, at most [`MAX_OPS`]. The loader knobs
/// live in the high bits of the first two configuration bytes (see
/// [`Config::from_raw`]); inputs whose bytes 0 and 1 are below 4 and 8
/// run with both knobs off, as before.
pub fn decode(data: &[u8]) -> (Config, Vec<Op>) {
    let mut r = ByteReader::new(data);
    let config = Config::from_raw(r.u8(), r.u8(), r.u8());
    let mut ops = Vec::new();
    while !r.is_empty() && ops.len() < MAX_OPS {
        let op = match r.u8() % 13 {
            0 => Op::Insert {
                key: r.u8(),
                len: r.u8(),
            },
            1 => Op::Get { key: r.u8() },
            2 => Op::With { key: r.u8() },
            3 => {
                let key = r.u8();
                let loader = match r.u8() % 3 {
                    0 => Loader::Found(r.u8()),
                    1 => Loader::NotFound,
                    _ => Loader::Fail,
                };
                Op::Load { key, loader }
            }
            4 => Op::Invalidate { key: r.u8() },
            5 => Op::InvalidateAll,
            6 => Op::Advance {
                nanos: u64::from(r.u32()),
            },
            7 => Op::AdvanceSecs { secs: r.u16() },
            8 => Op::ToExpiry {
                entry: r.u8(),
                offset: Offset::from_raw(r.u8()),
            },
            9 => Op::ToDeadline {
                key: r.u8(),
                offset: Offset::from_raw(r.u8()),
            },
            10 => Op::SyncReaper,
            11 => Op::AdvanceZero,
            _ => Op::Tamper {
                key: r.u8(),
                position: r.u16(),
                mask: r.u8(),
            },
        };
        ops.push(op);
    }
    (config, ops)
}
