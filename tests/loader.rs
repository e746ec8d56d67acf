//! Read-through loading that protects the database: single flight, fenced
//! invalidation, panics, errors, negative caching, refresh-ahead,
//! stale-if-error, jitter, and the async path.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use sealcache::{ExposeSecret, LoadError, ManualClock, SealCache};

const TTL: Duration = Duration::from_secs(60);

#[derive(Debug, PartialEq, Eq)]
struct DbError(&'static str);

fn cache(clock: &ManualClock) -> SealCache {
    SealCache::builder()
        .ttl(TTL)
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// A cache on `clock` that refreshes entries in the last `fraction` of
/// their TTL.
fn refreshing_cache(clock: &ManualClock, fraction: f64) -> SealCache {
    SealCache::builder()
        .ttl(TTL)
        .refresh_ahead(fraction)
        .clock(clock.clone())
        .build()
        .unwrap()
}

fn value(result: Result<Option<sealcache::SecretBytes>, LoadError<DbError>>) -> Option<Vec<u8>> {
    result.unwrap().map(|s| s.expose_secret().to_vec())
}

/// Spins (yielding, never sleeping for ordering) until `cond` holds.
fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..50_000_000u64 {
        if cond() {
            return;
        }
        thread::yield_now();
    }
    panic!("condition never became true");
}

/// A multi-threaded tokio runtime with two workers (one per core here).
#[cfg(feature = "async")]
fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sixty_four_threads_missing_one_key_make_exactly_one_load_fifty_times() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    for round in 0..50 {
        let key = format!("hot-key-{round}");
        let calls = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(64));
        let handles: Vec<_> = (0..64)
            .map(|_| {
                let (cache, calls, start, key) = (
                    cache.clone(),
                    Arc::clone(&calls),
                    Arc::clone(&start),
                    key.clone(),
                );
                thread::spawn(move || {
                    start.wait();
                    value(cache.get_or_try_load(&key, || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(Duration::from_millis(20));
                        Ok::<_, DbError>(Some(format!("secret-{round}")))
                    }))
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "round {round}");
        let expected = format!("secret-{round}").into_bytes();
        assert!(results.iter().all(|r| r.as_deref() == Some(&expected[..])));
    }
    let stats = cache.stats();
    assert_eq!(stats.loads, 50);
    assert_eq!(stats.coalesced_waits + stats.hits + 50, 50 * 64);
}

#[test]
fn a_hit_never_calls_the_loader() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    cache.insert("k", "cached").unwrap();
    let got = value(
        cache.get_or_try_load("k", || -> Result<Option<&str>, DbError> {
            panic!("loader must not run on a hit")
        }),
    );
    assert_eq!(got.unwrap(), b"cached");
}

#[test]
fn different_keys_load_in_parallel() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let (a_tx, a_rx) = mpsc::channel::<()>();
    let (b_tx, b_rx) = mpsc::channel::<()>();
    let c1 = cache.clone();
    let t1 = thread::spawn(move || {
        value(c1.get_or_try_load("a", || {
            a_tx.send(()).unwrap();
            b_rx.recv_timeout(Duration::from_secs(20))
                .map_err(|_| DbError("serialised"))?;
            Ok(Some("A"))
        }))
    });
    let c2 = cache.clone();
    let t2 = thread::spawn(move || {
        value(c2.get_or_try_load("b", || {
            a_rx.recv_timeout(Duration::from_secs(20))
                .map_err(|_| DbError("serialised"))?;
            b_tx.send(()).unwrap();
            Ok(Some("B"))
        }))
    });
    assert_eq!(t1.join().unwrap().unwrap(), b"A");
    assert_eq!(t2.join().unwrap().unwrap(), b"B");
}

/// Starts a load of `key` whose loader blocks until released; returns the
/// thread and the release handle once the loader is running.
fn blocked_load(
    cache: &SealCache,
    key: &'static str,
    loaded: &'static str,
) -> (thread::JoinHandle<Option<Vec<u8>>>, Arc<Barrier>) {
    blocked_load_returning(cache, key, Ok(Some(loaded)))
}

/// As [`blocked_load`], with a loader that returns `outcome` once released
/// (an error, say); the thread yields what its caller got, as [`value`].
fn blocked_load_returning(
    cache: &SealCache,
    key: &'static str,
    outcome: Result<Option<&'static str>, DbError>,
) -> (thread::JoinHandle<Option<Vec<u8>>>, Arc<Barrier>) {
    let started = Arc::new(Barrier::new(2));
    let release = Arc::new(Barrier::new(2));
    let (c, s, r) = (cache.clone(), Arc::clone(&started), Arc::clone(&release));
    let handle = thread::spawn(move || {
        value(c.get_or_try_load(key, || {
            s.wait();
            r.wait();
            outcome
        }))
    });
    started.wait();
    (handle, release)
}

