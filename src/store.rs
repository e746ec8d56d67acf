//! The sharded LRU of sealed entries, with exact expiry.
//!
//! Each shard is a mutex around a hash table of node indices, a slab of
//! nodes and an intrusive recency list. A global recency stamp orders
//! refreshes across shards, and each shard publishes the stamp of its least
//! recently used node, so eviction removes the globally least recently
//! refreshed entry while hits on different shards never share a lock.
//! Entries hold ciphertext only; the plaintext never reaches this module.
//!
//! A stamp is the clock reading of its refresh, or one nanosecond past the
//! previous stamp if that is later: stamps are unique (until they reach
//! [`LAST_TICK`], at the end of the clock's range), increase in the order
//! they are taken, and are never earlier than their refresh. A hit on an
//! entry stamped less than the recency resolution ago leaves it alone (no
//! stamp, no relinking), so a hot entry's hits write nothing that other
//! threads read but the shard's lock and counters; with a resolution of
//! zero every hit refreshes and the LRU is exact.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;

use crate::error::Error;

const NIL: u32 = u32::MAX;
/// Key id of a free node (no key ever has it).
const FREE: u64 = 0;
/// Published tail tick of an empty shard.
const EMPTY: u64 = u64::MAX;
/// How many times one eviction reads the shards' tails again after finding
/// that the shard it picked changed in between.
const LOOK_AGAIN: u32 = 8;
/// The latest recency stamp: stamps stop here (below [`EMPTY`]) on a clock
/// at the end of its range, so a full shard never looks empty.
const LAST_TICK: u64 = EMPTY - 1;

/// Counters kept per shard under its lock and summed on demand.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) inserts: u64,
    pub(crate) evictions: u64,
    pub(crate) expirations: u64,
    pub(crate) integrity_failures: u64,
    pub(crate) negative_hits: u64,
}

impl Counters {
    fn add(&mut self, other: &Self) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.inserts += other.inserts;
        self.evictions += other.evictions;
        self.expirations += other.expirations;
        self.integrity_failures += other.integrity_failures;
        self.negative_hits += other.negative_hits;
    }
}

/// The bytes of one entry in a single allocation: the key's length
/// (`u16`, little-endian), the key, then the sealed value.
#[derive(Debug, Default)]
pub(crate) struct EntryBuf(Box<[u8]>);

/// Bytes of the key-length header of an [`EntryBuf`].
const KEY_LEN_BYTES: usize = 2;

impl EntryBuf {
    /// A buffer for `key` and `sealed_len` zeroed bytes of sealed value;
    /// `None` if the key is longer than `u16::MAX` bytes.
    pub(crate) fn new(key: &[u8], sealed_len: usize) -> Option<Self> {
        let key_len = u16::try_from(key.len()).ok()?;
        let total = KEY_LEN_BYTES
            .checked_add(key.len())?
            .checked_add(sealed_len)?;
        let mut data = vec![0u8; total].into_boxed_slice();
        data[..KEY_LEN_BYTES].copy_from_slice(&key_len.to_le_bytes());
        data[KEY_LEN_BYTES..KEY_LEN_BYTES + key.len()].copy_from_slice(key);
        Some(Self(data))
    }

    fn key_end(&self) -> usize {
        match self.0.first_chunk::<KEY_LEN_BYTES>() {
            Some(len) => KEY_LEN_BYTES + usize::from(u16::from_le_bytes(*len)),
            None => 0,
        }
    }

    /// The cache key.
    pub(crate) fn key(&self) -> &[u8] {
        self.0
            .get(KEY_LEN_BYTES..self.key_end())
            .unwrap_or_default()
    }

    /// The sealed value.
    pub(crate) fn sealed(&self) -> &[u8] {
        self.0.get(self.key_end()..).unwrap_or_default()
    }

    /// The sealed value, for tampering with in tests.
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn sealed_mut(&mut self) -> &mut [u8] {
        let start = self.key_end();
        self.0.get_mut(start..).unwrap_or_default()
    }

    /// The cache key and the sealed value, for sealing into.
    pub(crate) fn key_and_sealed_mut(&mut self) -> (&[u8], &mut [u8]) {
        let end = self.key_end();
        let (head, sealed) = self.0.split_at_mut(end.min(self.0.len()));
        (head.get(KEY_LEN_BYTES..).unwrap_or_default(), sealed)
    }
}

/// One cached entry and its place in the recency list. 48 bytes.
#[derive(Debug)]
struct Node {
    entry: EntryBuf,
    prev: u32,
    next: u32,
    /// Recency stamp of the entry's last refresh (see the module docs).
    tick: u64,
    expires: u64,
    key_id: u64,
}

