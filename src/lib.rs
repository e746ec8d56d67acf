//! # sealcache
//!
//! A bounded TTL + LRU cache of secrets (API keys, database passwords,
//! tokens) for servers that would otherwise ask their database for a secret
//! on every request — built so that a memory dump, a core file, swap, a
//! forked child or an over-read bug does not hand those secrets out.
//!
//! ## What it guarantees
//!
//! - **Sealed at rest.** Every cached value is sealed with
//!   XChaCha20-Poly1305 under the key of the current *epoch*, with a fresh
//!   random 24-byte nonce. The associated data binds the format version, the
//!   epoch and the cache key, so an entry altered in any byte, moved to
//!   another key or replayed under another epoch fails to open with
//!   [`Error::Integrity`] — never another secret's plaintext.
//! - **Keys in locked memory.** Epoch keys live in one slab allocated with
//!   guard pages, a canary, `mlock` and `MADV_DONTDUMP` (or in a
//!   `memfd_secret` mapping the kernel hides even from root's
//!   `/proc/PID/mem`); in a forked child they are absent (memfd_secret) or
//!   zeroed (anonymous memory). Each protection is reported by
//!   [`SealCache::protections`]: one applied by a system call only once
//!   the call's result (for the `memfd_secret` lock, `/proc/self/smaps`)
//!   confirms it; the anonymous backend's canary, the `memfd_secret`
//!   mapping's guard pages and fork detection hold by how the slab is built.
//!   [`Protection::Require`] (the default) refuses to build a cache without
//!   them. [`SealCache::with`] locks its own scratch pages when first used:
//!   under a very low `RLIMIT_MEMLOCK` it can return
//!   [`Error::Protection`] after `build` succeeded (SECURITY.md gives the
//!   budget).
//! - **Exact expiry, self-shredding keys.** An entry inserted at `t` is never
//!   returned by [`SealCache::get`] or [`SealCache::with`] at or after
//!   `t + ttl`; only with the opt-in [`Builder::max_stale`] may
//!   [`SealCache::get_or_try_load`] serve it after that, when its reload
//!   fails, and then for less than `max_stale` past its expiry. The key of
//!   epoch `e` is wiped by a dedicated reaper thread at `end(e) + ttl` (plus
//!   `max_stale` when stale-if-error is on), with no cache traffic, so a copy
//!   of an expired entry's ciphertext is undecryptable at most one epoch
//!   (TTL/4 by default) after the entry expired, plus the jitter taken off
//!   its TTL ([`Builder::ttl_jitter`]) and `max_stale` when those are set.
//!   [`SealCache::invalidate_all`] shreds every key at once.
//! - **Plaintext on a short leash.** [`SealCache::get`] returns
//!   [`SecretBytes`] (exact-size, zeroized on drop, redacted `Debug`,
//!   readable only through [`ExposeSecret`]); [`SealCache::with`] opens into a
//!   locked scratch buffer and wipes it after your closure returns.
//!
//! ## What it does not guarantee
//!
//! - Plaintext the caller copies out of [`SecretBytes`] or a `with` closure.
//! - Microarchitectural leaks (Spectre-class, cache timing) and cold-boot
//!   attacks on RAM.
//! - Root on the live machine without `memfd_secret`: it can read locked
//!   pages through `/proc/PID/mem` or a debugger, and inject code anyway.
//! - Registers and spills: the AEAD's dead stack frames (HChaCha20 state,
//!   ring's copy of the per-entry subkey) are overwritten after every seal
//!   and open, which `tests/forensics.rs` verifies by scanning the process;
//!   what the compiler keeps in registers or spills elsewhere is not
//!   guaranteed.
//! - A dump, root's read of memory or a `fork()` taken while a thread is
//!   inside a seal or open: that thread's stack and registers hold the
//!   entry's subkey and, while it is derived, the epoch key (THREAT_MODEL.md,
//!   L2).
//!
//! Out of scope: process-wide hardening the library must not impose
//! (dumpability, core limits: see the opt-in [`harden_process`]), swap and
//! hibernation policy, and platforms other than Linux.
//!
//! ## Cargo features
//!
//! - `async`: `SealCache::get_or_try_load_async`, the read-through load
//!   for async code (runtime-agnostic: it only uses `std::task`). Without
//!   it, async code has only the blocking `get_or_try_load`, which would
//!   block an executor thread while another caller loads.
//! - `test-hooks`: internals for this crate's tests, fuzz targets and
//!   benchmarks. Never enable it in production.
//!
//! The claims, their attackers and the tests that prove them are listed in
//! `THREAT_MODEL.md` and `SECURITY.md` at the repository root; the design
//! rationale is in [`manual`].
//!
//! ## Example
//!
//! ```
//! use sealcache::{ExposeSecret, ManualClock, SealCache};
//! use std::time::Duration;
//!
//! let clock = ManualClock::new();
//! let cache = SealCache::builder()
//!     .ttl(Duration::from_secs(60))
//!     .max_entries(1000)
//!     .clock(clock.clone())
//!     .build()?;
//!
//! cache.insert("stripe-api-key", "sk_live_123")?;
//! let key = cache.get("stripe-api-key")?.expect("just inserted");
//! assert_eq!(key.expose_secret(), b"sk_live_123");
//!
//! clock.advance(Duration::from_secs(60));
//! assert!(cache.get("stripe-api-key")?.is_none(), "expired at t + ttl");
//! println!("{}", cache.protections());
//! # Ok::<(), sealcache::Error>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs, unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "sealcache supports Linux only for now: its key slab relies on memfd_secret, \
     MADV_WIPEONFORK, MADV_DONTDUMP and /proc/self/smaps"
);

mod cache;
mod clock;
mod config;
mod error;
mod home_stripe;
mod keyring;
mod loader;
pub mod manual;
#[allow(unsafe_code)]
mod memory;
mod reaper;
mod seal;
mod secret;
mod store;
#[cfg(feature = "test-hooks")]
pub mod testing;

pub use cache::{MAX_KEY_LEN, MAX_VALUE_LEN, SealCache, Stats};
pub use clock::{BootClock, Clock, ClockWaker, ManualClock};
pub use config::{
    Builder, ConfigError, DEFAULT_MAX_ENTRIES, DEFAULT_RECENCY_RESOLUTION, DEFAULT_TTL,
    ENV_MAX_ENTRIES, ENV_TTL_SECS, MAX_MAX_ENTRIES, MAX_TTL, MIN_TTL, Protection, ValueProblem,
};
pub use error::Error;
pub use loader::{DynLoadError, LoadError};
pub use memory::{
    Backend, HardeningError, HardeningStep, ProcessHardening, ProtectedMemory, ProtectionFailure,
    ProtectionKind, Protections, SlabBackend, harden_process,
};
pub use secrecy::ExposeSecret;
pub use secret::{CacheKey, SecretBytes, SecretValue};