#[test]
fn invalidate_during_a_load_keeps_the_loaded_value_out_of_the_cache() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    cache.insert("k", "old").unwrap();
    cache.invalidate("k");
    let (handle, release) = blocked_load(&cache, "k", "loaded-before-invalidate");
    assert!(!cache.invalidate("k"));
    release.wait();
    assert_eq!(handle.join().unwrap().unwrap(), b"loaded-before-invalidate");
    assert!(
        cache.get("k").unwrap().is_none(),
        "fenced load was not cached"
    );
    // The next load is cached again.
    let again = value(cache.get_or_try_load("k", || Ok::<_, DbError>(Some("fresh"))));
    assert_eq!(again.unwrap(), b"fresh");
    assert_eq!(cache.get("k").unwrap().unwrap().expose_secret(), b"fresh");
}

#[test]
fn invalidate_all_during_a_load_keeps_the_loaded_value_out_of_the_cache() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let (handle, release) = blocked_load(&cache, "k", "loaded-before-invalidate-all");
    cache.invalidate_all();
    release.wait();
    assert_eq!(
        handle.join().unwrap().unwrap(),
        b"loaded-before-invalidate-all"
    );
    assert!(cache.get("k").unwrap().is_none());
}

#[test]
fn insert_during_a_load_is_not_overwritten_by_the_older_load() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let (handle, release) = blocked_load(&cache, "k", "stale-from-db");
    cache.insert("k", "newer-from-writer").unwrap();
    release.wait();
    assert_eq!(handle.join().unwrap().unwrap(), b"stale-from-db");
    assert_eq!(
        cache.get("k").unwrap().unwrap().expose_secret(),
        b"newer-from-writer"
    );
}

#[test]
fn a_panicking_loader_panics_its_caller_only_and_waiters_get_loader_panicked() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    const WAITERS: u64 = 8;
    let c = cache.clone();
    let leader = thread::spawn(move || {
        catch_unwind(AssertUnwindSafe(|| {
            let _ = c.get_or_try_load("k", || -> Result<Option<&str>, DbError> {
                wait_until(|| c.stats().coalesced_waits == WAITERS);
                panic!("loader exploded")
            });
        }))
    });
    wait_until(|| cache.stats().loads == 1);
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let c = cache.clone();
            thread::spawn(move || {
                c.get_or_try_load("k", || -> Result<Option<&str>, DbError> {
                    panic!("a waiter must not load")
                })
            })
        })
        .collect();
    let panic = leader.join().unwrap().unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"loader exploded"));
    for waiter in waiters {
        assert!(matches!(
            waiter.join().unwrap(),
            Err(LoadError::LoaderPanicked)
        ));
    }
    // Not wedged: the next call loads again.
    let next = value(cache.get_or_try_load("k", || Ok::<_, DbError>(Some("recovered"))));
    assert_eq!(next.unwrap(), b"recovered");
}

#[test]
fn a_loader_error_reaches_every_waiter_and_is_not_cached() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    const WAITERS: u64 = 4;
    let c = cache.clone();
    let leader = thread::spawn(move || {
        c.get_or_try_load("k", || -> Result<Option<&str>, DbError> {
            wait_until(|| c.stats().coalesced_waits == WAITERS);
            Err(DbError("db down"))
        })
    });
    wait_until(|| cache.stats().loads == 1);
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let c = cache.clone();
            thread::spawn(move || {
                c.get_or_try_load("k", || -> Result<Option<&str>, DbError> {
                    panic!("a waiter must not load")
                })
            })
        })
        .collect();
    for result in std::iter::once(leader.join().unwrap())
        .chain(waiters.into_iter().map(|w| w.join().unwrap()))
    {
        match result {
            Err(LoadError::Loader(err)) => assert_eq!(*err, DbError("db down")),
            other => panic!("expected the loader's error, got {other:?}"),
        }
    }
    assert_eq!(cache.stats().load_errors, 1);
    let calls = AtomicUsize::new(0);
    let next = value(cache.get_or_try_load("k", || {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<_, DbError>(Some("ok"))
    }));
    assert_eq!(next.unwrap(), b"ok");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the error was not cached");
}

/// An error and its sources, outermost first.
fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// Every message in an error's chain, outermost first, as a reporter that
/// walks `source()` (`anyhow`'s `{:#}`, `eyre`) prints it.
fn chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    causes(err).map(ToString::to_string).collect()
}

/// A database error with a cause, as real ones have.
#[derive(Debug)]
struct FetchFailed(std::io::Error);

impl std::fmt::Display for FetchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fetching db/password")
    }
}

impl std::error::Error for FetchFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn refused() -> FetchFailed {
    FetchFailed(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    ))
}