impl Node {
    fn key(&self) -> &[u8] {
        self.entry.key()
    }
    fn sealed(&self) -> &[u8] {
        self.entry.sealed()
    }
    /// A cached "not found": an entry with no sealed bytes (a sealed value
    /// is never empty). Its key id is the epoch key current when it was
    /// stored, so the reaper drops it with that key, after it expired.
    fn is_negative(&self) -> bool {
        self.entry.sealed().is_empty()
    }
}

/// Storage of one shard.
#[derive(Debug)]
struct Shard {
    table: HashTable<u32>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    counters: Counters,
}

impl Shard {
    fn new() -> Self {
        Self {
            table: HashTable::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            counters: Counters::default(),
        }
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let nodes = &self.nodes;
        self.table
            .find(hash, |&i| nodes[i as usize].key() == key)
            .copied()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let node = &self.nodes[i as usize];
            (node.prev, node.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32, tick: u64) {
        let old_head = self.head;
        {
            let node = &mut self.nodes[i as usize];
            node.prev = NIL;
            node.next = old_head;
            node.tick = tick;
        }
        match old_head {
            NIL => self.tail = i,
            h => self.nodes[h as usize].prev = i,
        }
        self.head = i;
    }

    fn touch(&mut self, i: u32, tick: u64) {
        self.unlink(i);
        self.push_front(i, tick);
    }

    fn remove(&mut self, i: u32, hasher: &RandomState) {
        self.unlink(i);
        let hash = hasher.hash_one(self.nodes[i as usize].key());
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        let node = &mut self.nodes[i as usize];
        node.entry = EntryBuf::default();
        node.key_id = FREE;
        self.free.push(i);
    }

    fn add(&mut self, hash: u64, node: Node, hasher: &RandomState) -> u32 {
        let tick = node.tick;
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                // Grow by an eighth, not by doubling: node slots are most of
                // the per-entry memory after the entry itself.
                if self.nodes.len() == self.nodes.capacity() {
                    self.nodes.reserve_exact(self.nodes.len() / 8 + 4);
                }
                self.nodes.push(node);
                u32::try_from(self.nodes.len() - 1).unwrap_or(NIL)
            }
        };
        let nodes = &self.nodes;
        self.table
            .insert_unique(hash, i, |&j| hasher.hash_one(nodes[j as usize].key()));
        self.push_front(i, tick);
        i
    }

    fn tail_tick(&self) -> u64 {
        match self.tail {
            NIL => EMPTY,
            t => self.nodes[t as usize].tick,
        }
    }

    fn live(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

/// What a read found.
pub(crate) enum Read<R> {
    /// A live entry, opened by the caller's closure; with its expiry.
    Hit(R, u64),
    /// An entry past its expiry but within the stale grace period: opened
    /// if the reader asked for stale values ([`Stale::Open`]), else `None`.
    Stale(Option<R>),
    /// A live cached "not found".
    Negative,
    /// No usable entry (absent, expired, or its key was wiped).
    Miss,
}

/// What a read does with an entry in its stale grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stale {
    /// Open it (a failed reload's fallback).
    Open,
    /// Report it without opening it: a caller that will not return it has
    /// no business decrypting it.
    Skip,
}

/// Whether a read counts in the hit/miss statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tally {
    /// A caller's read: counted.
    Count,
    /// An internal second look (single-flight re-check): not counted.
    Quiet,
}

/// What the locked half of a read found.
enum Looked {
    /// A usable entry, copied out.
    Found(Copied),
    /// A live cached "not found".
    Negative,
    /// No usable entry.
    Miss,
}

/// What is known of an entry copied out of its shard (its sealed bytes
/// went to the reader's [`SealedCopy`]).
#[derive(Clone, Copy)]
struct Copied {
    key_id: u64,
    expires: u64,
    stale: bool,
}

/// Why a read is undone after its open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undone {
    /// The entry's key had been wiped: an expiration.
    KeyWiped,
    /// The entry failed authentication.
    Integrity,
    /// The open failed for another reason (the process forked, no locked
    /// scratch buffer): the entry stays and the read counts as neither a
    /// hit nor a miss.
    Failed,
}

/// Sealed bytes of up to this many bytes are copied to the stack (a 1 KiB
/// secret seals to 1,065 bytes); longer ones to the heap.
const INLINE_SEALED: usize = 1088;

/// A copy of an entry's sealed bytes: ciphertext, nonce and tag, no secret.
/// It lives in the reader's frame and is filled in place, never moved.
struct SealedCopy {
    inline: [u8; INLINE_SEALED],
    len: usize,
    heap: Vec<u8>,
}

impl SealedCopy {
    fn new() -> Self {
        Self {
            inline: [0; INLINE_SEALED],
            len: 0,
            heap: Vec::new(),
        }
    }

