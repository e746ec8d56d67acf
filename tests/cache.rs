//! Behaviour a user relies on: round trips, exact expiry, LRU order,
//! invalidation, integrity, the reaper, drop, Debug redaction, a
//! multi-threaded run with consistent stats, and reads that never go back
//! past a completed replacement.
#![cfg(feature = "test-hooks")]
#![allow(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::thread;
use std::time::Duration;

use sealcache::{
    Backend, Error, ExposeSecret, LoadError, ManualClock, Protection, SealCache, SecretBytes,
    testing,
};

#[path = "common/leaks.rs"]
mod leaks;

use leaks::assert_clean;

const TTL: Duration = Duration::from_secs(60);

fn cache_with(clock: &ManualClock, max_entries: usize) -> SealCache {
    SealCache::builder()
        .ttl(TTL)
        .max_entries(max_entries)
        .clock(clock.clone())
        .build()
        .expect("cache builds with every protection on this machine")
}

fn get(cache: &SealCache, key: &str) -> Option<Vec<u8>> {
    cache
        .get(key)
        .expect("no error")
        .map(|s| s.expose_secret().to_vec())
}

/// Keys name one entry whatever form holds their bytes (`&str`, `String`,
/// `Arc<str>`, `Box<str>`, `Cow`, `Rc<[u8]>`), and secrets can be handed
/// over as `secrecy` boxes, boxed slices and owned strings alike.
#[test]
fn keys_and_secrets_in_their_common_forms_name_and_fill_the_same_entries() {
    use secrecy::{SecretBox, SecretString};
    use std::borrow::Cow;
    use std::rc::Rc;
    let cache = cache_with(&ManualClock::new(), 10);
    let shared: Arc<str> = Arc::from("db/password");
    cache
        .insert(&shared, SecretString::from("from a SecretString"))
        .unwrap();
    assert_eq!(get(&cache, "db/password").unwrap(), b"from a SecretString");
    let boxed: Box<str> = "db/password".into();
    cache
        .insert(
            &boxed,
            SecretBox::new(Box::new(b"from a SecretBox".to_vec())),
        )
        .unwrap();
    assert_eq!(cache.len(), 1, "the same entry, replaced");
    let borrowed: Cow<'_, str> = Cow::Borrowed("db/password");
    assert_eq!(
        cache.get(&borrowed).unwrap().unwrap().expose_secret(),
        b"from a SecretBox"
    );
    let bytes: Rc<[u8]> = Rc::from(&b"api/token"[..]);
    let value: Box<[u8]> = Box::from(&b"from a boxed slice"[..]);
    cache.insert(&bytes, value).unwrap();
    let kept = SecretString::from("borrowed, kept by the caller");
    cache.insert("api/other", &kept).unwrap();
    assert_eq!(get(&cache, "api/token").unwrap(), b"from a boxed slice");
    assert_eq!(
        get(&cache, "api/other").unwrap(),
        kept.expose_secret().as_bytes()
    );
}

#[test]
fn round_trips_secrets_of_every_size_through_get_and_with() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 100);
    let big: Vec<u8> = (0..65_536u32).map(|i| (i * 7 + 3) as u8).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one", vec![0x42]),
        ("sixty-four", vec![0xA5; 64]),
        ("sixty-four-kib", big),
        ("not-utf8", vec![0xff, 0xfe, 0x00, 0xc3, 0x28, 0x80]),
    ];
    for (key, value) in &cases {
        cache.insert(*key, value.as_slice()).unwrap();
    }
    for (key, value) in &cases {
        assert_eq!(get(&cache, key).as_ref(), Some(value), "{key}");
        let seen = cache.with(*key, <[u8]>::to_vec).unwrap();
        assert_eq!(seen.as_ref(), Some(value), "{key} via with");
    }
    assert_eq!(cache.len(), cases.len());
}

#[test]
fn every_key_and_value_kind_is_accepted() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 100);
    cache.insert("str", "a").unwrap();
    cache
        .insert(&String::from("string"), String::from("b"))
        .unwrap();
    cache.insert(&b"bytes"[..], &b"c"[..]).unwrap();
    cache.insert(&vec![1u8, 2, 3], vec![b'd']).unwrap();
    cache.insert(b"array", SecretBytes::from("e")).unwrap();
    assert_eq!(get(&cache, "str").unwrap(), b"a");
    assert_eq!(get(&cache, "string").unwrap(), b"b");
    assert_eq!(get(&cache, "bytes").unwrap(), b"c");
    assert_eq!(
        cache
            .get(&vec![1u8, 2, 3])
            .unwrap()
            .unwrap()
            .expose_secret(),
        b"d"
    );
    assert_eq!(cache.get(b"array").unwrap().unwrap().expose_secret(), b"e");
}

#[test]
fn expiry_is_exact_at_t_plus_ttl() {
    let clock = ManualClock::new();
    clock.advance(Duration::from_millis(12_345));
    let cache = cache_with(&clock, 100);
    cache.insert("k", "v").unwrap();
    clock.advance(TTL - Duration::from_nanos(1));
    assert_eq!(get(&cache, "k").unwrap(), b"v", "hit at t + ttl - 1ns");
    clock.advance(Duration::from_nanos(1));
    assert_eq!(get(&cache, "k"), None, "miss at exactly t + ttl");
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.expirations), (1, 1, 1));
    assert!(cache.with("k", |_| ()).unwrap().is_none());
}