/// A load error passes through `?` into `anyhow` (or a boxed error), with
/// every message of the loader error's chain printed once and its causes
/// still reachable: directly when the loader's error is a
/// `std::error::Error`, through `LoadError::into_dyn` when it is an
/// `anyhow::Error` or a boxed error, which are not. Downcasting finds the
/// `LoadError` again. The cache's own wrapped errors (`Error::Config`)
/// print once too.
#[test]
fn load_errors_pass_through_question_mark_with_each_message_once_and_their_causes() {
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let cache = cache(&ManualClock::new());
    let typed = |cache: &SealCache| -> anyhow::Result<()> {
        cache.get_or_try_load("db/password", || -> Result<Option<&str>, FetchFailed> {
            Err(refused())
        })?;
        Ok(())
    };
    let from_anyhow = |cache: &SealCache| -> anyhow::Result<()> {
        cache
            .get_or_try_load("db/password", || -> anyhow::Result<Option<&str>> {
                Err(refused().into())
            })
            .map_err(LoadError::into_dyn)?;
        Ok(())
    };
    let from_box = |cache: &SealCache| -> Result<(), BoxError> {
        cache
            .get_or_try_load("db/password", || -> Result<Option<&str>, BoxError> {
                Err(Box::new(refused()))
            })
            .map_err(LoadError::into_dyn)?;
        Ok(())
    };
    let errors: [BoxError; 3] = [
        typed(&cache).unwrap_err().into(),
        from_anyhow(&cache).unwrap_err().into(),
        from_box(&cache).unwrap_err(),
    ];
    for err in &errors {
        assert_eq!(
            chain(&**err),
            ["loader failed: fetching db/password", "connection refused"]
        );
        let cause = causes(&**err).find_map(|e| e.downcast_ref::<std::io::Error>());
        assert_eq!(
            cause.map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
    }
    let again = from_anyhow(&cache).unwrap_err();
    let back = again
        .downcast_ref::<sealcache::DynLoadError<anyhow::Error>>()
        .expect("the LoadError is reachable by downcasting");
    assert!(matches!(back.0, LoadError::Loader(_)), "{back:?}");
    // Shared with every waiter of the flight, so cheap to clone even when
    // the loader's error (`anyhow::Error`) is not `Clone`.
    assert_eq!(back.clone().to_string(), back.to_string());
    let invalid = SealCache::builder()
        .ttl(Duration::ZERO)
        .build()
        .map(drop)
        .map_err(anyhow::Error::from)
        .unwrap_err();
    let messages: Vec<String> = invalid.chain().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0].starts_with("invalid configuration: "),
        "{messages:?}"
    );
    let cache_failure: LoadError<FetchFailed> = sealcache::Error::Forked.into();
    assert_eq!(chain(&cache_failure).len(), 1);
}

#[test]
fn not_found_is_reloaded_each_time_without_negative_caching() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        let got = value(cache.get_or_try_load("missing", || {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<&str>, DbError>(None)
        }));
        assert!(got.is_none());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Cached "not found" entries hold the names of keys that were asked for
/// (perhaps by an attacker probing): like sealed entries, the reaper drops
/// them with their epoch key once they have expired, with no traffic, so
/// they neither linger nor keep taking room from real secrets.
#[test]
fn the_reaper_drops_expired_not_found_entries_with_no_traffic() {
    let clock = ManualClock::new();
    let cache = SealCache::builder()
        .ttl(TTL)
        .negative_ttl(Duration::from_secs(1))
        .clock(clock.clone())
        .build()
        .unwrap();
    for i in 0..10 {
        let missing = format!("probe-{i}");
        assert!(
            value(cache.get_or_try_load(&missing, || Ok::<Option<&str>, DbError>(None))).is_none()
        );
    }
    assert_eq!(cache.len(), 10, "ten negative entries cached");
    assert_eq!(cache.stats().live_keys, 1, "tied to the epoch's key");
    // Their key's deadline: end of epoch 0 (15 s) + TTL.
    clock.advance(Duration::from_secs(15) + TTL);
    assert_eq!(cache.len(), 0, "dropped by the reaper, nothing read them");
    let stats = cache.stats();
    assert_eq!((stats.expirations, stats.live_keys), (10, 0), "{stats:?}");
}

#[test]
fn negative_caching_remembers_not_found_for_its_own_shorter_ttl() {
    let clock = ManualClock::new();
    let cache = SealCache::builder()
        .ttl(TTL)
        .negative_ttl(Duration::from_secs(5))
        .clock(clock.clone())
        .build()
        .unwrap();
    let calls = AtomicUsize::new(0);
    let load = || {
        value(cache.get_or_try_load("missing", || {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<&str>, DbError>(None)
        }))
    };
    assert!(load().is_none());
    clock.advance(Duration::from_secs(5) - Duration::from_nanos(1));
    assert!(load().is_none());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "served from the negative cache"
    );
    assert_eq!(cache.stats().negative_hits, 1);
    assert!(cache.get("missing").unwrap().is_none());
    clock.advance(Duration::from_nanos(1));
    assert!(load().is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 2, "negative entry expired");
    // Errors are never negatively cached.
    let err = cache.get_or_try_load("flaky", || Err::<Option<&str>, _>(DbError("down")));
    assert!(err.is_err());
    let ok = value(cache.get_or_try_load("flaky", || Ok::<_, DbError>(Some("up"))));
    assert_eq!(ok.unwrap(), b"up");
    // An insert replaces a negative entry.
    cache.insert("missing", "now-present").unwrap();
    assert_eq!(
        cache.get("missing").unwrap().unwrap().expose_secret(),
        b"now-present"
    );
}

