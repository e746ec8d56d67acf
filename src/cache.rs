//! The public [`SealCache`]: ties the keyring, the store and the reaper
//! together and applies the protection policy.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::clock::nanos;
use crate::config::{Builder, Protection, Settings};
use crate::error::Error;
use crate::keyring::Keyring;
use crate::loader::{Flights, LoadCounters};
use crate::memory::{self, LockedBuf, ProtectionFailure, Protections};
use crate::reaper::{Reaper, Wipe};
use crate::seal;
use crate::secret::{CacheKey, SecretBytes, SecretValue};
use crate::store::{EntryBuf, Read, Stale, Store, Tally};

/// Longest accepted cache key, in bytes (64 KiB − 1).
pub const MAX_KEY_LEN: usize = u16::MAX as usize;
/// Longest accepted secret, in bytes (16 MiB).
pub const MAX_VALUE_LEN: usize = 16 * 1024 * 1024;

/// Number of shards of the store.
const SHARDS: usize = 64;
/// Stripes of the key slab's reader lock. Each thread reads keys through
/// its home stripe, so up to this many threads read keys without sharing a
/// lock's cache line; a writer (a new epoch key, a wipe) takes them all.
const KEY_LOCK_STRIPES: usize = 64;
/// Stripes of the pool of locked scratch buffers for [`SealCache::with`].
/// Each thread has a home stripe, so a buffer and its lock stay in one
/// core's cache; a thread borrows from another stripe only when its own is
/// empty.
const SCRATCH_STRIPES: usize = 8;
/// Scratch buffers kept per stripe: at most `SCRATCH_STRIPES` locked pages.
const SCRATCH_KEPT: usize = 1;

/// Counters of what the cache has done since it was built.
///
/// A read (`get`, `with`, the first look of `get_or_try_load`) that returns
/// `Ok` counts exactly once per look at the cache (a `get_or_try_load` that
/// retries after an abandoned flight looks again): as a hit, a miss or a
/// negative hit; one that finds a damaged entry counts one integrity
/// failure. Reads refused in a
/// forked child, and a `with` that found its entry but could not get a
/// locked scratch buffer (`Error::Protection`), count nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Reads that returned a value.
    pub hits: u64,
    /// Reads that found no live entry.
    pub misses: u64,
    /// Values stored (including replacements, loaded values and cached
    /// "not found" entries).
    pub inserts: u64,
    /// Live entries evicted to keep the size bound.
    pub evictions: u64,
    /// Entries removed because they had expired (on read, on eviction, or
    /// by the reaper when their key was wiped).
    pub expirations: u64,
    /// Entries that failed authentication on open and were dropped.
    pub integrity_failures: u64,
    /// Epoch keys created.
    pub keys_created: u64,
    /// Epoch keys wiped (at their deadline, or by `invalidate_all`).
    pub keys_wiped: u64,
    /// Epoch keys live right now.
    pub live_keys: u64,
    /// Whether the reaper thread is running.
    pub reaper_alive: bool,
    /// Loader calls made by `get_or_try_load` (including refreshes).
    pub loads: u64,
    /// Loader calls that returned an error.
    pub load_errors: u64,
    /// Callers that missed but did not load: they waited for another
    /// caller's load and took its outcome, or found a value stored just
    /// after their miss (by a load that finished, or by an `insert`). A
    /// waiter counts while it waits; if its leader is cancelled it is taken
    /// back out and looks again (it then counts again if it waits again, or
    /// in `loads` if it leads). An async waiter dropped while waiting stays
    /// counted.
    pub coalesced_waits: u64,
    /// Reads answered by a cached "not found" (negative caching).
    pub negative_hits: u64,
    /// Refresh-ahead reloads started.
    pub refreshes: u64,
    /// Expired values served because a reload failed (stale-if-error).
    pub stale_served: u64,
}

/// State shared by every handle and the reaper thread.
pub(crate) struct Core {
    pub(crate) keyring: Keyring,
    pub(crate) store: Store,
    pub(crate) settings: Settings,
    pub(crate) flights: Flights,
    pub(crate) load_counters: LoadCounters,
    protections: Protections,
    scratch: Box<[CachePadded<Mutex<Vec<LockedBuf>>>]>,
    /// Protections a scratch buffer for `with` could not get (BestEffort).
    scratch_missing: Mutex<Vec<ProtectionFailure>>,
    /// The page size, which sizes the scratch buffers.
    page: usize,
    jitter: std::hash::RandomState,
    jitter_counter: std::sync::atomic::AtomicU64,
}