/// At the default recency resolution (a 64th of this TTL: 937.5 ms), a read
/// within the resolution of an entry's last refresh leaves its recency as
/// it was, so eviction may take an entry read a moment ago, but never one
/// whose last use came more than a resolution after the least recently used
/// entry's; a read after the resolution refreshes.
#[test]
fn reads_refresh_recency_at_most_once_per_resolution() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 2);
    let resolution = TTL / 64;
    assert_eq!(cache.recency_resolution(), resolution);
    cache.insert("a", "a").unwrap();
    clock.advance(Duration::from_millis(1));
    cache.insert("b", "b").unwrap();
    // Just under a resolution after "a" was stored: this read does not
    // refresh it, so "a" is still the least recently refreshed.
    clock.advance(resolution - Duration::from_millis(1) - Duration::from_nanos(2));
    assert!(get(&cache, "a").is_some());
    cache.insert("c", "c").unwrap();
    assert_eq!(
        get(&cache, "a"),
        None,
        "a evicted: its read was within the resolution"
    );
    // A resolution later, a read of "b" refreshes it: "c" goes next.
    clock.advance(resolution);
    assert!(get(&cache, "b").is_some());
    cache.insert("d", "d").unwrap();
    assert_eq!(get(&cache, "c"), None, "c evicted");
    assert!(get(&cache, "b").is_some(), "b kept: its read refreshed it");
    assert_eq!(cache.stats().evictions, 2);
}

#[test]
fn lru_evicts_least_recently_used_and_reads_refresh_recency() {
    let clock = ManualClock::new();
    // Exact LRU: every read refreshes, even with the clock standing still.
    let cache = SealCache::builder()
        .ttl(TTL)
        .max_entries(3)
        .recency_resolution(Duration::ZERO)
        .clock(clock.clone())
        .build()
        .expect("cache builds with every protection on this machine");
    for k in ["a", "b", "c"] {
        cache.insert(k, k).unwrap();
    }
    // Reading "a" makes "b" the least recently used.
    assert!(get(&cache, "a").is_some());
    cache.insert("d", "d").unwrap();
    assert_eq!(get(&cache, "b"), None, "b evicted");
    // Recency now (old → new): c, a, d. `with` refreshes too.
    assert!(cache.with("c", |_| ()).unwrap().is_some());
    cache.insert("e", "e").unwrap();
    assert_eq!(get(&cache, "a"), None, "a evicted");
    for k in ["c", "d", "e"] {
        assert!(get(&cache, k).is_some(), "{k} kept");
    }
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.stats().evictions, 2);
    // Replacing a value refreshes recency and does not grow the cache.
    cache.insert("c", "c2").unwrap();
    cache.insert("f", "f").unwrap();
    assert_eq!(get(&cache, "d"), None);
    assert_eq!(get(&cache, "c").unwrap(), b"c2");
    assert_eq!(cache.len(), 3);
}

#[test]
fn invalidate_removes_one_and_invalidate_all_shreds_every_key() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 100);
    for i in 0..10 {
        cache.insert(&format!("k{i}"), "v").unwrap();
    }
    assert!(cache.invalidate("k3"));
    assert!(!cache.invalidate("k3"));
    assert_eq!(get(&cache, "k3"), None);
    assert_eq!(cache.len(), 9);
    assert!(cache.stats().live_keys >= 1);
    cache.invalidate_all();
    assert_eq!(cache.len(), 0);
    assert!(testing::slab_is_zero(&cache), "every key byte wiped");
    assert_eq!(cache.stats().live_keys, 0);
    for i in 0..10 {
        assert_eq!(get(&cache, &format!("k{i}")), None);
    }
    cache.invalidate_all();
    // The cache keeps working under a fresh key.
    cache.insert("after", "x").unwrap();
    assert_eq!(get(&cache, "after").unwrap(), b"x");
}

#[test]
fn every_single_byte_alteration_of_a_sealed_entry_is_an_integrity_error() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 10);
    let secret = [0x5Au8; 64];
    let probe_len = {
        cache.insert("k", &secret).unwrap();
        let mut len = 0;
        testing::tamper(&cache, b"k", |sealed| len = sealed.len());
        len
    };
    assert_eq!(probe_len, 64 + testing::SEAL_OVERHEAD);
    for position in 0..probe_len {
        for flip in [0x01u8, 0x80] {
            cache.insert("k", &secret).unwrap();
            assert!(testing::tamper(&cache, b"k", |sealed| sealed[position] ^= flip));
            assert_eq!(
                cache.get("k").unwrap_err(),
                Error::Integrity,
                "byte {position}"
            );
            assert_eq!(get(&cache, "k"), None, "corrupt entry dropped");
        }
    }
    assert_eq!(cache.stats().integrity_failures, 2 * probe_len as u64);
    // `with` reports the same and never calls the closure.
    cache.insert("k", &secret).unwrap();
    testing::tamper(&cache, b"k", |sealed| sealed[10] ^= 1);
    assert_eq!(
        cache.with("k", |_| panic!("must not run")).unwrap_err(),
        Error::Integrity
    );
}