#[test]
fn refresh_ahead_reloads_once_while_everyone_else_gets_the_cached_value() {
    let clock = ManualClock::new();
    let cache = refreshing_cache(&clock, 0.25);
    let first = value(cache.get_or_try_load("k", || Ok::<_, DbError>(Some("v1"))));
    assert_eq!(first.unwrap(), b"v1");
    clock.advance(Duration::from_secs(44));
    let outside = value(
        cache.get_or_try_load("k", || -> Result<Option<&str>, DbError> {
            panic!("no refresh before the window")
        }),
    );
    assert_eq!(outside.unwrap(), b"v1");
    clock.advance(Duration::from_secs(1)); // 45 s: the last quarter of the TTL
    let (handle, release) = blocked_load(&cache, "k", "v2");
    for _ in 0..10 {
        let during = value(
            cache.get_or_try_load("k", || -> Result<Option<&str>, DbError> {
                panic!("only one refresh")
            }),
        );
        assert_eq!(during.unwrap(), b"v1", "others keep the cached value");
    }
    release.wait();
    assert_eq!(handle.join().unwrap().unwrap(), b"v2");
    assert_eq!(cache.get("k").unwrap().unwrap().expose_secret(), b"v2");
    let stats = cache.stats();
    assert_eq!((stats.refreshes, stats.loads), (1, 2));
    // The refreshed entry lives a full TTL from its reload.
    clock.advance(TTL - Duration::from_nanos(1));
    assert!(cache.get("k").unwrap().is_some());
}

/// Callers that read the old value just before a refresh settles reach the
/// flight table after that refresh has left it: they must take what it
/// found (the new value, or a cached "not found"), not start another
/// refresh. Four threads hammer one key in its refresh window, forty times
/// for each outcome; every round makes exactly one load.
#[test]
fn callers_racing_a_finishing_refresh_never_start_a_second_one() {
    use std::sync::atomic::AtomicBool;
    for found in [Some("v2"), None] {
        let mut loads_per_round = Vec::new();
        for _ in 0..40 {
            let clock = ManualClock::new();
            let cache = SealCache::builder()
                .ttl(TTL)
                .refresh_ahead(0.25)
                .negative_ttl(Duration::from_secs(30))
                .clock(clock.clone())
                .build()
                .unwrap();
            value(cache.get_or_try_load("k", || Ok::<_, DbError>(Some("v1"))));
            clock.advance(Duration::from_secs(45));
            let loads = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let start = Arc::new(Barrier::new(5));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (cache, loads, stop, start) = (
                        cache.clone(),
                        Arc::clone(&loads),
                        Arc::clone(&stop),
                        Arc::clone(&start),
                    );
                    thread::spawn(move || {
                        start.wait();
                        // At least one call each, however late the thread runs.
                        loop {
                            let got = cache.get_or_try_load("k", || {
                                loads.fetch_add(1, Ordering::SeqCst);
                                thread::sleep(Duration::from_millis(1));
                                Ok::<_, DbError>(found)
                            });
                            assert!(got.is_ok());
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    })
                })
                .collect();
            start.wait();
            thread::sleep(Duration::from_millis(20));
            stop.store(true, Ordering::Relaxed);
            threads.into_iter().for_each(|t| t.join().unwrap());
            loads_per_round.push(loads.load(Ordering::SeqCst));
        }
        assert!(
            loads_per_round.iter().all(|&n| n == 1),
            "refresh finding {found:?}: loads per round: {loads_per_round:?}"
        );
    }
}