impl Wipe for Core {
    fn wipe_key(&self, key_id: u64) {
        self.keyring.wipe(key_id);
        self.store.remove_sealed_under(key_id);
    }

    fn overdue(&self, now: u64) -> Vec<u64> {
        self.keyring.due(now)
    }

    fn shred_all(&self) {
        self.keyring.shred_all();
        drop(self.store.take_all());
    }

    fn forked(&self) -> bool {
        self.keyring.forked()
    }
}

/// What the handles own: the core and the reaper (joined on drop).
struct Shared {
    core: Arc<Core>,
    reaper: Reaper,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let forked = self.core.keyring.forked();
        self.reaper.shutdown(forked);
    }
}

/// A bounded TTL + LRU cache of secrets, sealed with XChaCha20-Poly1305
/// under epoch keys that live in locked memory and are wiped on schedule.
///
/// Cloning is cheap (an `Arc`); every clone is the same cache. Dropping the
/// last clone stops and joins the reaper thread and wipes every key (in a
/// forked child it leaves both alone: the thread does not exist there, and
/// the keys are absent or zeroed).
///
/// ```
/// use sealcache::{ExposeSecret, SealCache};
///
/// let cache = SealCache::builder().build()?;
/// cache.insert("db-password", "hunter2")?;
/// let secret = cache.get("db-password")?.expect("cached");
/// assert_eq!(secret.expose_secret(), b"hunter2");
/// // Or read it in place, from locked memory, without a heap copy:
/// let len = cache.with("db-password", |bytes| bytes.len())?;
/// assert_eq!(len, Some(7));
/// # Ok::<(), sealcache::Error>(())
/// ```
#[derive(Clone)]
pub struct SealCache {
    shared: Arc<Shared>,
}

impl fmt::Debug for SealCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = &self.core().settings;
        f.debug_struct("SealCache")
            .field("len", &self.len())
            .field("ttl", &settings.ttl)
            .field("max_entries", &settings.max_entries)
            .field("epoch_length", &settings.epoch)
            .finish_non_exhaustive()
    }
}

impl SealCache {
    /// A [`Builder`] with every default.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A cache configured from `SEALCACHE_TTL_SECS` and
    /// `SEALCACHE_MAX_ENTRIES` (defaults where unset).
    ///
    /// # Errors
    /// [`Error::Config`] for a bad variable value, or for a `SEALCACHE_`
    /// variable it does not read ([`ConfigError::UnknownEnv`](crate::ConfigError::UnknownEnv));
    /// otherwise as [`Builder::build`].
    pub fn from_env() -> Result<Self, Error> {
        Builder::from_env()?.build()
    }

    pub(crate) fn from_settings(settings: Settings) -> Result<Self, Error> {
        let page = memory::page_size().map_err(Error::Protection)?;
        let (keyring, protections) = Keyring::new(
            nanos(settings.epoch),
            nanos(settings.ttl).saturating_add(nanos(settings.max_stale)),
            KEY_LOCK_STRIPES,
            settings.backend,
        )?;
        if settings.protection == Protection::Require
            && let Some(failure) = first_missing(&protections)
        {
            return Err(Error::Protection(failure));
        }
        let core = Arc::new(Core {
            keyring,
            store: Store::new(
                SHARDS,
                settings.max_entries,
                nanos(settings.recency_resolution),
            ),
            flights: Flights::new(SHARDS),
            load_counters: LoadCounters::default(),
            jitter: std::hash::RandomState::new(),
            jitter_counter: std::sync::atomic::AtomicU64::new(0),
            protections,
            scratch: (0..SCRATCH_STRIPES)
                .map(|_| CachePadded::new(Mutex::new(Vec::new())))
                .collect(),
            scratch_missing: Mutex::new(Vec::new()),
            page,
            settings,
        });
        let reaper = Reaper::start(Arc::clone(&core.settings.clock), Arc::clone(&core))
            .map_err(|_| Error::Reaper)?;
        Ok(Self {
            shared: Arc::new(Shared { core, reaper }),
        })
    }