#[test]
fn entries_swapped_between_keys_or_epochs_fail_integrity() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 10);
    cache.insert("alice", "alice-secret").unwrap();
    cache.insert("bob", "bob-secret-00").unwrap();
    assert!(testing::swap_sealed(&cache, b"alice", b"bob"));
    assert_eq!(cache.get("alice").unwrap_err(), Error::Integrity);
    assert_eq!(cache.get("bob").unwrap_err(), Error::Integrity);

    // Different keys sealed in different epochs.
    cache.insert("old", "same-length-1").unwrap();
    clock.advance(cache.epoch_length());
    cache.insert("new", "same-length-2").unwrap();
    assert!(testing::swap_sealed(&cache, b"old", b"new"));
    assert_eq!(cache.get("old").unwrap_err(), Error::Integrity);
    assert_eq!(cache.get("new").unwrap_err(), Error::Integrity);

    // One key sealed in two epochs: the older sealed bytes put back in
    // place of the newer ones (a rollback) fail too, while the older
    // epoch's key is still live.
    cache.insert("k", "same-length-1").unwrap();
    let mut older = Vec::new();
    assert!(testing::tamper(&cache, b"k", |sealed| older = sealed.to_vec()));
    clock.advance(cache.epoch_length());
    cache.insert("k", "same-length-2").unwrap();
    assert_eq!(cache.stats().live_keys, 3);
    assert!(testing::tamper(&cache, b"k", |sealed| sealed.copy_from_slice(&older)));
    assert_eq!(cache.get("k").unwrap_err(), Error::Integrity);
}

#[test]
fn sealing_binds_epoch_key_and_cache_key() {
    let key = [7u8; 32];
    let sealed = testing::seal(&key, 5, b"name", b"secret");
    assert_eq!(testing::open(&key, 5, b"name", &sealed).unwrap(), b"secret");
    assert!(
        testing::open(&key, 6, b"name", &sealed).is_none(),
        "other epoch"
    );
    assert!(
        testing::open(&key, 5, b"nam", &sealed).is_none(),
        "other cache key"
    );
    // Same length: the key's bytes are bound, not only its length.
    assert!(
        testing::open(&key, 5, b"nama", &sealed).is_none(),
        "other cache key of the same length"
    );
    assert!(
        testing::open(&[8u8; 32], 5, b"name", &sealed).is_none(),
        "other key"
    );
    let again = testing::seal(&key, 5, b"name", b"secret");
    assert_ne!(sealed, again, "fresh nonce per seal");
}

#[test]
fn reaper_wipes_each_key_at_its_deadline_with_no_traffic() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 100);
    let epoch = cache.epoch_length();
    assert_eq!(epoch, TTL / 4);
    cache.insert("k", "v").unwrap(); // epoch 0, key deadline end(0) + ttl = 75 s
    assert_eq!(testing::export_live_keys(&cache).len(), 1);
    clock.advance(epoch); // t = 15 s: epoch 1
    cache.insert("k2", "v").unwrap(); // deadline 90 s
    let before = cache.stats();
    assert_eq!((before.keys_created, before.keys_wiped), (2, 0));

    clock.advance(Duration::from_secs(75) - epoch - Duration::from_nanos(1)); // 75 s - 1 ns
    assert_eq!(cache.stats().keys_wiped, 0, "not before its deadline");
    // No cache call between here and the assertions: the wipe is the
    // reaper thread's. (`ManualClock::advance` wakes it through the clock's
    // waker, which also runs its scan for overdue keys; the reaper's own
    // timer is what `reaper_wipes_keys_on_the_real_clock_with_no_traffic`
    // tests.)
    clock.advance(Duration::from_nanos(1));
    let after = cache.stats();
    assert_eq!(after.keys_wiped, 1, "wiped at exactly end(e) + ttl");
    assert_eq!(after.live_keys, 1);
    assert_eq!(testing::export_live_keys(&cache).len(), 1);
    assert_eq!(cache.len(), 1, "the entry sealed under it was dropped");
    assert_eq!(after.expirations, 1);

    clock.advance(Duration::from_secs(15));
    let last = cache.stats();
    assert_eq!((last.keys_wiped, last.live_keys), (2, 0));
    assert!(testing::slab_is_zero(&cache));
    assert!(cache.is_empty());
    assert!(last.reaper_alive);
}

/// The one test on the real clock. Under a `ManualClock` every `advance`
/// wakes the reaper through the clock's waker; here nothing wakes it but its
/// own timer on `BootClock`, as in production, and nothing calls the cache
/// but `stats()`, which only reads counters. The key must be wiped no
/// earlier than the entry's TTL and soon after its deadline, `end(epoch) +
/// ttl`, which is at most `ttl + epoch` after the insert.
#[test]
fn reaper_wipes_keys_on_the_real_clock_with_no_traffic() {
    let ttl = Duration::from_secs(1); // the shortest TTL accepted
    let cache = SealCache::builder()
        .ttl(ttl)
        .build()
        .expect("cache on the default BootClock");
    let epoch = cache.epoch_length();
    // The insert reads the clock between these two instants.
    let before = std::time::Instant::now();
    cache.insert("k", "v").unwrap();
    let inserted = std::time::Instant::now();
    assert_eq!(cache.stats().live_keys, 1);

    let wiped_within = loop {
        let seen = cache.stats();
        let elapsed = inserted.elapsed();
        if seen.keys_wiped == 1 {
            let since_before = before.elapsed();
            assert!(
                since_before >= ttl,
                "key wiped {since_before:?} after the insert began, before the {ttl:?} TTL"
            );
            break elapsed;
        }
        assert_eq!(seen.keys_wiped, 0);
        assert!(
            elapsed < Duration::from_secs(10),
            "key still live 10 s after the insert"
        );
        thread::sleep(Duration::from_millis(10));
    };
    // Scheduling slack on a loaded 2-core machine (the test suite forks
    // and builds in parallel): 3 s. The exact deadline is proved on the
    // manual clock (`reaper_wipes_each_key_at_its_deadline_with_no_traffic`).
    let latest = ttl + epoch + Duration::from_secs(3);
    assert!(
        wiped_within <= latest,
        "key wiped {wiped_within:?} after the insert (deadline at most {:?})",
        ttl + epoch
    );
    assert!(cache.sync_reaper(), "reaper alive");
    assert!(testing::slab_is_zero(&cache));
    assert!(cache.is_empty(), "the entry sealed under it was dropped");
    assert_eq!(cache.stats().live_keys, 0);
}