/// A loader that asks the cache for its own key, on its own thread, would
/// wait for itself: it gets `LoadError::Reentrant` at once, also through
/// another key's loader, and the key is not wedged afterwards.
#[test]
fn a_loader_asking_for_its_own_key_gets_reentrant_instead_of_hanging() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let (done_tx, done_rx) = mpsc::channel();
    let inner_cache = cache.clone();
    thread::spawn(move || {
        let direct = inner_cache.get_or_try_load("a", || {
            let inner = inner_cache.get_or_try_load("a", || Ok::<_, DbError>(Some("inner")));
            assert!(matches!(inner, Err(LoadError::Reentrant)), "{inner:?}");
            Ok::<_, DbError>(Some("outer"))
        });
        // a -> b -> a: the cycle goes through another key's loader.
        let cycle = inner_cache.get_or_try_load("c", || {
            let b = inner_cache.get_or_try_load("b", || {
                let inner = inner_cache.get_or_try_load("c", || Ok::<_, DbError>(Some("x")));
                assert!(matches!(inner, Err(LoadError::Reentrant)), "{inner:?}");
                Ok::<_, DbError>(Some("b"))
            });
            assert_eq!(value(b).unwrap(), b"b");
            Ok::<_, DbError>(Some("c"))
        });
        let _ = done_tx.send((value(direct), value(cycle)));
    });
    let (direct, cycle) = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a loader that asked for its own key never returned");
    assert_eq!(direct.unwrap(), b"outer");
    assert_eq!(cycle.unwrap(), b"c");
    assert_eq!(cache.get("a").unwrap().unwrap().expose_secret(), b"outer");
    cache.invalidate("a");
    let again = value(cache.get_or_try_load("a", || Ok::<_, DbError>(Some("again"))));
    assert_eq!(again.unwrap(), b"again", "the key is not wedged");
    assert_eq!(
        LoadError::<std::io::Error>::Reentrant.to_string(),
        "a loader asked for the key it is loading: it would wait for itself"
    );
}

#[test]
fn a_failed_refresh_keeps_serving_the_still_valid_value() {
    let clock = ManualClock::new();
    let cache = refreshing_cache(&clock, 0.5);
    value(cache.get_or_try_load("k", || Ok::<_, DbError>(Some("v1"))));
    clock.advance(Duration::from_secs(31));
    let got = value(cache.get_or_try_load("k", || Err::<Option<&str>, _>(DbError("down"))));
    assert_eq!(got.unwrap(), b"v1");
    assert_eq!(cache.stats().load_errors, 1);
    assert_eq!(
        cache.stats().stale_served,
        0,
        "not stale: still within its TTL"
    );
}