    fn core(&self) -> &Core {
        &self.shared.core
    }

    /// Whether this process is a fork of the one that built the cache.
    /// Every public entry point checks it before taking any lock: a lock
    /// that another thread of the parent held at `fork()` stays held forever
    /// in the child, where that thread does not exist.
    pub(crate) fn forked(&self) -> bool {
        self.core().keyring.forked()
    }

    pub(crate) fn now(&self) -> u64 {
        nanos(self.core().settings.clock.now())
    }

    pub(crate) fn store(&self) -> &Store {
        &self.core().store
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.core().flights
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.core().settings
    }

    pub(crate) fn load_counters(&self) -> &LoadCounters {
        &self.core().load_counters
    }

    /// How long past expiry a value may still be served after a failed load.
    pub(crate) fn stale_grace(&self) -> u64 {
        nanos(self.settings().max_stale)
    }

    /// The expiry of an entry stored at `now`: `now + ttl`, shortened by
    /// the configured jitter.
    fn expiry(&self, key: &[u8], now: u64) -> u64 {
        let core = self.core();
        let ttl = nanos(core.settings.ttl);
        let Some(fraction) = core.settings.ttl_jitter else {
            return now.saturating_add(ttl);
        };
        use std::hash::BuildHasher;
        let n = core.jitter_counter.fetch_add(1, Ordering::Relaxed);
        let unit = (core.jitter.hash_one((key, now, n)) >> 11) as f64 / (1u64 << 53) as f64;
        let cut = (ttl as f64 * fraction * unit) as u64;
        now.saturating_add(ttl - cut.min(ttl - 1))
    }

    /// Seals `secret` under the current epoch key and stores it under
    /// `key`, replacing any previous value. If this adds an entry to a full
    /// cache, the least recently used entry is evicted, to the
    /// [recency resolution](crate::Builder::recency_resolution) (replacing
    /// a value evicts nothing). Owned secrets are zeroized after sealing.
    /// A load of `key` in flight will not overwrite this value.
    ///
    /// # Errors
    /// [`Error::KeyTooLong`], [`Error::ValueTooLong`], [`Error::Random`],
    /// [`Error::Forked`], or [`Error::Reaper`] if the reaper has stopped.
    pub fn insert<K, V>(&self, key: &K, secret: V) -> Result<(), Error>
    where
        K: CacheKey + ?Sized,
        V: SecretValue,
    {
        if self.forked() {
            // Still consume the secret, so an owned one is wiped.
            secret.with_plaintext(|_| ());
            return Err(Error::Forked);
        }
        let key = key.key_bytes();
        let (shard, _) = self.store().locate(key);
        secret.with_plaintext(|plaintext| {
            self.flights().fence_on_success(shard, key, || {
                self.store_plaintext(key, plaintext, self.now())
            })
        })
    }

    /// Runs `f` with the current epoch's key (made, and handed to the
    /// reaper, if this is the epoch's first use); returns its result and the
    /// key's id.
    fn with_current_key<R>(
        &self,
        now: u64,
        f: impl FnOnce(u64, &[u8; seal::KEY_LEN]) -> R,
    ) -> Result<(R, u64), Error> {
        let keyring = &self.core().keyring;
        let (result, key_id, new_key) = keyring.with_current(now, f)?;
        if let Some(new_key) = new_key
            && !self
                .shared
                .reaper
                .schedule(new_key.key_id, new_key.deadline)
        {
            keyring.wipe(new_key.key_id);
            return Err(Error::Reaper);
        }
        Ok((result, key_id))
    }

    /// Stores a cached "not found" for `key` until `expires`, tied to the
    /// current epoch key so that the reaper drops it once it has expired.
    pub(crate) fn store_negative(&self, key: &[u8], expires: u64, now: u64) -> Result<(), Error> {
        let ((), key_id) = self.with_current_key(now, |_, _| ())?;
        self.core().store.insert_negative(key, expires, key_id, now);
        Ok(())
    }