    fn fill(&mut self, sealed: &[u8]) {
        self.len = sealed.len();
        match self.inline.get_mut(..sealed.len()) {
            Some(inline) => inline.copy_from_slice(sealed),
            None => self.heap = sealed.to_vec(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        self.inline.get(..self.len).unwrap_or(&self.heap)
    }
}

impl Tally {
    /// The part of `counters` this kind of read records: everything for a
    /// caller's read; only removals (expirations, integrity failures) for a
    /// quiet one.
    fn filter(self, counters: Counters) -> Counters {
        match self {
            Tally::Count => counters,
            Tally::Quiet => Counters {
                expirations: counters.expirations,
                integrity_failures: counters.integrity_failures,
                ..Counters::default()
            },
        }
    }
}

/// A stored entry handed to the opening closure.
pub(crate) struct Found<'a> {
    /// The id of the key it was sealed under.
    pub(crate) key_id: u64,
    /// The sealed bytes.
    pub(crate) sealed: &'a [u8],
}

/// The sharded store.
pub(crate) struct Store {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    tails: Box<[CachePadded<AtomicU64>]>,
    tick: CachePadded<AtomicU64>,
    len: CachePadded<AtomicUsize>,
    hasher: RandomState,
    max_entries: usize,
    /// Nanoseconds within which a hit does not refresh an entry's recency.
    recency_resolution: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("shards", &self.shards.len())
            .field("len", &self.len())
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store of `shards` shards (a power of two) bounded to `max_entries`,
    /// whose hits refresh an entry's recency only once `recency_resolution`
    /// nanoseconds have passed since its last refresh (0: every hit).
    pub(crate) fn new(shards: usize, max_entries: usize, recency_resolution: u64) -> Self {
        let shards = shards.max(1).next_power_of_two();
        Self {
            shards: (0..shards)
                .map(|_| CachePadded::new(Mutex::new(Shard::new())))
                .collect(),
            tails: (0..shards)
                .map(|_| CachePadded::new(AtomicU64::new(EMPTY)))
                .collect(),
            tick: CachePadded::new(AtomicU64::new(0)),
            len: CachePadded::new(AtomicUsize::new(0)),
            hasher: RandomState::new(),
            max_entries,
            recency_resolution,
        }
    }

    /// The shard index and hash of a key.
    pub(crate) fn locate(&self, key: &[u8]) -> (usize, u64) {
        let hash = self.hasher.hash_one(key);
        // Bits 32.. pick the shard: the table uses the low bits for buckets
        // and the top seven for its control bytes.
        let shard = (hash >> 32) as usize & (self.shards.len() - 1);
        (shard, hash)
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // A panic cannot leave a shard half-updated: every mutation that
        // could panic (allocation) happens before links are changed.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_tail(&self, shard: usize, guard: &Shard) {
        let tick = guard.tail_tick();
        let slot = &self.tails[shard];
        if slot.load(Ordering::Relaxed) != tick {
            slot.store(tick, Ordering::Relaxed);
        }
    }

    /// A new recency stamp at time `now`: `now`, or one past the last stamp
    /// taken if that is later, but never past [`LAST_TICK`].
    fn next_tick(&self, now: u64) -> u64 {
        let mut last = self.tick.load(Ordering::Relaxed);
        loop {
            let tick = now.max(last.saturating_add(1)).min(LAST_TICK);
            match self
                .tick
                .compare_exchange_weak(last, tick, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return tick,
                Err(actual) => last = actual,
            }
        }
    }

    fn removed(&self, count: usize) {
        self.len.fetch_sub(count, Ordering::Relaxed);
    }