#[test]
fn stale_if_error_is_capped_exactly_at_max_stale() {
    let clock = ManualClock::new();
    let cache = SealCache::builder()
        .ttl(TTL)
        .max_stale(Duration::from_secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    value(cache.get_or_try_load("k", || Ok::<_, DbError>(Some("v1"))));
    let failing = || cache.get_or_try_load("k", || Err::<Option<&str>, _>(DbError("down")));
    clock.advance(TTL); // expired
    assert!(
        cache.get("k").unwrap().is_none(),
        "plain get never serves stale"
    );
    assert_eq!(value(failing()).unwrap(), b"v1");
    clock.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    assert_eq!(value(failing()).unwrap(), b"v1", "just inside max_stale");
    clock.advance(Duration::from_nanos(1));
    assert!(
        matches!(failing(), Err(LoadError::Loader(_))),
        "never past max_stale"
    );
    assert_eq!(cache.stats().stale_served, 2);
    // A successful reload replaces the stale value.
    let fresh = value(cache.get_or_try_load("k", || Ok::<_, DbError>(Some("v2"))));
    assert_eq!(fresh.unwrap(), b"v2");
}

/// A failed reload falls back on the cached value only if that value is
/// still servable when the loader gives up: a slow loader must not carry a
/// value past its expiry (refresh-ahead) or past `max_stale`.
#[test]
fn a_failed_reload_never_serves_a_value_past_expiry_or_max_stale() {
    let clock = ManualClock::new();
    let refreshing = refreshing_cache(&clock, 0.5);
    value(refreshing.get_or_try_load("k", || Ok::<_, DbError>(Some("v1"))));
    clock.advance(Duration::from_secs(31)); // in the refresh window
    let slow_failure = refreshing.get_or_try_load("k", || {
        clock.advance(Duration::from_secs(30)); // t = 61 s: v1 expired at 60 s
        Err::<Option<&str>, _>(DbError("down"))
    });
    assert!(
        matches!(slow_failure, Err(LoadError::Loader(_))),
        "v1 expired while the refresh ran: not served"
    );

    let clock = ManualClock::new();
    let stale = SealCache::builder()
        .ttl(TTL)
        .max_stale(Duration::from_secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    value(stale.get_or_try_load("k", || Ok::<_, DbError>(Some("v1"))));
    clock.advance(TTL + Duration::from_secs(5)); // stale, within max_stale
    let slow_failure = stale.get_or_try_load("k", || {
        clock.advance(Duration::from_secs(5)); // t = 70 s: past max_stale
        Err::<Option<&str>, _>(DbError("down"))
    });
    assert!(
        matches!(slow_failure, Err(LoadError::Loader(_))),
        "past max_stale when the loader gave up: not served"
    );
    assert_eq!(stale.stats().stale_served, 0);
}

/// A value invalidated while a reload runs is never the fallback of that
/// reload: not for the caller that started it, and not for any caller that
/// arrives after `invalidate` or `invalidate_all` returned.
#[test]
fn a_failed_reload_never_falls_back_on_an_invalidated_value() {
    for all in [false, true] {
        let clock = ManualClock::new();
        let cache = SealCache::builder()
            .ttl(TTL)
            .refresh_ahead(0.5)
            .max_stale(Duration::from_secs(10))
            .clock(clock.clone())
            .build()
            .unwrap();
        value(cache.get_or_try_load("k", || Ok::<_, DbError>(Some("revoked"))));
        clock.advance(Duration::from_secs(31)); // a refresh, with v1 as fallback
        let got = cache.get_or_try_load("k", || {
            if all {
                cache.invalidate_all();
            } else {
                assert!(cache.invalidate("k"));
            }
            Err::<Option<&str>, _>(DbError("down"))
        });
        assert!(
            matches!(got, Err(LoadError::Loader(_))),
            "invalidate_all: {all}: the revoked value was served"
        );
        assert!(cache.get("k").unwrap().is_none());
    }
}

#[test]
fn ttl_jitter_spreads_expiries_but_never_lengthens_them() {
    let clock = ManualClock::new();
    let cache = SealCache::builder()
        .ttl(TTL)
        .ttl_jitter(0.5)
        .max_entries(1000)
        .clock(clock.clone())
        .build()
        .unwrap();
    for i in 0..200 {
        cache.insert(&format!("k{i}"), "v").unwrap();
    }
    let live = |cache: &SealCache| {
        (0..200)
            .filter(|i| cache.get(&format!("k{i}")).unwrap().is_some())
            .count()
    };
    clock.advance(Duration::from_secs(30) - Duration::from_nanos(1));
    assert_eq!(live(&cache), 200, "jitter shortens by at most half");
    clock.advance(Duration::from_secs(15));
    let mid = live(&cache);
    assert!(
        mid > 20 && mid < 180,
        "expiries are spread: {mid} live at 45 s"
    );
    clock.advance(Duration::from_secs(15));
    assert_eq!(live(&cache), 0, "nothing outlives the TTL");
}

/// With TTL jitter, the refresh window is measured on the shortest lifetime
/// jitter can give (here 6 s of a 60 s TTL, so a 3 s window): no entry is
/// reloaded right after it was loaded, yet entries are still refreshed
/// before they expire.
#[test]
fn refresh_ahead_with_jitter_never_reloads_a_fresh_entry() {
    let clock = ManualClock::new();
    let cache = SealCache::builder()
        .ttl(TTL)
        .max_entries(1000)
        .refresh_ahead(0.5)
        .ttl_jitter(0.9)
        .clock(clock.clone())
        .build()
        .unwrap();
    let loads = AtomicUsize::new(0);
    let load_all = || {
        for i in 0..200 {
            let got = value(cache.get_or_try_load(&format!("k{i}"), || {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, DbError>(Some("v"))
            }));
            assert!(got.is_some());
        }
    };
    load_all();
    load_all(); // the same instant: age 0
    clock.advance(Duration::from_secs(3) - Duration::from_nanos(1));
    load_all(); // every remaining lifetime is still above the 3 s window
    assert_eq!(loads.load(Ordering::SeqCst), 200);
    assert_eq!(cache.stats().refreshes, 0);
    for _ in 0..57 {
        clock.advance(Duration::from_secs(1));
        load_all();
    }
    assert!(
        cache.stats().refreshes > 0,
        "entries are still refreshed ahead"
    );
}

/// The async form detects the same re-entrance: a loader future that asks
/// for its own key, through either form, gets `LoadError::Reentrant`
/// instead of waiting for itself, on a single-threaded and on a
/// multi-threaded runtime.
#[cfg(feature = "async")]
#[test]
fn an_async_loader_asking_for_its_own_key_gets_reentrant_instead_of_hanging() {
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = two_worker_runtime();
    for runtime in [single, multi] {
        let clock = ManualClock::new();
        let cache = cache(&clock);
        let outer = runtime.block_on(async {
            let load = cache.get_or_try_load_async("a", async {
                // Let the runtime poll something else first: the mark
                // must hold on whichever poll runs this part.
                tokio::task::yield_now().await;
                let inner = cache
                    .get_or_try_load_async("a", async { Ok::<_, DbError>(Some("inner")) })
                    .await;
                assert!(matches!(inner, Err(LoadError::Reentrant)), "{inner:?}");
                let inner = cache.get_or_try_load("a", || Ok::<_, DbError>(Some("inner")));
                assert!(matches!(inner, Err(LoadError::Reentrant)), "{inner:?}");
                Ok::<_, DbError>(Some("outer"))
            });
            tokio::time::timeout(Duration::from_secs(30), load)
                .await
                .expect("an async loader that asked for its own key never returned")
        });
        assert_eq!(value(outer).unwrap(), b"outer");
        assert_eq!(cache.get("a").unwrap().unwrap().expose_secret(), b"outer");
    }
}

#[cfg(feature = "async")]
#[test]
fn async_path_makes_exactly_one_load_for_sixty_four_tasks() {
    let runtime = two_worker_runtime();
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let calls = Arc::new(AtomicUsize::new(0));
    let results = runtime.block_on(async {
        let start = Arc::new(tokio::sync::Barrier::new(64));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (cache, calls, start) = (cache.clone(), Arc::clone(&calls), Arc::clone(&start));
                tokio::spawn(async move {
                    start.wait().await;
                    cache
                        .get_or_try_load_async("async-key", async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok::<_, DbError>(Some("from-db"))
                        })
                        .await
                        .unwrap()
                        .map(|s| s.expose_secret().to_vec())
                })
            })
            .collect();
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        results
            .iter()
            .all(|r| r.as_deref() == Some(&b"from-db"[..]))
    );
}

