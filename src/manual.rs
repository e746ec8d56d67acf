//! The design rationale: why sealcache is built the way it is. Nothing here
//! is API; item docs stay short and point here instead.
//!
//! # Why epochs, and why TTL/4
//!
//! A per-entry key would make expiry a per-entry wipe and put one locked key
//! per entry into a resource the kernel rations (`RLIMIT_MEMLOCK`). A single
//! key would make expiry meaningless: any old ciphertext stays decryptable
//! while the key lives. Epochs sit between: all entries sealed during one
//! epoch of length R share its key, which is wiped at `end(e) + TTL` (plus
//! `max_stale`, when set), the moment the last of them has expired (and can
//! no longer be served stale). A copy of an expired entry's ciphertext (in
//! freed heap, in swap, in a core file) therefore becomes undecryptable at
//! most R after the entry expired, plus the jitter taken off its TTL and
//! `max_stale` when those are set.
//!
//! R trades that window against the number of live keys,
//! `⌈(TTL + max_stale)/R⌉ + 2` at most: R = TTL/4 without `max_stale` keeps
//! six 32-byte keys live and the window at a quarter of the TTL. One 4 KiB
//! page holds 127 keys (4,096 bytes less a 16-byte canary; the slab is
//! sized from the real page size). The accepted range
//! TTL/64 ..= TTL keeps the slab to that page unless `(TTL + max_stale)/R`
//! exceeds 125, which only an epoch near TTL/64 with a `max_stale` near the
//! TTL reaches; the slab then takes two pages.
//!
//! # Why one slab
//!
//! Locked memory is rationed per process (`memfd_secret` pages count
//! against the same limit), and memsec spends four pages (guard pages,
//! header) per allocation. One slab sized for every key that can be live at
//! once costs one page of locked memory per cache (the pooled `with`
//! scratch buffers, separate allocations, add one page each for secrets of
//! up to a page less 16 bytes: 4,080 bytes on 4 KiB pages), does not grow
//! with the number of entries, and lets a
//! single `wipe` crypto-erase the whole cache (`invalidate_all`).
//!
//! Keys are addressed by a monotonically increasing id in slot
//! `id % slots`. The slab has at least `key_life / R + 2` slots, so a slot is
//! only reused after its previous key's deadline; key creation (the first
//! insert or cached "not found" of each epoch) also wipes any key whose deadline has passed, so as
//! long as inserts continue, a stalled reaper cannot let keys outlive their
//! deadline by more than one epoch.
//!
//! # Why a reaper thread
//!
//! Lazy expiry (checking on access) keeps expired keys in memory for as long
//! as nobody asks: the peer this crate generalises was found with its
//! "deleted" keys still in memory dumps. The reaper sleeps until the
//! earliest deadline (re-reading the clock at least every second, so a
//! resume from suspend is noticed) and wipes with no traffic at all.
//! [`ManualClock`](crate::ManualClock) wakes it synchronously, which makes
//! the reaper deterministic in tests.
//!
//! A [`Clock`](crate::Clock) is user code, so the reaper survives one that
//! panics: it keeps its deadlines and reads the clock again a second later
//! (`tests/cache.rs::a_clock_that_panics_once_does_not_stop_the_reaper`).
//! A clock that keeps panicking cannot keep keys past their deadlines: at
//! the third failed reading in a row, once the failures span a second
//! (about a second after the first failed reading under traffic; with
//! none, two to three seconds after the clock broke),
//! the reaper wipes every key, every entry becomes a miss, and it goes on
//! wiping whatever keys appear until the clock works again
//! (`tests/cache.rs::a_clock_that_keeps_panicking_makes_the_reaper_wipe_every_key`).
//! Should the thread still end abnormally (a bug of the crate), it wipes
//! every key before it goes: the cache then fails closed, every entry a
//! miss and every insert an [`Error::Reaper`](crate::Error::Reaper), rather
//! than keeping keys past their deadlines. In a forked child the reaper
//! thread does not exist; dropping the child's copy of the cache neither
//! signals nor joins it, nor touches the channel's locks, which a parent
//! thread may have held at the fork.
//!
//! # Why `CLOCK_BOOTTIME`
//!
//! `CLOCK_MONOTONIC` stops while the machine is suspended: an entry cached
//! before a night's sleep would be served in the morning as if minutes had
//! passed. `CLOCK_BOOTTIME` keeps counting.
//!
//! # Why the ring fast path
//!
//! chacha20poly1305 0.11's AVX2 Poly1305 helpers are not inlined, so a
//! dependent crate's default build opens a 64-byte entry about four times
//! slower than the soft backend, and a library cannot set the cfg that would
//! fix it for its dependents. The default path computes the
//! draft-irtf-cfrg-xchacha construction itself: an HChaCha20 subkey (from the
//! `chacha20` crate) and ring's ChaCha20-Poly1305 under the remaining nonce
//! bytes. Known-answer tests pin both paths to the draft's vectors and a
//! property test proves them byte-identical on arbitrary inputs; the
//! chacha20poly1305 implementation stays in the crate as the reference.
//!
//! # Recency: LRU at a resolution
//!
//! Sharding keeps two threads on two keys from sharing a lock, but a
//! per-shard LRU would evict by shard, not by age. So recency is global:
//! each refresh (an insert, or a hit that refreshes) takes a stamp from one
//! shared counter, each shard keeps its entries in stamp order and publishes
//! the stamp of its least recently refreshed entry, and eviction removes the
//! entry with the globally smallest stamp. A stamp is the clock reading of
//! the refresh, or one nanosecond past the previous stamp if that is later,
//! so stamps are unique and increase in the order they are taken. A stamp
//! runs ahead of the clock reading its operation took when more than one is
//! taken per nanosecond of clock (a clock standing still, as a
//! [`ManualClock`](crate::ManualClock) does between advances), or when
//! another thread stamped a later reading while this one was between
//! reading the clock and taking its shard's lock.
//!
//! A hit refreshes its entry only if the entry's stamp is at least
//! [`recency_resolution`](crate::Builder::recency_resolution) old (1 s by
//! default, or a 64th of the TTL if that is shorter). Within that time, a
//! hit writes nothing but the shard lock and its counters. What eviction
//! then guarantees: **the entry it removes was last used (stored, or read
//! while live) at most one resolution after any other entry's last use**,
//! plus however far the other entry's stamp ran ahead of its clock
//! reading (and for evictions that no refresh races with: see *What is
//! exact and what is best effort*). With a resolution of zero every hit
//! refreshes and the order is exact LRU. The
//! model-based property tests and the `cache_ops` fuzz target run the cache
//! against a reference model that applies the same rule, at resolutions
//! from zero to the whole TTL: the cache must evict exactly what the model
//! evicts, and the model asserts the guarantee at every eviction (the rule
//! implies it; the assertion keeps the model and this text honest).
//!
//! Why not exact by default: a refresh relinks the entry at the head of its
//! shard's list (writing the entry's node, its two neighbours and the old
//! head) and takes a stamp from the shared counter. When two threads read
//! keys spread over every shard, those cache lines move between their cores
//! on nearly every hit. On the 2-vCPU machine of BENCHMARKS.md, `get` on
//! distinct keys went from 1 to 2 threads at 1.35–1.64× with exact LRU and
//! at 1.70–1.87× at the default resolution (medians of runs that alternate
//! the two in one process), where a mutex-sharded table with no recency at
//! all reaches 1.79–1.89×. The
//! shared counter is also one cache line that every refreshing hit on every
//! core writes: on a machine with many cores it, rather than the AEAD, would
//! bound the total hit rate. At the default resolution, a secret read more
//! often than once per resolution (about a second) costs that line one
//! write per resolution.
//!
//! What the resolution costs: between entries used within one resolution
//! of each other, eviction may pick the more recently used one. For a
//! cache that exists to keep a database from seeing every request, the
//! entries it must keep are the ones read many times a second, and those
//! it keeps either way.
//!
//! # Why a hit opens outside the shard lock
//!
//! The shard lock covers the lookup, the expiry check, the recency update
//! and a copy of the sealed bytes (ciphertext only, never plaintext); the
//! AEAD open runs after the lock is released. Threads reading one hot secret
//! then open it side by side instead of queueing behind each other's open
//! (2 threads on one key went from 0.6× to 1.2–1.6× the throughput of
//! one). A read takes effect when it copies the entry, so it never returns
//! a value replaced before it started
//! (`tests/cache.rs::a_read_never_returns_a_value_replaced_before_it_started`).
//! If the open then finds the key wiped or the tag wrong, the read locks the
//! shard again and removes the entry only if it still holds the bytes that
//! were opened, so a value inserted in between survives.
//!
//! # Why fencing
//!
//! An invalidation that runs while a load is in flight must win: otherwise
//! the load stores the value the invalidation meant to remove (the peer
//! cleared its cache before the database commit, so a concurrent reader put
//! the old row back for a whole TTL). `invalidate`, `insert` (one that
//! stored its value) and `invalidate_all` mark overlapping flights under the same lock the flight
//! stores its value under, so either the store happens first and is then
//! removed, or it does not happen.
//!
//! # Fork
//!
//! A child created by `fork` inherits the parent's memory. The key slab is
//! `MADV_WIPEONFORK` (anonymous) or `MADV_DONTFORK` (memfd_secret), so the
//! child sees zeros or no mapping; a separate `MADV_WIPEONFORK` sentinel page
//! tells the cache it is in a child, where it refuses to seal or open
//! ([`Error::Forked`](crate::Error::Forked)) rather than use zeroed keys.
//!
//! # What is exact and what is best effort
//!
//! Exact: expiry at `t + ttl` (earlier by the entry's own jitter when the
//! opt-in `ttl_jitter` is set), the bound on the number of entries, single
//! flight, fencing, key deadlines as computed. Exact to the recency
//! resolution: which entry eviction removes (exact LRU at a resolution of
//! zero), for evictions that no refresh races with; an evictor that finds
//! the shard it picked changed reads the shards again, up to 8 times, and
//! then takes that shard's oldest entry. Bounded but not instant: the reaper's wipe after a
//! deadline (thread scheduling, at most one second of sleep granularity).
//! Best effort: anything the platform refuses, which
//! [`SealCache::protections`](crate::SealCache::protections) reports and
//! [`Protection::Require`](crate::Protection::Require) turns into an error.