    /// Seals `plaintext` and stores it under `key` at time `now`.
    pub(crate) fn store_plaintext(
        &self,
        key: &[u8],
        plaintext: &[u8],
        now: u64,
    ) -> Result<(), Error> {
        if key.len() > MAX_KEY_LEN {
            return Err(Error::KeyTooLong { len: key.len() });
        }
        if plaintext.len() > MAX_VALUE_LEN {
            return Err(Error::ValueTooLong {
                len: plaintext.len(),
            });
        }
        let core = self.core();
        let sealed_len = seal::sealed_len(plaintext.len()).ok_or(Error::ValueTooLong {
            len: plaintext.len(),
        })?;
        let mut entry =
            EntryBuf::new(key, sealed_len).ok_or(Error::KeyTooLong { len: key.len() })?;
        let (sealed, key_id) = self.with_current_key(now, |epoch, epoch_key| {
            let (key, out) = entry.key_and_sealed_mut();
            seal::seal_into(epoch_key, epoch, key, plaintext, out)
        })?;
        sealed.map_err(|_| Error::Random)?;
        let expires = self.expiry(key, now);
        core.store.insert(entry, expires, key_id, now);
        Ok(())
    }

    /// The secret under `key`, or `None` if there is no live entry. The
    /// returned [`SecretBytes`] is a heap copy that is zeroized on drop; use
    /// [`with`](Self::with) to avoid the copy.
    ///
    /// # Errors
    /// [`Error::Integrity`] if the entry failed authentication (it is
    /// dropped); [`Error::Forked`] in a forked child.
    pub fn get<K: CacheKey + ?Sized>(&self, key: &K) -> Result<Option<SecretBytes>, Error> {
        if self.forked() {
            return Err(Error::Forked);
        }
        // Stale entries (kept for stale-if-error) are a miss here, not
        // removed, and not decrypted.
        Ok(
            match self.read_secret(key.key_bytes(), self.now(), self.stale_grace(), Stale::Skip)? {
                Read::Hit(secret, _) => Some(secret),
                Read::Stale(_) | Read::Negative | Read::Miss => None,
            },
        )
    }

    /// Reads and opens the entry under `key` into a [`SecretBytes`] (a
    /// stale one only with [`Stale::Open`]).
    pub(crate) fn read_secret(
        &self,
        key: &[u8],
        now: u64,
        grace: u64,
        stale: Stale,
    ) -> Result<Read<SecretBytes>, Error> {
        self.read_with(key, now, grace, Tally::Count, stale)
    }

    /// As `read_secret`, not counted in hits and misses.
    pub(crate) fn peek_secret(
        &self,
        key: &[u8],
        now: u64,
        stale: Stale,
    ) -> Result<Read<SecretBytes>, Error> {
        self.read_with(key, now, self.stale_grace(), Tally::Quiet, stale)
    }

    fn read_with(
        &self,
        key: &[u8],
        now: u64,
        grace: u64,
        tally: Tally,
        stale: Stale,
    ) -> Result<Read<SecretBytes>, Error> {
        let core = self.core();
        core.store.read(key, now, grace, tally, stale, |found| {
            let len = seal::plaintext_len(found.sealed).ok_or(Error::Integrity)?;
            let opened = core.keyring.with_key(found.key_id, |epoch, epoch_key| {
                let mut out = SecretBytes::zeroed(len);
                seal::open_into(epoch_key, epoch, key, found.sealed, out.as_mut_slice())
                    .map(|()| out)
                    .map_err(|_| Error::Integrity)
            })?;
            opened.transpose()
        })
    }

