//! Single-thread benchmarks of `SealCache` against its floor (one
//! XChaCha20-Poly1305 open or seal) and against unencrypted peers
//! (`moka::sync::Cache`, `Mutex<HashMap>`). See BENCHMARKS.md for what each
//! row includes and the results.
//!
//! `cargo bench --bench cache` runs every row except `aead/*/crate_testing`,
//! which needs `--features test-hooks` (the crate's own `testing::open` /
//! `testing::seal`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sealcache::SealCache;

/// Entries in the cache for the hit benchmarks (the "1,000 cached").
const ENTRIES: usize = 1000;
/// Secret sizes measured.
const SIZES: [usize; 2] = [64, 1024];

/// Cache keys as a server would use them: `secret/000042` (13 bytes).
fn key(i: usize) -> String {
    format!("secret/{i:06}")
}

fn value(size: usize, i: usize) -> Vec<u8> {
    (0..size).map(|j| (i + j) as u8).collect()
}

fn cache_with(max_entries: usize) -> SealCache {
    SealCache::builder()
        // The longest TTL: no entry expires and no epoch rolls over while a
        // benchmark runs.
        .ttl(Duration::from_secs(3600))
        .max_entries(max_entries)
        .build()
        .expect("cache (needs mlock: run as root or raise RLIMIT_MEMLOCK)")
}

fn filled(entries: usize, size: usize) -> (SealCache, Vec<String>) {
    let cache = cache_with(entries);
    let keys: Vec<String> = (0..entries).map(key).collect();
    for (i, k) in keys.iter().enumerate() {
        cache.insert(k.as_str(), value(size, i)).unwrap();
    }
    (cache, keys)
}

/// The XChaCha20-Poly1305 constructions the crate uses, rebuilt here so the
/// baselines do not depend on the `test-hooks` feature. Same entry format and
/// associated data as `src/seal.rs`: `[1][nonce 24][ciphertext][tag 16]`,
/// AAD = `"sealcache" || 1 || epoch LE || key_len LE || key`.
mod raw {
    use chacha20poly1305::aead::inout::InOutBuf;
    use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305};
    use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
    use zeroize::{Zeroize, Zeroizing};

    pub const OVERHEAD: usize = 1 + 24 + 16;

    pub fn aad(epoch: u64, key: &[u8]) -> Vec<u8> {
        let mut a = Vec::with_capacity(26 + key.len());
        a.extend_from_slice(b"sealcache");
        a.push(1);
        a.extend_from_slice(&epoch.to_le_bytes());
        a.extend_from_slice(&(key.len() as u64).to_le_bytes());
        a.extend_from_slice(key);
        a
    }

    /// HChaCha20 subkey + ring ChaCha20-Poly1305 key (draft-irtf-cfrg-xchacha).
    fn ring_key(key: &[u8; 32], nonce: &[u8; 24]) -> (LessSafeKey, Nonce) {
        let mut input = [0u8; 16];
        input.copy_from_slice(&nonce[..16]);
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&nonce[16..]);
        let mut derived = chacha20::hchacha::<chacha20::R20>(key.into(), (&input).into());
        let mut subkey = Zeroizing::new([0u8; 32]);
        subkey.copy_from_slice(&derived);
        derived.as_mut_slice().zeroize();
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, subkey.as_slice()).unwrap();
        (LessSafeKey::new(unbound), Nonce::assume_unique_for_key(n))
    }

    fn split(sealed: &[u8]) -> (&[u8; 24], &[u8], &[u8; 16]) {
        let nonce = sealed[1..25].try_into().unwrap();
        let (ct, tag) = sealed[25..].split_at(sealed.len() - 25 - 16);
        (nonce, ct, tag.try_into().unwrap())
    }

    /// Seal with a caller nonce (the nonce's cost is measured separately).
    pub fn seal_ring(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], pt: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; pt.len() + OVERHEAD];
        out[0] = 1;
        out[1..25].copy_from_slice(nonce);
        let (body, tag_out) = out[25..].split_at_mut(pt.len());
        body.copy_from_slice(pt);
        let (k, n) = ring_key(key, nonce);
        let tag = k
            .seal_in_place_separate_tag(n, Aad::from(aad), body)
            .unwrap();
        tag_out.copy_from_slice(tag.as_ref());
        out
    }

    pub fn seal_reference(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], pt: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; pt.len() + OVERHEAD];
        out[0] = 1;
        out[1..25].copy_from_slice(nonce);
        let (body, tag_out) = out[25..].split_at_mut(pt.len());
        body.copy_from_slice(pt);
        let cipher = XChaCha20Poly1305::new(key.into());
        let tag = cipher
            .encrypt_inout_detached(nonce.into(), aad, InOutBuf::from(body))
            .unwrap();
        tag_out.copy_from_slice(&tag);
        out
    }

    /// Open into a fresh exact-size heap buffer, as `SealCache::get` does.
    pub fn open_ring(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, ct, tag) = split(sealed);
        let mut out = vec![0u8; ct.len()];
        out.copy_from_slice(ct);
        let (k, n) = ring_key(key, nonce);
        k.open_in_place_separate_tag(n, Aad::from(aad), Tag::from(*tag), &mut out, 0..)
            .ok()?;
        Some(out)
    }

    pub fn open_reference(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, ct, tag) = split(sealed);
        let mut out = vec![0u8; ct.len()];
        out.copy_from_slice(ct);
        let cipher = XChaCha20Poly1305::new(key.into());
        cipher
            .decrypt_inout_detached(
                nonce.into(),
                aad,
                InOutBuf::from(out.as_mut_slice()),
                tag.into(),
            )
            .ok()?;
        Some(out)
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40)
}