fn reaper_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "sealcache-reape") // comm is cut at 15 bytes
        .count()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn dropping_the_last_handle_joins_the_reaper_and_leaks_no_fd() {
    // Counted in a child process so that no other test's cache or file
    // descriptor is counted.
    if !in_child(
        "dropping_the_last_handle_joins_the_reaper_and_leaks_no_fd",
        "last-handle",
        Duration::from_secs(60),
    ) {
        return;
    }
    let (threads_before, fds_before) = (reaper_threads(), open_fds());
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 10);
    let clone = cache.clone();
    cache.insert("k", "v").unwrap();
    assert_eq!(reaper_threads(), threads_before + 1, "one reaper per cache");
    drop(cache);
    assert!(clone.get("k").unwrap().is_some(), "clones share the cache");
    assert_eq!(reaper_threads(), threads_before + 1, "a clone keeps it");
    drop(clone);
    assert_eq!(reaper_threads(), threads_before, "reaper joined");
    assert_eq!(
        open_fds(),
        fds_before,
        "memfd_secret and sentinel fds closed"
    );
    // The clock no longer reaches a reaper; advancing must not hang.
    clock.advance(Duration::from_secs(3600));
}

#[test]
fn debug_output_of_every_public_type_holds_no_secret_byte() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 10);
    let secret = "TOPSECRET-0123456789";
    cache.insert("k", secret).unwrap();
    let got = cache.get("k").unwrap().unwrap();
    let keys = testing::export_live_keys(&cache);
    let builder = SealCache::builder().clock(clock.clone());
    let load_errors = [
        LoadError::<String>::Loader(Arc::new("db down".into())),
        LoadError::LoaderPanicked,
        LoadError::LoaderFailedElsewhere,
        LoadError::Reentrant,
        LoadError::Cache(Error::Integrity),
    ];
    let config_error = SealCache::builder()
        .ttl(Duration::ZERO)
        .build()
        .expect_err("a zero TTL is rejected");
    let shown = format!(
        "{cache:?} {got:?} {:?} {:?} {} {clock:?} {:?} {builder:?} {load_errors:?} \
         {config_error} {config_error:?} {:?} {:?}",
        cache.stats(),
        cache.protections(),
        cache.protections(),
        SecretBytes::from(secret),
        sealcache::BootClock,
        [
            Error::Integrity,
            Error::Forked,
            Error::Random,
            Error::Reaper
        ],
    );
    let mut secrets: Vec<&[u8]> = vec![secret.as_bytes()];
    secrets.extend(keys.iter().map(<[u8; 32]>::as_slice));
    assert_clean(&shown, &secrets, "Debug output");
}

#[test]
fn protections_are_all_verified_on_this_machine() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 10);
    let report = cache.protections();
    assert!(report.missing().is_empty(), "{report}");
    assert!(report.mlock && report.no_dump && report.guard_pages && report.canary);
    assert!(report.fork_wipe);
    // Where the kernel has memfd_secret, Auto must pick it.
    let memfd_secret = testing::require_memfd_secret(
        "protections_are_all_verified_on_this_machine (memfd_secret part)",
    );
    assert_eq!(report.memfd_secret, memfd_secret, "{report}");
    let anon = SealCache::builder()
        .backend(Backend::LockedAnonymous)
        .protection(Protection::Require)
        .build()
        .unwrap();
    let anon_report = anon.protections();
    assert!(!anon_report.memfd_secret);
    assert!(anon_report.missing().is_empty(), "{anon_report}");
    assert!(cache.locked_bytes() >= 32 * 6);
    // What the report says, checked from the kernel's side.
    assert_slab_protected_by_kernel(&cache, if memfd_secret { "dc" } else { "wf" });
    assert_slab_protected_by_kernel(&anon, "wf");
}