    /// Opens the secret under `key` into a locked scratch buffer, runs `f`
    /// on it, and wipes the buffer: the plaintext never touches the
    /// unlocked heap (what `f` copies out is the caller's business).
    /// Returns `None`, without calling `f`, if there is no live entry.
    ///
    /// # Errors
    /// As [`get`](Self::get), plus [`Error::Protection`] under
    /// [`Protection::Require`] if a locked scratch buffer cannot be had.
    pub fn with<K, R>(&self, key: &K, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, Error>
    where
        K: CacheKey + ?Sized,
    {
        if self.forked() {
            return Err(Error::Forked);
        }
        let key = key.key_bytes();
        let core = self.core();
        let grace = self.stale_grace();
        let read = core
            .store
            .read(key, self.now(), grace, Tally::Count, Stale::Skip, |found| {
                let len = seal::plaintext_len(found.sealed).ok_or(Error::Integrity)?;
                let stripe = crate::home_stripe::home_stripe(SCRATCH_STRIPES);
                let mut buf = self.take_scratch(stripe, len)?;
                let opened = core.keyring.with_key(found.key_id, |epoch, epoch_key| {
                    seal::open_into(epoch_key, epoch, key, found.sealed, buf.slice_mut(len))
                        .map_err(|_| Error::Integrity)
                });
                match opened {
                    Ok(Some(Ok(()))) => Ok(Some((buf, len, stripe))),
                    Ok(None) => {
                        self.return_scratch(stripe, buf, len);
                        Ok(None)
                    }
                    Ok(Some(Err(err))) | Err(err) => {
                        self.return_scratch(stripe, buf, len);
                        Err(err)
                    }
                }
            })?;
        let (mut buf, len, stripe) = match read {
            Read::Hit(opened, _) => opened,
            // `Stale::Skip`: a stale entry is reported, never opened into a
            // scratch buffer.
            Read::Stale(_) | Read::Negative | Read::Miss => return Ok(None),
        };
        let result = f(buf.slice_mut(len));
        self.return_scratch(stripe, buf, len);
        Ok(Some(result))
    }

    /// The scratch pools to try: the thread's home stripe first (waiting for
    /// its lock), then every other stripe whose lock is free.
    fn scratch_pools(&self, home: usize) -> impl Iterator<Item = MutexGuard<'_, Vec<LockedBuf>>> {
        let pools = &self.core().scratch;
        (0..SCRATCH_STRIPES).filter_map(move |offset| {
            let slot = &pools[(home + offset) % SCRATCH_STRIPES];
            if offset == 0 {
                Some(slot.lock().unwrap_or_else(PoisonError::into_inner))
            } else {
                slot.try_lock().ok()
            }
        })
    }

    fn take_scratch(&self, stripe: usize, len: usize) -> Result<LockedBuf, Error> {
        let core = self.core();
        // A new locked buffer costs several system calls: borrow first.
        for mut pool in self.scratch_pools(stripe) {
            if let Some(pos) = pool.iter().position(|b| b.capacity() >= len) {
                return Ok(pool.swap_remove(pos));
            }
        }
        let (buf, missing) = LockedBuf::new(memory::page_filling_len(len, core.page))
            .map_err(|failure| Error::Protection(failure.in_scratch_buffer()))?;
        let missing: Vec<ProtectionFailure> = missing
            .into_iter()
            .map(ProtectionFailure::in_scratch_buffer)
            .collect();
        if let Some(failure) = missing.first() {
            if core.settings.protection == Protection::Require {
                return Err(Error::Protection(*failure));
            }
            let mut degraded = core
                .scratch_missing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for failure in missing {
                if !degraded.iter().any(|seen| seen.kind == failure.kind) {
                    degraded.push(failure);
                }
            }
        }
        Ok(buf)
    }

    /// Wipes the first `used` bytes of `buf` and keeps it for reuse.
    fn return_scratch(&self, stripe: usize, mut buf: LockedBuf, used: usize) {
        buf.wipe_prefix(used);
        for mut pool in self.scratch_pools(stripe) {
            if pool.len() < SCRATCH_KEPT {
                pool.push(buf);
                return;
            }
        }
        // Every stripe is full: free it (dropping wipes it again).
    }

    /// Removes the entry under `key`; returns whether there was one (an
    /// expired entry not yet removed counts, as in [`len`](Self::len)). A load
    /// of `key` already in flight will return its value to its callers but
    /// not cache it: no `get` after this returns sees a value loaded before.
    /// In a forked child (whose cache serves nothing) returns false.
    pub fn invalidate<K: CacheKey + ?Sized>(&self, key: &K) -> bool {
        if self.forked() {
            return false;
        }
        let key = key.key_bytes();
        let (shard, _) = self.store().locate(key);
        self.flights()
            .fence(shard, key, || self.store().remove(key))
    }

    /// Wipes every epoch key at once (crypto-erase: every sealed entry
    /// becomes undecryptable) and empties the cache. Its cost does not grow
    /// with the number of entries: their memory is released on the reaper
    /// thread. In a forked child it does nothing: there the keys are already
    /// gone (zeroed or unmapped).
    pub fn invalidate_all(&self) {
        if self.forked() {
            return;
        }
        let core = self.core();
        core.flights.fence_all();
        core.keyring.shred_all();
        let garbage = core.store.take_all();
        self.shared.reaper.dispose(garbage);
    }