/// Raw AEAD floors: open and seal of one entry of each size, 1,000 distinct
/// entries cycled as in the cache benchmarks.
fn aead(c: &mut Criterion) {
    let ek = [7u8; 32];
    let epoch = 12_345u64;
    for size in SIZES {
        let keys: Vec<String> = (0..ENTRIES).map(key).collect();
        let aads: Vec<Vec<u8>> = keys.iter().map(|k| raw::aad(epoch, k.as_bytes())).collect();
        let sealed: Vec<Vec<u8>> = (0..ENTRIES)
            .map(|i| {
                let mut nonce = [0u8; 24];
                getrandom::fill(&mut nonce).unwrap();
                raw::seal_ring(&ek, &nonce, &aads[i], &value(size, i))
            })
            .collect();
        // The two backends are byte-identical: check it on one entry.
        {
            let nonce = [9u8; 24];
            let pt = value(size, 0);
            assert_eq!(
                raw::seal_ring(&ek, &nonce, &aads[0], &pt),
                raw::seal_reference(&ek, &nonce, &aads[0], &pt)
            );
            assert_eq!(raw::open_reference(&ek, &aads[0], &sealed[0]).unwrap(), pt);
        }

        let mut g = c.benchmark_group("aead/open");
        g.throughput(Throughput::Bytes(size as u64));
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("ring_hchacha", size), |b| {
            b.iter(|| {
                i = (i + 1) % ENTRIES;
                black_box(raw::open_ring(&ek, &aads[i], &sealed[i]).unwrap())
            })
        });
        g.bench_function(BenchmarkId::new("chacha20poly1305", size), |b| {
            b.iter(|| {
                i = (i + 1) % ENTRIES;
                black_box(raw::open_reference(&ek, &aads[i], &sealed[i]).unwrap())
            })
        });
        #[cfg(feature = "test-hooks")]
        g.bench_function(BenchmarkId::new("crate_testing", size), |b| {
            b.iter(|| {
                i = (i + 1) % ENTRIES;
                black_box(
                    sealcache::testing::open(&ek, epoch, keys[i].as_bytes(), &sealed[i]).unwrap(),
                )
            })
        });
        g.finish();

        let pt = value(size, 1);
        let mut g = c.benchmark_group("aead/seal");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("ring_hchacha", size), |b| {
            let nonce = [3u8; 24];
            b.iter(|| {
                i = (i + 1) % ENTRIES;
                black_box(raw::seal_ring(&ek, &nonce, &aads[i], &pt))
            })
        });
        g.bench_function(BenchmarkId::new("chacha20poly1305", size), |b| {
            let nonce = [3u8; 24];
            b.iter(|| {
                i = (i + 1) % ENTRIES;
                black_box(raw::seal_reference(&ek, &nonce, &aads[i], &pt))
            })
        });
        // What `insert` must pay before touching the store: a fresh random
        // nonce (getrandom, one syscall) plus the seal.
        g.bench_function(BenchmarkId::new("ring_hchacha+getrandom", size), |b| {
            b.iter(|| {
                i = (i + 1) % ENTRIES;
                let mut nonce = [0u8; 24];
                getrandom::fill(&mut nonce).unwrap();
                black_box(raw::seal_ring(&ek, &nonce, &aads[i], &pt))
            })
        });
        #[cfg(feature = "test-hooks")]
        g.bench_function(BenchmarkId::new("crate_testing", size), |b| {
            b.iter(|| {
                i = (i + 1) % ENTRIES;
                black_box(sealcache::testing::seal(
                    &ek,
                    epoch,
                    keys[i].as_bytes(),
                    &pt,
                ))
            })
        });
        g.finish();
    }
    let mut g = c.benchmark_group("aead/nonce");
    g.bench_function("getrandom_24B", |b| {
        b.iter(|| {
            let mut nonce = [0u8; 24];
            getrandom::fill(&mut nonce).unwrap();
            black_box(nonce)
        })
    });
    g.finish();
}