/// This process's locked memory as the kernel counts it (`VmLck`), in bytes.
fn vm_locked() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmLck:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn locked_memory_does_not_grow_with_entries() {
    // Measured in a child process: `VmLck` counts every cache in the process.
    if !in_child(
        "locked_memory_does_not_grow_with_entries",
        "vmlck",
        Duration::from_secs(120),
    ) {
        return;
    }
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 20_000);
    // One entry, read once through `with`: the slab and one pooled scratch
    // buffer are locked.
    cache.insert(&0u32.to_le_bytes(), &[1u8; 64]).unwrap();
    assert_eq!(
        cache.with(&0u32.to_le_bytes(), |b| b.len()).unwrap(),
        Some(64)
    );
    let (locked, kernel) = (cache.locked_bytes(), vm_locked());
    assert!(kernel >= locked, "VmLck {kernel} < slab {locked}");
    for i in 1..20_000u32 {
        cache.insert(&i.to_le_bytes(), &[1u8; 64]).unwrap();
    }
    for i in (0..20_000u32).step_by(7) {
        assert_eq!(cache.with(&i.to_le_bytes(), |b| b[0]).unwrap(), Some(1));
    }
    assert_eq!(cache.len(), 20_000);
    assert_eq!(cache.locked_bytes(), locked);
    assert_eq!(vm_locked(), kernel, "20,000 entries locked no more memory");
}

/// The `/proc/self/smaps` mappings as (start, end, perms, VmFlags).
fn smaps() -> Vec<(usize, usize, String, Vec<String>)> {
    // Bytes, not text: a mapping's path need not be UTF-8.
    let bytes = std::fs::read("/proc/self/smaps").unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let mut out: Vec<(usize, usize, String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.3 = flags.split_whitespace().map(String::from).collect();
            }
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) {
            out.push((start, end, perms.to_string(), Vec::new()));
        }
    }
    out
}

/// Checks the key slab's protections from the kernel's side, independently
/// of what `protections()` says: the slab's mapping is locked (`lo`), left
/// out of core dumps (`dd`) and kept from a forked child (`wf`, wipe on
/// fork, for anonymous memory; `dc`, not copied, for `memfd_secret`), and
/// the pages just before and after it are inaccessible guard pages.
fn assert_slab_protected_by_kernel(cache: &SealCache, fork_flag: &str) {
    let slab = testing::slab_range(cache);
    let maps = smaps();
    let find = |addr: usize| {
        maps.iter()
            .find(|(start, end, _, _)| (*start..*end).contains(&addr))
            .unwrap_or_else(|| panic!("no mapping holds {addr:#x}"))
    };
    let (_, _, perms, flags) = find(slab.start);
    assert!(perms.starts_with("rw"), "slab mapping {perms}");
    for flag in ["lo", "dd", fork_flag] {
        assert!(
            flags.iter().any(|f| f == flag),
            "slab mapping lacks VmFlag {flag}: {flags:?}"
        );
    }
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size");
    let before = find(slab.start / page * page - 1);
    let after = find(slab.end.div_ceil(page) * page);
    for (_, _, perms, _) in [before, after] {
        assert!(perms.starts_with("---"), "guard page is {perms}");
    }
}

#[test]
fn too_long_keys_and_values_are_typed_errors() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 10);
    let long_key = vec![0u8; sealcache::MAX_KEY_LEN + 1];
    assert!(matches!(
        cache.insert(&long_key, "v"),
        Err(Error::KeyTooLong { .. })
    ));
    let long_value = vec![0u8; sealcache::MAX_VALUE_LEN + 1];
    assert!(matches!(
        cache.insert("k", long_value.as_slice()),
        Err(Error::ValueTooLong { .. })
    ));
}

#[test]
fn four_threads_of_mixed_operations_keep_stats_consistent() {
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 500);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let cache = cache.clone();
            let clock = clock.clone();
            thread::spawn(move || {
                let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                let mut reads = 0u64;
                for _ in 0..10_000 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let key = format!("key-{}", state % 1000);
                    match state % 100 {
                        0..=39 => {
                            let value = format!("value-of-{key}");
                            cache.insert(&key, value.as_str()).unwrap();
                        }
                        40..=79 => {
                            reads += 1;
                            if let Some(v) = cache.get(&key).unwrap() {
                                assert_eq!(v.expose_secret(), format!("value-of-{key}").as_bytes());
                            }
                        }
                        80..=89 => {
                            reads += 1;
                            cache
                                .with(&key, |v| {
                                    assert_eq!(v, format!("value-of-{key}").as_bytes())
                                })
                                .unwrap();
                        }
                        90..=95 => {
                            cache.invalidate(&key);
                        }
                        96..=98 => clock.advance(Duration::from_secs(1)),
                        _ => {
                            if state % 1000 == 999 {
                                cache.invalidate_all();
                            }
                        }
                    }
                }
                reads
            })
        })
        .collect();
    let reads: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, reads);
    assert_eq!(stats.integrity_failures, 0);
    assert!(cache.len() <= 500);
    assert!(stats.keys_wiped <= stats.keys_created);
    assert!(stats.live_keys <= stats.keys_created - stats.keys_wiped);
    assert!(stats.reaper_alive);
}