#[cfg(feature = "async")]
#[test]
fn a_cancelled_async_leader_hands_the_load_to_a_waiter() {
    let runtime = two_worker_runtime();
    let clock = ManualClock::new();
    let cache = cache(&clock);
    runtime.block_on(async {
        let leader_cache = cache.clone();
        let leader = tokio::spawn(async move {
            leader_cache
                .get_or_try_load_async("k", async {
                    std::future::pending::<()>().await;
                    Ok::<Option<&str>, DbError>(None)
                })
                .await
        });
        while cache.stats().loads == 0 {
            tokio::task::yield_now().await;
        }
        let waiter_cache = cache.clone();
        let waiter = tokio::spawn(async move {
            waiter_cache
                .get_or_try_load_async("k", async { Ok::<_, DbError>(Some("second")) })
                .await
                .unwrap()
                .map(|s| s.expose_secret().to_vec())
        });
        while cache.stats().coalesced_waits == 0 {
            tokio::task::yield_now().await;
        }
        leader.abort();
        assert!(leader.await.is_err());
        assert_eq!(waiter.await.unwrap().unwrap(), b"second");
    });
    // The waiter loaded after all: it did not take another caller's load.
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.coalesced_waits), (2, 0));
}

#[test]
fn a_caller_arriving_after_invalidate_never_receives_the_fenced_load() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let (handle, release) = blocked_load(&cache, "k", "read-before-rotation");
    cache.invalidate("k");
    // Arrives after the invalidation returned: it must run its own load,
    // not wait for (and receive) the one that read the old value, which is
    // still blocked.
    let (tx, rx) = mpsc::channel();
    let c = cache.clone();
    let after = thread::spawn(move || {
        let got = value(c.get_or_try_load("k", || Ok::<_, DbError>(Some("read-after-rotation"))));
        tx.send(got).unwrap();
    });
    let got = rx.recv_timeout(Duration::from_secs(20));
    release.wait();
    after.join().unwrap();
    let got = got.expect("the later caller waited on the fenced load instead of loading");
    assert_eq!(got.unwrap(), b"read-after-rotation");
    assert_eq!(handle.join().unwrap().unwrap(), b"read-before-rotation");
    assert_eq!(
        cache.get("k").unwrap().unwrap().expose_secret(),
        b"read-after-rotation",
        "the detached, fenced load stored nothing"
    );
    assert_eq!(cache.stats().loads, 2);
}

/// An async leader whose task unwinds because of a panic outside the loader
/// (a sibling branch of a `join!`) was dropped, not failed: a waiter takes
/// over and loads, instead of getting `LoaderPanicked`.
#[cfg(feature = "async")]
#[test]
fn an_async_leader_unwound_by_a_panic_elsewhere_in_its_task_hands_over_to_a_waiter() {
    let runtime = two_worker_runtime();
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let (boom_tx, boom_rx) = tokio::sync::oneshot::channel::<()>();
    let leading = cache.clone();
    let leader = runtime.spawn(async move {
        let load = leading.get_or_try_load_async("k", async {
            std::future::pending::<()>().await;
            Ok::<Option<&str>, DbError>(None)
        });
        let sibling = async move {
            let _ = boom_rx.await;
            panic!("a bug in a sibling branch of the leader's task (deliberate)");
        };
        let (loaded, ()) = tokio::join!(load, sibling);
        loaded.is_ok()
    });
    wait_until(|| cache.stats().loads == 1);
    let waiting = cache.clone();
    let waiter = thread::spawn(move || {
        value(waiting.get_or_try_load("k", || Ok::<_, DbError>(Some("from-the-waiter"))))
    });
    wait_until(|| cache.stats().coalesced_waits == 1);
    boom_tx.send(()).unwrap();
    assert!(
        runtime.block_on(leader).is_err(),
        "the leader's task panicked"
    );
    assert_eq!(waiter.join().unwrap().unwrap(), b"from-the-waiter");
    assert_eq!(cache.stats().loads, 2);
}