/// `get` and `with` hits, `get_or_try_load` hit and miss, `insert`.
fn sealcache_ops(c: &mut Criterion) {
    for size in SIZES {
        let (cache, keys) = filled(ENTRIES, size);
        let mut g = c.benchmark_group("sealcache");
        g.throughput(Throughput::Bytes(size as u64));
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("get_hit", size), |b| {
            b.iter(|| {
                i = (i + 1) % ENTRIES;
                black_box(cache.get(keys[i].as_str()).unwrap().unwrap())
            })
        });
        g.bench_function(BenchmarkId::new("with_hit", size), |b| {
            b.iter(|| {
                i = (i + 1) % ENTRIES;
                black_box(
                    cache
                        .with(keys[i].as_str(), |bytes| bytes[bytes.len() - 1])
                        .unwrap()
                        .unwrap(),
                )
            })
        });
        if size == 64 {
            g.bench_function(BenchmarkId::new("get_or_try_load_hit", size), |b| {
                b.iter(|| {
                    i = (i + 1) % ENTRIES;
                    black_box(
                        cache
                            .get_or_try_load(keys[i].as_str(), || {
                                Ok::<_, Infallible>(Some(&[0u8; 64]))
                            })
                            .unwrap()
                            .unwrap(),
                    )
                })
            });
        }
        // Replacing existing entries keeps the cache at 1,000 entries.
        let fresh = value(size, 99);
        g.bench_function(BenchmarkId::new("insert_replace", size), |b| {
            b.iter(|| {
                i = (i + 1) % ENTRIES;
                cache.insert(keys[i].as_str(), fresh.as_slice()).unwrap()
            })
        });
        g.finish();
        assert_eq!(cache.len(), ENTRIES);
        let stats = cache.stats();
        assert_eq!(stats.integrity_failures, 0);
        assert_eq!(stats.misses, 0);
    }

    // Miss + load: a key space twice the cache size cycled in order defeats
    // LRU, so every call misses, runs the no-op loader, seals, inserts and
    // evicts the least recently used entry.
    let (cache, _) = filled(ENTRIES, 64);
    let keys: Vec<String> = (0..2 * ENTRIES).map(key).collect();
    let secret = [5u8; 64];
    let mut g = c.benchmark_group("sealcache");
    g.throughput(Throughput::Bytes(64));
    let mut i = 0usize;
    g.bench_function(BenchmarkId::new("miss_load_evict", 64), |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(
                cache
                    .get_or_try_load(keys[i].as_str(), || Ok::<_, Infallible>(Some(&secret)))
                    .unwrap()
                    .unwrap(),
            )
        })
    });
    g.bench_function(BenchmarkId::new("get_miss", 64), |b| {
        let absent: Vec<String> = (0..ENTRIES).map(|i| format!("absent/{i:06}")).collect();
        b.iter(|| {
            i = (i + 1) % ENTRIES;
            black_box(cache.get(absent[i].as_str()).unwrap().is_none())
        })
    });
    g.finish();
    let stats = cache.stats();
    if stats.misses == 0 {
        return; // filtered out on the command line
    }
    // Only the first pass over the pre-filled keys can hit (before warm-up
    // has cycled the key space even once).
    assert!(
        stats.hits < ENTRIES as u64,
        "miss_load_evict must not hit in steady state"
    );
    assert!(stats.evictions > 0);
}