#[test]
fn a_read_never_returns_a_value_replaced_before_it_started() {
    // One writer replaces a hot key's value with ever higher versions and
    // publishes each version once its insert has returned. A read that
    // starts after version v was published must return v or a later one
    // (or nothing, if the entry expired or its key was wiped underneath it),
    // while the clock moves, keys roll over and the reaper wipes them.
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 100);
    let published = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    cache.insert("hot", 0u64.to_le_bytes().as_slice()).unwrap();
    thread::scope(|scope| {
        scope.spawn(|| {
            let mut version = 0u64;
            while !done.load(Ordering::Relaxed) {
                version += 1;
                cache
                    .insert("hot", version.to_le_bytes().as_slice())
                    .unwrap();
                published.store(version, Ordering::SeqCst);
            }
        });
        scope.spawn(|| {
            for _ in 0..200 {
                clock.advance(TTL / 8);
                thread::sleep(Duration::from_micros(200));
            }
        });
        let readers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut seen = 0u64;
                    for _ in 0..20_000 {
                        let floor = published.load(Ordering::SeqCst);
                        let Some(value) = get(&cache, "hot") else {
                            continue;
                        };
                        let version = u64::from_le_bytes(value.try_into().unwrap());
                        assert!(
                            version >= floor,
                            "read version {version} after {floor} was published"
                        );
                        seen += 1;
                    }
                    seen
                })
            })
            .collect();
        let seen: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        done.store(true, Ordering::Relaxed);
        assert!(seen > 0, "no read found the key");
    });
    let stats = cache.stats();
    assert_eq!(stats.integrity_failures, 0);
    assert!(stats.keys_wiped > 0, "keys rolled over and were wiped");
}

#[test]
fn from_env_reads_the_documented_variables() {
    let builder = sealcache::Builder::from_env_with(|name| match name {
        "SEALCACHE_TTL_SECS" => Some("120".into()),
        "SEALCACHE_MAX_ENTRIES" => Some("5".into()),
        _ => None,
    })
    .unwrap();
    let cache = builder.build().unwrap();
    assert_eq!(cache.ttl(), Duration::from_secs(120));
    assert_eq!(cache.max_entries(), 5);
    let err = sealcache::Builder::from_env_with(|name| {
        (name == "SEALCACHE_MAX_ENTRIES").then(|| "lots".into())
    })
    .unwrap_err();
    assert!(err.to_string().contains("SEALCACHE_MAX_ENTRIES"));
    let _ = Arc::new(cache);
}

/// Runs this test binary again as a child with `role` set, and fails if it
/// fails or takes longer than `limit`.
/// In the parent, runs `test` again in a child process in `role` (which
/// must pass within `limit`) and returns false; in that child, returns true.
fn in_child(test: &str, role: &str, limit: Duration) -> bool {
    if std::env::var("SEALCACHE_CHILD_ROLE").as_deref() == Ok(role) {
        return true;
    }
    run_child(test, role, limit);
    false
}