    /// Number of entries held, cached "not found" entries included. Expired
    /// entries count until a read, an eviction or the reaper removes them:
    /// the reaper drops each entry with its epoch key, at most one epoch
    /// (plus `max_stale`, plus what TTL jitter cut off) after it expired; a
    /// cached "not found" goes with the key of the epoch it was stored in,
    /// up to one epoch plus `ttl − negative_ttl` (plus `max_stale`) after it
    /// expired.
    pub fn len(&self) -> usize {
        self.core().store.len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counters since the cache was built. In a forked child, all zero
    /// (and `reaper_alive` false): the child's copy serves nothing.
    pub fn stats(&self) -> Stats {
        if self.forked() {
            return Stats::default();
        }
        let core = self.core();
        let counters = core.store.counters();
        Stats {
            hits: counters.hits,
            misses: counters.misses,
            inserts: counters.inserts,
            evictions: counters.evictions,
            expirations: counters.expirations,
            integrity_failures: counters.integrity_failures,
            keys_created: core.keyring.created(),
            keys_wiped: core.keyring.wiped(),
            live_keys: core.keyring.live_keys() as u64,
            reaper_alive: self.shared.reaper.is_alive(),
            loads: load(&core.load_counters.loads),
            load_errors: load(&core.load_counters.load_errors),
            coalesced_waits: load(&core.load_counters.coalesced_waits),
            negative_hits: counters.negative_hits,
            refreshes: load(&core.load_counters.refreshes),
            stale_served: load(&core.load_counters.stale_served),
        }
    }

    /// Which memory protections are active: one applied by a system call
    /// only once its result (for the `memfd_secret` lock, the kernel's
    /// `/proc/self/smaps`) confirmed it when the key slab was allocated,
    /// the rest by how the slab is built. Under
    /// [`Protection::BestEffort`], a protection that a scratch buffer for
    /// [`with`](Self::with) could not get is reported off here too.
    pub fn protections(&self) -> Protections {
        let core = self.core();
        let mut report = core.protections.clone();
        if self.forked() {
            // The scratch pool's lock may be held by a thread of the parent.
            return report;
        }
        let degraded = core
            .scratch_missing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for failure in degraded.iter() {
            report.mark_missing(*failure);
        }
        report
    }

    /// Bytes of locked memory held for epoch keys (constant: it does not
    /// grow with the number of entries). 0 when the key slab could not be
    /// locked (under [`Protection::BestEffort`], see
    /// [`protections`](Self::protections)).
    pub fn locked_bytes(&self) -> usize {
        if self.core().protections.mlock {
            self.core().keyring.locked_bytes()
        } else {
            0
        }
    }

    /// Waits until the reaper has wiped every key whose deadline has
    /// passed. Returns false if the reaper has stopped, if its clock
    /// panicked during this pass (it tries again a second later), or in a
    /// forked child.
    pub fn sync_reaper(&self) -> bool {
        !self.forked() && self.shared.reaper.sync()
    }

    /// The time to live of entries.
    pub fn ttl(&self) -> Duration {
        self.core().settings.ttl
    }

    /// The length of one key epoch.
    pub fn epoch_length(&self) -> Duration {
        self.core().settings.epoch
    }

    /// The bound on the number of entries.
    pub fn max_entries(&self) -> usize {
        self.core().settings.max_entries
    }

    /// The recency resolution: a hit refreshes an entry's recency only if
    /// this long has passed since its last refresh (see
    /// [`Builder::recency_resolution`](crate::Builder::recency_resolution)).
    pub fn recency_resolution(&self) -> Duration {
        self.core().settings.recency_resolution
    }

    #[cfg(feature = "test-hooks")]
    pub(crate) fn core_for_hooks(&self) -> &Core {
        self.core()
    }
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The first baseline protection that is not active, as a failure to report.
fn first_missing(protections: &Protections) -> Option<ProtectionFailure> {
    let kind = *protections.missing().first()?;
    Some(protections.failure_of(kind))
}