/// `invalidate_all` at 100 and 10,000 entries (refill excluded from timing).
fn invalidate_all(c: &mut Criterion) {
    let mut g = c.benchmark_group("sealcache/invalidate_all");
    for n in [100usize, 10_000] {
        let cache = cache_with(10_000);
        let keys: Vec<String> = (0..n).map(key).collect();
        let secret = [5u8; 64];
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                || {
                    for k in &keys {
                        cache.insert(k.as_str(), &secret).unwrap();
                    }
                    assert_eq!(cache.len(), n);
                },
                |()| cache.invalidate_all(),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// Unencrypted peers: a hit returns an owned copy of the 64-byte value (as
/// `SealCache::get` returns an owned `SecretBytes`).
fn peers(c: &mut Criterion) {
    let size = 64;
    let keys: Vec<String> = (0..ENTRIES).map(key).collect();
    let mut g = c.benchmark_group("peers");
    g.throughput(Throughput::Bytes(size as u64));

    let moka_cache: moka::sync::Cache<String, Vec<u8>> = moka::sync::Cache::builder()
        .max_capacity(ENTRIES as u64)
        .time_to_live(Duration::from_secs(3600))
        .build();
    for (i, k) in keys.iter().enumerate() {
        moka_cache.insert(k.clone(), value(size, i));
    }
    moka_cache.run_pending_tasks();
    let mut i = 0usize;
    g.bench_function(BenchmarkId::new("moka_get_vec", size), |b| {
        b.iter(|| {
            i = (i + 1) % ENTRIES;
            black_box(moka_cache.get(keys[i].as_str()).unwrap())
        })
    });
    let moka_arc: moka::sync::Cache<String, Arc<[u8]>> = moka::sync::Cache::builder()
        .max_capacity(ENTRIES as u64)
        .time_to_live(Duration::from_secs(3600))
        .build();
    for (i, k) in keys.iter().enumerate() {
        moka_arc.insert(k.clone(), value(size, i).into());
    }
    moka_arc.run_pending_tasks();
    g.bench_function(BenchmarkId::new("moka_get_arc", size), |b| {
        b.iter(|| {
            i = (i + 1) % ENTRIES;
            black_box(moka_arc.get(keys[i].as_str()).unwrap())
        })
    });

    let map: Mutex<HashMap<String, Vec<u8>>> = Mutex::new(
        keys.iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), value(size, i)))
            .collect(),
    );
    g.bench_function(BenchmarkId::new("mutex_hashmap_get", size), |b| {
        b.iter(|| {
            i = (i + 1) % ENTRIES;
            black_box(map.lock().unwrap().get(keys[i].as_str()).unwrap().clone())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = aead, sealcache_ops, invalidate_all, peers
}
criterion_main!(benches);