fn run_child(test: &str, role: &str, limit: Duration) {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["--exact", test, "--test-threads=1", "--nocapture"])
        .env("SEALCACHE_CHILD_ROLE", role)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "child {role} failed: {status}");
            return;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("child {role} hung");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_forked_child_refuses_to_serve_and_never_waits_for_a_reaper() {
    if !in_child(
        "a_forked_child_refuses_to_serve_and_never_waits_for_a_reaper",
        "fork",
        Duration::from_secs(60),
    ) {
        return;
    }
    let clock = ManualClock::new();
    let cache = cache_with(&clock, 10);
    cache.insert("k", "parent-value").unwrap();
    // SAFETY: fork in a process whose only other thread is the idle reaper;
    // the child only uses the cache (whose locks are free) and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let refused = matches!(cache.get("k"), Err(Error::Forked))
            && matches!(cache.with("k", |_| ()), Err(Error::Forked))
            && matches!(cache.insert("k", "child"), Err(Error::Forked));
        let no_reaper = !cache.sync_reaper() && !cache.stats().reaper_alive;
        clock.advance(Duration::from_secs(3600)); // must not wait for a reaper
        drop(cache); // must not join a thread that does not exist here
        // SAFETY: _exit ends the child without running the parent's atexit
        // handlers or flushing its stdio buffers twice.
        unsafe { libc::_exit(if refused && no_reaper { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child we just created.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
    assert_eq!(
        get(&cache, "k").unwrap(),
        b"parent-value",
        "parent unaffected"
    );
    assert!(cache.stats().reaper_alive);
}

/// A clock that parks the thread named `parked` inside `now()` once armed:
/// `insert` reads the clock while it holds the flight-table lock of its key.
#[derive(Debug, Clone)]
struct ParkingClock {
    start: std::time::Instant,
    armed: Arc<std::sync::atomic::AtomicBool>,
    parked: Arc<std::sync::Barrier>,
    resume: Arc<std::sync::Barrier>,
}

impl sealcache::Clock for ParkingClock {
    fn now(&self) -> Duration {
        if thread::current().name() == Some("parked")
            && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.parked.wait();
            self.resume.wait();
        }
        self.start.elapsed()
    }
}

/// Parent threads hold locks of the cache when another thread forks (the
/// flight-table lock that `insert`, `invalidate` and loads take, and the
/// store shard lock that reads take): the child, where those locks stay
/// held forever, gets `Error::Forked` (or a no-op) from every entry point
/// instead of hanging on them.
#[test]
fn a_forked_child_refuses_even_while_a_parent_thread_held_a_cache_lock() {
    if !in_child(
        "a_forked_child_refuses_even_while_a_parent_thread_held_a_cache_lock",
        "fork-locked",
        Duration::from_secs(60),
    ) {
        return;
    }
    let clock = ParkingClock {
        start: std::time::Instant::now(),
        armed: Arc::default(),
        parked: Arc::new(std::sync::Barrier::new(2)),
        resume: Arc::new(std::sync::Barrier::new(2)),
    };
    let cache = SealCache::builder().clock(clock.clone()).build().unwrap();
    cache.insert("k", "v1").unwrap();
    clock.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let inserter = {
        let cache = cache.clone();
        thread::Builder::new()
            .name("parked".into())
            .spawn(move || cache.insert("k", "v2"))
            .unwrap()
    };
    clock.parked.wait(); // `parked` now holds the flight-table lock of "k"
    // A second thread holds the store shard lock of "k" (tampering holds it
    // while its closure runs).
    let shard_held = Arc::new(std::sync::Barrier::new(2));
    let shard_release = Arc::new(std::sync::Barrier::new(2));
    let shard_holder = {
        let (cache, held, release) = (cache.clone(), shard_held.clone(), shard_release.clone());
        thread::spawn(move || {
            testing::tamper(&cache, b"k", |_| {
                held.wait();
                release.wait();
            })
        })
    };
    shard_held.wait();
    // SAFETY: the child only calls the cache (whose entry points must not
    // take the held lock) and `_exit`s; `alarm` turns a hang into SIGALRM.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: alarm(2) only schedules a signal for this process.
        unsafe { libc::alarm(10) };
        let refused = matches!(cache.insert("k", "child"), Err(Error::Forked))
            && matches!(cache.get("k"), Err(Error::Forked))
            && matches!(cache.with("k", |_| ()), Err(Error::Forked))
            && matches!(
                cache.get_or_try_load("k", || Ok::<_, ()>(Some("loaded"))),
                Err(sealcache::LoadError::Cache(Error::Forked))
            )
            && !cache.invalidate("k")
            && cache.stats() == sealcache::Stats::default();
        cache.invalidate_all();
        // SAFETY: _exit ends the child without running the parent's atexit
        // handlers or flushing its stdio buffers twice.
        unsafe { libc::_exit(if refused { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child we just created.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    shard_release.wait();
    assert!(shard_holder.join().unwrap(), "the holder found the entry");
    clock.resume.wait();
    inserter.join().unwrap().unwrap();
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x} (signal 14 = SIGALRM: it hung on the held lock)"
    );
    assert_eq!(get(&cache, "k").unwrap(), b"v2", "parent unaffected");
}

#[test]
fn public_types_are_send_and_sync_where_users_need_them() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<SealCache>();
    send_sync::<ManualClock>();
    send_sync::<Error>();
    send_sync::<sealcache::Stats>();
    send_sync::<sealcache::Protections>();
    send::<SecretBytes>();
    send_sync::<sealcache::LoadError<std::io::Error>>();
}

/// One thread adds new keys while another keeps replacing one key: the
/// cache holds exactly `max_entries` entries throughout (each added entry
/// evicts one, a replacement evicts none), never fewer because the two
/// evicted for the same overflow.
#[test]
fn concurrent_inserts_evict_one_entry_per_entry_added() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const MAX: usize = 32;
    let clock = ManualClock::new();
    let cache = cache_with(&clock, MAX);
    for i in 0..MAX {
        cache.insert(format!("fill{i}").as_str(), "x").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let below = Arc::new(AtomicUsize::new(0));
    let adder = {
        let (cache, stop) = (cache.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            for i in 0..50_000u32 {
                cache.insert(format!("new{i}").as_str(), "x").unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let replacer = {
        let (cache, stop, below) = (cache.clone(), Arc::clone(&stop), Arc::clone(&below));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                cache.insert("hot", "x").unwrap();
                if cache.len() < MAX {
                    below.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    adder.join().unwrap();
    replacer.join().unwrap();
    assert_eq!(
        below.load(Ordering::Relaxed),
        0,
        "live entries were evicted below the bound"
    );
    assert_eq!(cache.len(), MAX);
}

/// A `Clock` whose next `panics` readings on the reaper thread panic; it
/// behaves otherwise. It wakes no reaper when it moves (its
/// `register_waker` is the default no-op), so the reaper sees time pass
/// only by re-reading it on its own.
#[derive(Debug, Clone)]
struct ClockThatPanicsOnReaper {
    inner: ManualClock,
    /// How many of the reaper thread's next readings panic.
    panics: Arc<AtomicU32>,
}

impl sealcache::Clock for ClockThatPanicsOnReaper {
    fn now(&self) -> Duration {
        use std::sync::atomic::Ordering;
        if thread::current().name() == Some("sealcache-reaper")
            && self
                .panics
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            panic!("a clock failure (deliberate, in a test)");
        }
        self.inner.now()
    }
}

/// A cache on a [`ClockThatPanicsOnReaper`], the clock it reads, and the
/// count of the reaper's readings still to panic (none yet).
fn cache_with_a_clock_that_panics_on_reaper() -> (SealCache, ManualClock, Arc<AtomicU32>) {
    let inner = ManualClock::new();
    let panics = Arc::new(AtomicU32::new(0));
    let cache = SealCache::builder()
        .ttl(TTL)
        .clock(ClockThatPanicsOnReaper {
            inner: inner.clone(),
            panics: Arc::clone(&panics),
        })
        .build()
        .unwrap();
    (cache, inner, panics)
}

/// The reaper's own timer, as in production: nothing wakes it (its clock
/// registers no waker) and nothing calls the cache but `stats()`. A key is
/// not wiped a nanosecond before its deadline, even after the reaper has
/// re-read the clock (it sleeps at most a second), and is wiped within a
/// second of the deadline, plus scheduling, once the clock reaches it.
#[test]
fn the_reapers_own_timer_wipes_a_key_at_its_deadline_and_not_before() {
    let (cache, clock, _) = cache_with_a_clock_that_panics_on_reaper();
    cache.insert("k", "v").unwrap();
    // Inserted at 0, in epoch 0: the key's deadline is end(0) + ttl.
    let deadline = cache.epoch_length() + TTL;
    clock.advance(deadline - Duration::from_nanos(1));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(cache.stats().keys_wiped, 0, "not before its deadline");
    clock.advance(Duration::from_nanos(1));
    let start = std::time::Instant::now();
    while cache.stats().keys_wiped == 0 && start.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    assert_eq!(cache.stats().keys_wiped, 1, "wiped after its deadline");
    assert!(
        took < Duration::from_millis(1500),
        "wiped {took:?} after its deadline (the reaper sleeps at most 1 s)"
    );
}

/// A `Clock` is user code: one panic on the reaper thread must not stop
/// keys from being wiped at their deadlines, with no traffic and no wake-up
/// (the reaper reads the clock again within a second), nor make inserts
/// fail.
#[test]
fn a_clock_that_panics_once_does_not_stop_the_reaper() {
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    let (cache, inner, panics) = cache_with_a_clock_that_panics_on_reaper();
    cache.insert("k", "v").unwrap();
    assert!(cache.sync_reaper(), "the reaper holds the key's deadline");
    // The reaper now sleeps (at most a second at a time) with no message
    // to come: the next clock reading it makes on its own panics.
    panics.store(1, Ordering::SeqCst);
    let began = Instant::now();
    while panics.load(Ordering::SeqCst) > 0 {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the reaper never read the clock"
        );
        thread::sleep(Duration::from_millis(5));
    }
    inner.advance(TTL * 2); // past the key's deadline; nobody tells the reaper
    let wiped = loop {
        let stats = cache.stats();
        if stats.keys_wiped == 1 {
            break began.elapsed();
        }
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the key outlived its deadline: {stats:?}"
        );
        thread::sleep(Duration::from_millis(10));
    };
    let stats = cache.stats();
    assert!(stats.reaper_alive);
    assert_eq!(stats.live_keys, 0, "{stats:?} after {wiped:?}");
    assert_eq!(cache.len(), 0, "the entry went with its key");
    cache.insert("k2", "v2").unwrap();
    assert_eq!(get(&cache, "k2").unwrap(), b"v2");
}

/// A clock that keeps panicking on the reaper thread cannot keep keys
/// alive past their deadlines: after three failed readings in a row over a
/// second the reaper wipes every key (every entry becomes a miss) and runs
/// on, and once the clock works again new keys are kept and wiped as
/// usual. (That a burst of failures alone does not shred is pinned by
/// `reaper::tests::a_clock_that_fails_three_readings_over_a_second_shreds_every_key`.)
#[test]
fn a_clock_that_keeps_panicking_makes_the_reaper_wipe_every_key() {
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    let (cache, _, panics) = cache_with_a_clock_that_panics_on_reaper();
    cache.insert("k", "v").unwrap();
    assert!(cache.sync_reaper());
    panics.store(u32::MAX, Ordering::SeqCst);
    // Each sync is one more pass, and one more failed reading (the reaper
    // also retries on its own every second).
    let began = Instant::now();
    while cache.stats().live_keys > 0 {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "a failing clock kept the key alive: {:?}",
            cache.stats()
        );
        assert!(!cache.sync_reaper(), "a pass with no clock reports failure");
        // The failures must span a second: no need to make hundreds.
        thread::sleep(Duration::from_millis(100));
    }
    // The shred may have been under way (keys gone, entries not yet): one
    // more pass waits for it to end.
    assert!(!cache.sync_reaper());
    let stats = cache.stats();
    assert!(stats.reaper_alive, "{stats:?}");
    assert_eq!(stats.keys_wiped, 1, "{stats:?}");
    assert_eq!(cache.len(), 0, "the entry went with its key");
    panics.store(0, Ordering::SeqCst);
    // A pass that read the clock before it was mended may still be
    // shredding; a pass that succeeds comes after it.
    assert!(cache.sync_reaper(), "the clock works again");
    assert_eq!(get(&cache, "k"), None);
    cache.insert("k2", "v2").unwrap();
    assert!(cache.sync_reaper());
    assert_eq!(get(&cache, "k2").unwrap(), b"v2");
    assert_eq!(cache.stats().live_keys, 1);
}

/// `get` and `with` never return an entry past its TTL, so they do not
/// decrypt one either, even while `max_stale` keeps it for stale-if-error:
/// a damaged stale entry reads as a plain miss, with no integrity failure
/// (which only an attempt to open it could find).
#[test]
fn get_and_with_do_not_decrypt_stale_entries_they_will_not_return() {
    let clock = ManualClock::new();
    let cache = SealCache::builder()
        .ttl(TTL)
        .max_stale(TTL)
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert("k", "v").unwrap();
    clock.advance(TTL + Duration::from_secs(1)); // expired, within max_stale
    assert!(testing::tamper(&cache, b"k", |sealed| sealed[30] ^= 1));
    assert!(cache.get("k").unwrap().is_none());
    assert!(cache.with("k", |_| ()).unwrap().is_none());
    let stats = cache.stats();
    assert_eq!(
        (stats.integrity_failures, stats.misses, cache.len()),
        (0, 2, 1),
        "{stats:?}"
    );
}