/// An `insert` that is rejected (a value over `MAX_VALUE_LEN`) changes
/// nothing: a load of the same key in flight still stores its value.
#[test]
fn a_rejected_insert_does_not_fence_a_load_in_flight() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let (load, release) = blocked_load(&cache, "k", "fresh");
    let too_long = vec![0u8; sealcache::MAX_VALUE_LEN + 1];
    assert!(matches!(
        cache.insert("k", too_long),
        Err(sealcache::Error::ValueTooLong { .. })
    ));
    release.wait();
    assert_eq!(load.join().unwrap().unwrap(), b"fresh");
    assert_eq!(
        cache.get("k").unwrap().unwrap().expose_secret(),
        b"fresh",
        "the load's value was stored"
    );
}

/// Two call sites load one key with different error types while the
/// database is down: the waiter does not run a second load (a failing
/// database sees one load per miss storm); it gets `LoaderFailedElsewhere`.
#[test]
fn a_waiter_with_another_error_type_does_not_load_again_after_the_leader_fails() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let calls = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (leading, leader_calls) = (cache.clone(), Arc::clone(&calls));
    let leader = thread::spawn(move || {
        leading.get_or_try_load("k", || {
            leader_calls.fetch_add(1, Ordering::SeqCst);
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            Err::<Option<&str>, _>(DbError("db down"))
        })
    });
    started_rx.recv().unwrap();
    let (waiting, waiter_calls) = (cache.clone(), Arc::clone(&calls));
    let waiter = thread::spawn(move || {
        waiting.get_or_try_load("k", || {
            waiter_calls.fetch_add(1, Ordering::SeqCst);
            Err::<Option<&str>, _>(std::io::Error::other("db down"))
        })
    });
    wait_until(|| cache.stats().coalesced_waits == 1);
    release_tx.send(()).unwrap();
    assert!(matches!(leader.join().unwrap(), Err(LoadError::Loader(_))));
    let waited = waiter.join().unwrap();
    assert!(
        matches!(waited, Err(LoadError::LoaderFailedElsewhere)),
        "{waited:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one miss storm, one load");
    assert_eq!(cache.stats().loads, 1);
}

/// A refresh that fails after an `insert` replaced the entry serves the
/// inserted value, which is live and newer than the load: the fence keeps
/// the load from storing, not the caller from reading what is cached.
#[test]
fn a_failed_refresh_serves_a_value_inserted_while_it_ran() {
    let clock = ManualClock::new();
    let cache = refreshing_cache(&clock, 0.5);
    cache.insert("k", "v1").unwrap();
    clock.advance(TTL / 2 + Duration::from_secs(1));
    let (refresh, release) = blocked_load_returning(&cache, "k", Err(DbError("db down")));
    cache.insert("k", "v2").unwrap();
    release.wait();
    assert_eq!(refresh.join().unwrap().unwrap(), b"v2");
    assert_eq!(cache.get("k").unwrap().unwrap().expose_secret(), b"v2");
    let stats = cache.stats();
    assert_eq!(
        (stats.refreshes, stats.load_errors, stats.stale_served),
        (1, 1, 0)
    );
}

/// An async leader polled on a thread that is unwinding from an unrelated
/// panic (from a `Drop` impl, say), then cancelled: its loader never
/// panicked, so a waiter takes over.
#[cfg(feature = "async")]
#[test]
fn an_async_leader_polled_during_an_unrelated_unwind_then_cancelled_hands_over() {
    use std::future::Future;
    use std::sync::Mutex;
    use std::task::{Context, Waker};

    /// What the waiter got, as text (nothing in `drop` may panic: that
    /// would abort the test binary).
    type Got = Arc<Mutex<Option<String>>>;

    /// Leads a load from its `drop`, which runs while a panic unwinds.
    struct LeadOnDrop(SealCache, Got);
    impl Drop for LeadOnDrop {
        fn drop(&mut self) {
            assert!(thread::panicking());
            let mut lead = Box::pin(self.0.get_or_try_load_async("k", async {
                std::future::pending::<()>().await;
                Ok::<Option<&str>, DbError>(None)
            }));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(lead.as_mut().poll(&mut cx).is_pending());
            let waiting = self.0.clone();
            let waiter = thread::spawn(move || {
                waiting
                    .get_or_try_load("k", || Ok::<_, DbError>(Some("from-the-waiter")))
                    .map(|v| v.map(|s| String::from_utf8_lossy(s.expose_secret()).into_owned()))
            });
            wait_until(|| self.0.stats().coalesced_waits == 1);
            drop(lead);
            let got = waiter.join().map(|got| format!("{got:?}"));
            if let Ok(mut slot) = self.1.lock() {
                *slot = Some(got.unwrap_or_else(|_| "the waiter panicked".into()));
            }
        }
    }

    let clock = ManualClock::new();
    let cache = cache(&clock);
    let got: Got = Arc::default();
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        let _lead = LeadOnDrop(cache.clone(), Arc::clone(&got));
        panic!("an unrelated panic (deliberate)");
    }));
    assert!(unwound.is_err());
    assert_eq!(
        got.lock().unwrap().as_deref(),
        Some(r#"Ok(Some("from-the-waiter"))"#)
    );
}