    /// Looks `key` up at time `now`. A live entry is marked most recently
    /// used and handed to `open`, which returns the opened value, `None` if
    /// its key has been wiped, or an error. An entry past its expiry by less
    /// than `grace` is opened and returned as [`Read::Stale`] (not counted as
    /// a hit, not refreshed in recency). Expired entries, entries whose key is
    /// gone and entries that fail integrity are removed.
    ///
    /// `open` runs after the shard's lock is released, on a copy of the
    /// sealed bytes (ciphertext only), so threads reading the same hot entry
    /// do not queue behind each other's AEAD open. The read takes effect when
    /// the copy is made: a concurrent `invalidate` that comes after it does
    /// not stop this read from returning the value it copied, as with any
    /// read that completed just before the invalidation.
    pub(crate) fn read<R>(
        &self,
        key: &[u8],
        now: u64,
        grace: u64,
        tally: Tally,
        stale: Stale,
        open: impl FnOnce(Found<'_>) -> Result<Option<R>, Error>,
    ) -> Result<Read<R>, Error> {
        let (s, hash) = self.locate(key);
        let mut sealed = SealedCopy::new();
        let copied = {
            let mut guard = self.lock(s);
            let shard = &mut *guard;
            let mut counters = Counters::default();
            let looked =
                self.look_up_locked(shard, s, hash, key, now, grace, &mut counters, &mut sealed);
            shard.counters.add(&tally.filter(counters));
            looked
        };
        let Looked::Found(copy) = copied else {
            return Ok(match copied {
                Looked::Negative => Read::Negative,
                _ => Read::Miss,
            });
        };
        if copy.stale && stale == Stale::Skip {
            return Ok(Read::Stale(None));
        }
        let found = Found {
            key_id: copy.key_id,
            sealed: sealed.as_slice(),
        };
        match open(found) {
            Ok(Some(value)) if copy.stale => Ok(Read::Stale(Some(value))),
            Ok(Some(value)) => Ok(Read::Hit(value, copy.expires)),
            Ok(None) => {
                self.undo_read(s, hash, key, (copy, &sealed), tally, Undone::KeyWiped);
                Ok(Read::Miss)
            }
            Err(Error::Integrity) => {
                self.undo_read(s, hash, key, (copy, &sealed), tally, Undone::Integrity);
                Err(Error::Integrity)
            }
            Err(other) => {
                self.undo_read(s, hash, key, (copy, &sealed), tally, Undone::Failed);
                Err(other)
            }
        }
    }

    /// The locked half of [`read`](Self::read): finds the entry, removes it
    /// if it is past use, refreshes its recency and copies it out.
    #[allow(clippy::too_many_arguments)]
    fn look_up_locked(
        &self,
        shard: &mut Shard,
        s: usize,
        hash: u64,
        key: &[u8],
        now: u64,
        grace: u64,
        counters: &mut Counters,
        sealed: &mut SealedCopy,
    ) -> Looked {
        let Some(i) = shard.find(hash, key) else {
            counters.misses += 1;
            return Looked::Miss;
        };
        let (expires, key_id, negative) = {
            let node = &shard.nodes[i as usize];
            (node.expires, node.key_id, node.is_negative())
        };
        let stale = now >= expires;
        if stale && (negative || now - expires >= grace) {
            shard.remove(i, &self.hasher);
            counters.misses += 1;
            counters.expirations += 1;
            self.removed(1);
            self.publish_tail(s, shard);
            return Looked::Miss;
        }
        // Refreshed less than the resolution ago: nothing to write. (A stamp
        // ahead of `now` counts as just refreshed.)
        let fresh = now.saturating_sub(shard.nodes[i as usize].tick) < self.recency_resolution;
        if !stale && !fresh {
            let tick = self.next_tick(now);
            if shard.head == i {
                // Already the shard's most recent entry: no relinking.
                shard.nodes[i as usize].tick = tick;
            } else {
                shard.touch(i, tick);
            }
            self.publish_tail(s, shard);
        }
        if negative {
            counters.negative_hits += 1;
            return Looked::Negative;
        }
        if stale {
            counters.misses += 1;
        } else {
            counters.hits += 1;
        }
        sealed.fill(shard.nodes[i as usize].sealed());
        Looked::Found(Copied {
            key_id,
            expires,
            stale,
        })
    }

    /// After an open outside the lock failed: takes back the hit (or stale
    /// miss) counted under the lock and counts the outcome instead. If the
    /// key was wiped or the entry tampered with, also removes the entry, but
    /// only if it still holds the bytes that were opened (a concurrent
    /// insert may have replaced it).
    fn undo_read(
        &self,
        s: usize,
        hash: u64,
        key: &[u8],
        (copy, sealed): (Copied, &SealedCopy),
        tally: Tally,
        why: Undone,
    ) {
        let mut shard = self.lock(s);
        // Take back what the locked half counted, then count the outcome.
        if tally == Tally::Count {
            let counted = if copy.stale {
                &mut shard.counters.misses
            } else {
                &mut shard.counters.hits
            };
            *counted = counted.saturating_sub(1);
        }
        let outcome = match why {
            Undone::KeyWiped => Counters {
                misses: 1,
                ..Counters::default()
            },
            Undone::Integrity => Counters {
                integrity_failures: 1,
                ..Counters::default()
            },
            Undone::Failed => return,
        };
        shard.counters.add(&tally.filter(outcome));
        let Some(i) = shard.find(hash, key) else {
            return;
        };
        let node = &shard.nodes[i as usize];
        if node.key_id != copy.key_id || node.sealed() != sealed.as_slice() {
            return;
        }
        shard.remove(i, &self.hasher);
        if why == Undone::KeyWiped {
            shard.counters.expirations += 1;
        }
        self.removed(1);
        self.publish_tail(s, &shard);
    }

    /// Stores `entry` as the most recently used entry, replacing any entry
    /// under the same key; if that added an entry, evicts the least
    /// recently used one while the cache is over its bound.
    pub(crate) fn insert(&self, entry: EntryBuf, expires: u64, key_id: u64, now: u64) {
        let (s, hash) = self.locate(entry.key());
        let added = {
            let mut shard = self.lock(s);
            let tick = self.next_tick(now);
            let added = match shard.find(hash, entry.key()) {
                Some(i) => {
                    let node = &mut shard.nodes[i as usize];
                    node.entry = entry;
                    node.expires = expires;
                    node.key_id = key_id;
                    shard.touch(i, tick);
                    false
                }
                None => {
                    let node = Node {
                        entry,
                        prev: NIL,
                        next: NIL,
                        tick,
                        expires,
                        key_id,
                    };
                    shard.add(hash, node, &self.hasher);
                    self.len.fetch_add(1, Ordering::Relaxed);
                    true
                }
            };
            shard.counters.inserts += 1;
            self.publish_tail(s, &shard);
            added
        };
        // Whoever adds an entry evicts at most one, and only if the cache is
        // then over its bound; a replacement adds nothing and evicts
        // nothing. So threads adding at once evict one entry per entry
        // added, never more, and `len` always counts live entries.
        if added {
            self.evict_oldest(now);
        }
    }

    /// Stores a cached "not found" for `key` until `expires`, tied to the
    /// epoch key `key_id` (whose deadline is after `expires`): the reaper
    /// drops it when it wipes that key.
    pub(crate) fn insert_negative(&self, key: &[u8], expires: u64, key_id: u64, now: u64) {
        if let Some(entry) = EntryBuf::new(key, 0) {
            self.insert(entry, expires, key_id, now);
        }
    }

    /// Removes the globally least recently used entry while the cache is
    /// over its bound; false if it is not (any more), or every shard is
    /// empty. The bound is checked again under the victim's shard lock: an
    /// entry removed meanwhile (invalidated, expired, reaped) may have made
    /// the room already, and `len` only ever counts live entries.
    fn evict_oldest(&self, now: u64) -> bool {
        let mut looked_again = 0;
        loop {
            if self.len.load(Ordering::Relaxed) <= self.max_entries {
                return false;
            }
            let oldest = self
                .tails
                .iter()
                .enumerate()
                .map(|(s, tick)| (tick.load(Ordering::Relaxed), s))
                .min();
            let Some((tick, s)) = oldest else {
                return false;
            };
            if tick == EMPTY {
                return false;
            }
            let mut shard = self.lock(s);
            let tail = shard.tail;
            if tail == NIL {
                self.publish_tail(s, &shard);
                continue;
            }
            // The shard's oldest entry changed since the tails were read (a
            // hit refreshed it, or it was removed): read them again rather
            // than evict an entry for having been the oldest a moment ago.
            // A bounded number of times, so that eviction always ends.
            if shard.nodes[tail as usize].tick != tick && looked_again < LOOK_AGAIN {
                looked_again += 1;
                self.publish_tail(s, &shard);
                continue;
            }
            // Taken off `len` while the victim is held under this lock: two
            // evictors on two shards cannot both act on one overflow, and
            // `len` cannot drop below the live count (nobody else can
            // remove this victim meanwhile).
            let max = self.max_entries;
            if self
                .len
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |len| {
                    (len > max).then(|| len - 1)
                })
                .is_err()
            {
                return false;
            }
            if now >= shard.nodes[tail as usize].expires {
                shard.counters.expirations += 1;
            } else {
                shard.counters.evictions += 1;
            }
            shard.remove(tail, &self.hasher);
            self.publish_tail(s, &shard);
            return true;
        }
    }

    /// Removes the entry under `key`; returns whether there was one.
    pub(crate) fn remove(&self, key: &[u8]) -> bool {
        let (s, hash) = self.locate(key);
        let mut shard = self.lock(s);
        let Some(i) = shard.find(hash, key) else {
            return false;
        };
        shard.remove(i, &self.hasher);
        self.removed(1);
        self.publish_tail(s, &shard);
        true
    }

    /// Removes every entry sealed under `key_id` (its key has been wiped);
    /// returns how many, counted as expirations.
    pub(crate) fn remove_sealed_under(&self, key_id: u64) -> usize {
        let mut total = 0;
        for s in 0..self.shards.len() {
            let mut shard = self.lock(s);
            let doomed: Vec<u32> = shard
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, node)| node.key_id == key_id && key_id != FREE)
                .map(|(i, _)| i as u32)
                .collect();
            for &i in &doomed {
                shard.remove(i, &self.hasher);
            }
            shard.counters.expirations += doomed.len() as u64;
            total += doomed.len();
            // Counted out shard by shard: an insert meanwhile must not see
            // a length that still includes entries already gone, and evict
            // a live one to make room it has.
            self.removed(doomed.len());
            self.publish_tail(s, &shard);
        }
        total
    }

    /// Empties every shard in O(shards) and returns the old contents, to be
    /// dropped elsewhere (the reaper thread) so the caller's cost does not
    /// grow with the number of entries.
    pub(crate) fn take_all(&self) -> Vec<Box<dyn Send>> {
        let mut taken: Vec<Box<dyn Send>> = Vec::with_capacity(self.shards.len());
        for s in 0..self.shards.len() {
            let mut shard = self.lock(s);
            let live = shard.live();
            let counters = shard.counters;
            let mut old = std::mem::replace(&mut *shard, Shard::new());
            shard.counters = counters;
            old.counters = Counters::default();
            self.removed(live);
            self.publish_tail(s, &shard);
            drop(shard);
            taken.push(Box::new(old));
        }
        taken
    }

    /// Number of entries held (expired entries count until they are removed
    /// by a read, an eviction or the reaper).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// The counters of every shard, summed.
    pub(crate) fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for s in 0..self.shards.len() {
            total.add(&self.lock(s).counters);
        }
        total
    }

    #[cfg(feature = "test-hooks")]
    /// Heap bytes held by entries: node slots, table buckets and entry data
    /// (an estimate that ignores allocator headers).
    pub(crate) fn heap_bytes(&self) -> usize {
        (0..self.shards.len())
            .map(|s| {
                let shard = self.lock(s);
                shard.nodes.capacity() * std::mem::size_of::<Node>()
                    + shard.table.capacity() * (std::mem::size_of::<u32>() + 1)
                    + shard.free.capacity() * std::mem::size_of::<u32>()
                    + shard.nodes.iter().map(|n| n.entry.0.len()).sum::<usize>()
            })
            .sum()
    }

    /// Mutates the stored sealed bytes of `key` (test hooks: integrity tests).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn tamper(&self, key: &[u8], f: impl FnOnce(&mut [u8])) -> bool {
        let (s, hash) = self.locate(key);
        let mut shard = self.lock(s);
        let Some(i) = shard.find(hash, key) else {
            return false;
        };
        f(shard.nodes[i as usize].entry.sealed_mut());
        true
    }

    /// Swaps the sealed bytes (and key ids) of two entries (test hooks).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn swap_sealed(&self, a: &[u8], b: &[u8]) -> bool {
        let take = |key: &[u8]| -> Option<(Vec<u8>, u64)> {
            let (s, hash) = self.locate(key);
            let shard = self.lock(s);
            let i = shard.find(hash, key)?;
            let node = &shard.nodes[i as usize];
            Some((node.sealed().to_vec(), node.key_id))
        };
        let put = |key: &[u8], sealed: &[u8], key_id: u64| {
            let (s, hash) = self.locate(key);
            let mut shard = self.lock(s);
            if let Some(i) = shard.find(hash, key)
                && let Some(mut entry) = EntryBuf::new(key, sealed.len())
            {
                entry.sealed_mut().copy_from_slice(sealed);
                let node = &mut shard.nodes[i as usize];
                node.entry = entry;
                node.key_id = key_id;
            }
        };
        let (Some((sa, ia)), Some((sb, ib))) = (take(a), take(b)) else {
            return false;
        };
        put(a, &sb, ib);
        put(b, &sa, ia);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(key: &[u8], sealed: &[u8]) -> EntryBuf {
        let mut entry = EntryBuf::new(key, sealed.len()).unwrap();
        entry.sealed_mut().copy_from_slice(sealed);
        entry
    }

    fn get(store: &Store, key: &[u8], now: u64) -> Option<Vec<u8>> {
        match store
            .read(key, now, 0, Tally::Count, Stale::Open, |found| {
                Ok(Some(found.sealed.to_vec()))
            })
            .unwrap()
        {
            Read::Hit(v, _) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn global_lru_across_shards() {
        let store = Store::new(16, 3, 0);
        for k in [b"a", b"b", b"c"] {
            store.insert(data(k, k), 100, 1, 0);
        }
        assert!(get(&store, b"a", 0).is_some());
        store.insert(data(b"d", b"d"), 100, 1, 0);
        assert!(get(&store, b"b", 0).is_none(), "b was least recently used");
        assert!(get(&store, b"a", 0).is_some());
        assert!(get(&store, b"c", 0).is_some());
        assert!(get(&store, b"d", 0).is_some());
        assert_eq!(store.len(), 3);
        assert_eq!(store.counters().evictions, 1);
    }

    /// An evictor that read the tails before the shard it picked changed
    /// (simulated by a published stamp older than that shard's real tail)
    /// reads them again and evicts the oldest entry, not that shard's tail.
    #[test]
    fn eviction_looks_again_when_the_shard_it_picked_changed() {
        let store = Store::new(4, 2, 0);
        let mut keys: Vec<(usize, Vec<u8>)> = Vec::new();
        for i in 0u32.. {
            let key = format!("key-{i}").into_bytes();
            let (shard, _) = store.locate(&key);
            if keys.iter().all(|(s, _)| *s != shard) {
                keys.push((shard, key));
            }
            if keys.len() == 3 {
                break;
            }
        }
        let [(_, a), (sb, b), (_, c)] = <[_; 3]>::try_from(keys).unwrap();
        store.insert(data(&a, b"a"), 100, 1, 1);
        store.insert(data(&b, b"b"), 100, 1, 2);
        store.tails[sb].store(0, Ordering::Relaxed);
        store.insert(data(&c, b"c"), 100, 1, 3);
        assert_eq!(store.len(), 2);
        assert!(
            get(&store, &b, 3).is_some(),
            "b stays: its shard only looked oldest"
        );
        assert!(get(&store, &a, 3).is_none(), "a, the oldest, went");
    }

    /// A clock at the end of its range (a custom `Clock` returning
    /// `Duration::MAX`) makes every stamp the same; eviction still keeps the
    /// bound, where a stamp equal to the empty-shard marker would have made
    /// full shards look empty.
    #[test]
    fn stamps_at_the_end_of_time_still_keep_the_bound() {
        let store = Store::new(4, 2, 0);
        for k in [b"a", b"b", b"c", b"d"] {
            store.insert(data(k, k), u64::MAX, 1, u64::MAX - 1);
        }
        assert_eq!(store.len(), 2);
        assert_eq!(store.counters().evictions, 2);
    }

    #[test]
    fn entry_buffers_keep_key_and_sealed_apart() {
        let mut entry = EntryBuf::new(b"key", 4).unwrap();
        entry.sealed_mut().copy_from_slice(b"seal");
        assert_eq!(entry.key(), b"key");
        assert_eq!(entry.sealed(), b"seal");
        let (key, sealed) = entry.key_and_sealed_mut();
        assert_eq!((key, &*sealed), (&b"key"[..], &b"seal"[..]));
        assert!(EntryBuf::new(&[0; 65_536], 1).is_none());
        let empty = EntryBuf::default();
        assert!(empty.key().is_empty() && empty.sealed().is_empty());
        assert_eq!(std::mem::size_of::<Node>(), 48);
    }

    #[test]
    fn readers_of_one_entry_open_it_concurrently() {
        // The first reader is still inside its open when the second reads
        // the same entry: the open must not hold the shard's lock.
        let store = Store::new(4, 10, 0);
        store.insert(data(b"hot", b"sealed"), 100, 1, 0);
        let (inside, release) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|scope| {
            let slow = scope.spawn(|| {
                store.read(b"hot", 0, 0, Tally::Count, Stale::Open, |found| {
                    inside.wait();
                    release.wait();
                    Ok(Some(found.sealed.to_vec()))
                })
            });
            inside.wait();
            // A lock held across the open would block this read: wait for
            // it with a deadline, so that regression fails instead of hanging.
            let (sent, second) = std::sync::mpsc::channel();
            let store = &store;
            scope.spawn(move || sent.send(get(store, b"hot", 0)));
            let second = second.recv_timeout(std::time::Duration::from_secs(10));
            release.wait();
            assert_eq!(
                second.expect("second reader was blocked").unwrap(),
                b"sealed"
            );
            assert!(matches!(slow.join().unwrap(), Ok(Read::Hit(v, 100)) if v == b"sealed"));
        });
        assert_eq!(store.counters().hits, 2);
    }

    #[test]
    fn a_failed_open_removes_the_entry_it_opened_and_not_its_replacement() {
        let store = Store::new(4, 10, 0);
        store.insert(data(b"k", b"old"), 100, 1, 0);
        // While the old entry is being opened, an insert replaces it; the
        // open then finds its key wiped. The replacement must survive.
        let read = store.read(
            b"k",
            0,
            0,
            Tally::Count,
            Stale::Open,
            |_| -> Result<Option<()>, Error> {
                store.insert(data(b"k", b"new"), 100, 2, 0);
                Ok(None)
            },
        );
        assert!(matches!(read, Ok(Read::Miss)));
        assert_eq!(get(&store, b"k", 0).unwrap(), b"new");
        // Without a replacement, the entry whose key is gone is removed.
        let read = store.read(b"k", 0, 0, Tally::Count, Stale::Open, |_| Ok(None::<()>));
        assert!(matches!(read, Ok(Read::Miss)));
        assert_eq!(store.len(), 0);
        // Integrity failures remove the entry too, and are counted.
        store.insert(data(b"t", b"bad"), 100, 1, 0);
        let read = store.read(b"t", 0, 0, Tally::Quiet, Stale::Open, |_| {
            Err::<Option<()>, _>(Error::Integrity)
        });
        assert!(matches!(read, Err(Error::Integrity)));
        assert_eq!(store.len(), 0);
        // Any other failure leaves the entry and counts nothing.
        store.insert(data(b"f", b"fine"), 100, 1, 0);
        let read = store.read(b"f", 0, 0, Tally::Count, Stale::Open, |_| {
            Err::<Option<()>, _>(Error::Forked)
        });
        assert!(matches!(read, Err(Error::Forked)));
        assert_eq!(store.len(), 1);
        let counters = store.counters();
        assert_eq!(
            (
                counters.hits,
                counters.misses,
                counters.expirations,
                counters.integrity_failures
            ),
            (1, 2, 1, 1),
            "one hit (the replacement), two misses (the undone reads), \
             one expiration (the entry whose key was gone), one integrity failure"
        );
    }

    /// Two inserts that overflowed a bound of one wait to evict the oldest
    /// entry while every entry is removed meanwhile (invalidated, reaped):
    /// `len` keeps counting live entries, and an entry inserted into the
    /// emptied cache is not evicted by the late evictions.
    #[test]
    fn late_evictions_take_only_what_the_bound_still_needs() {
        let store = std::sync::Arc::new(Store::new(4, 1, 0));
        let shard_of = |k: &[u8]| store.locate(k).0;
        let (oldest, _) = store.locate(b"k1");
        let mut others = (0..)
            .map(|i| format!("o{i}").into_bytes())
            .filter(|k| shard_of(k) != oldest);
        let (ka, kb, kc) = (
            others.next().unwrap(),
            others.next().unwrap(),
            others.next().unwrap(),
        );
        store.insert(data(b"k1", b"v"), 100, 1, 0);
        let mut guard = store.lock(oldest);
        let insert = |key: Vec<u8>| {
            let store = std::sync::Arc::clone(&store);
            std::thread::spawn(move || store.insert(data(&key, b"v"), 100, 1, 0))
        };
        let (a, b) = (insert(ka.clone()), insert(kb.clone()));
        // Both added (three live entries); both now wait for the oldest
        // entry's shard.
        let began = std::time::Instant::now();
        while store.len() != 3 {
            assert!(began.elapsed().as_secs() < 10, "the inserts never ran");
            std::thread::yield_now();
        }
        assert!(store.remove(&ka) && store.remove(&kb));
        let (_, hash) = store.locate(b"k1");
        let i = guard.find(hash, b"k1").unwrap();
        guard.remove(i, &store.hasher);
        store.removed(1);
        store.publish_tail(oldest, &guard);
        assert_eq!(store.len(), 0, "len counts live entries");
        store.insert(data(&kc, b"new"), 100, 1, 0);
        drop(guard);
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(store.len(), 1);
        assert_eq!(get(&store, &kc, 0).as_deref(), Some(&b"new"[..]), "kept");
    }

    #[test]
    fn expiry_is_exact() {
        let store = Store::new(4, 10, 0);
        store.insert(data(b"k", b"v"), 100, 1, 0);
        assert!(get(&store, b"k", 99).is_some());
        assert!(get(&store, b"k", 100).is_none());
        assert_eq!(store.len(), 0);
        assert_eq!(store.counters().expirations, 1);
    }

    #[test]
    fn stale_entries_are_served_only_within_grace_and_negatives_never() {
        let store = Store::new(4, 10, 0);
        store.insert(data(b"k", b"v"), 100, 1, 0);
        store.insert_negative(b"n", 100, 1, 0);
        let read = |now, grace| {
            store
                .read(b"k", now, grace, Tally::Count, Stale::Open, |found| {
                    Ok(Some(found.sealed.to_vec()))
                })
                .unwrap()
        };
        assert!(matches!(read(99, 50), Read::Hit(_, 100)));
        assert!(matches!(read(149, 50), Read::Stale(Some(_))));
        let skipped = store
            .read(
                b"k",
                149,
                50,
                Tally::Count,
                Stale::Skip,
                |_| -> Result<Option<()>, Error> {
                    panic!("a stale entry the reader will not return is not opened")
                },
            )
            .unwrap();
        assert!(matches!(skipped, Read::Stale(None)));
        assert!(matches!(
            store
                .read(b"n", 99, 50, Tally::Count, Stale::Open, |_| Ok(Some(())))
                .unwrap(),
            Read::Negative
        ));
        assert!(matches!(
            store
                .read(b"n", 100, 50, Tally::Count, Stale::Open, |_| Ok(Some(())))
                .unwrap(),
            Read::Miss
        ));
        assert!(matches!(read(150, 50), Read::Miss));
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn replacing_keeps_one_entry() {
        let store = Store::new(4, 10, 0);
        store.insert(data(b"k", b"v1"), 100, 1, 0);
        store.insert(data(b"k", b"v2"), 100, 2, 0);
        assert_eq!(store.len(), 1);
        assert_eq!(get(&store, b"k", 0).unwrap(), b"v2");
    }

    #[test]
    fn sweep_and_take_all() {
        let store = Store::new(4, 100, 0);
        for i in 0..50u8 {
            store.insert(data(&[i], b"x"), 100, 1 + u64::from(i % 2), 0);
        }
        assert_eq!(store.remove_sealed_under(1), 25);
        assert_eq!(store.len(), 25);
        let taken = store.take_all();
        assert_eq!(taken.len(), 4);
        assert_eq!(store.len(), 0);
        assert!(get(&store, &[1], 0).is_none());
    }
}
