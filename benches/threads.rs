//! Multi-thread throughput of `get` hits: 1 and 2 threads, each cycling over
//! its own keys (thread t reads keys t, t+T, t+2T, ... of 1,000 cached
//! 64-byte secrets), or all reading one hot key. Criterion's "elements/s" is
//! the total ops/s over all threads. The same harness runs the raw ring open
//! (no shared state: the machine's own scaling ceiling) and the unencrypted
//! peers.

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use common::{ENTRIES, index, key, run_threads};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use sealcache::SealCache;

const SIZE: usize = 64;

fn bench<F: Fn(usize, u64) + Sync>(c: &mut Criterion, group: &str, op: F) {
    let mut g = c.benchmark_group(group);
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter_custom(|iters| run_threads(threads, iters, &op))
        });
    }
    g.finish();
}

fn sealcache_get(c: &mut Criterion) {
    let cache = SealCache::builder()
        .ttl(Duration::from_secs(3600))
        .max_entries(ENTRIES)
        .build()
        .expect("cache");
    let keys: Vec<String> = (0..ENTRIES).map(key).collect();
    for k in &keys {
        cache.insert(k.as_str(), &[1u8; SIZE]).unwrap();
    }
    // Two threads: thread 0 reads even keys, thread 1 odd ones. (With one
    // thread, stride 2 still only reads even keys: same working set size
    // per thread.)
    bench(c, "mt/sealcache_get_64", |t, i| {
        let k = &keys[index(t, i, 2)];
        black_box(cache.get(k.as_str()).unwrap().unwrap());
    });
    // Every thread reads the same entry (one hot secret, e.g. a database
    // password every request needs).
    bench(c, "mt/sealcache_get_hot_64", |_, _| {
        black_box(cache.get(keys[0].as_str()).unwrap().unwrap());
    });
    bench(c, "mt/sealcache_with_64", |t, i| {
        let k = &keys[index(t, i, 2)];
        black_box(cache.with(k.as_str(), |b| b[0]).unwrap().unwrap());
    });
}

fn raw_open(c: &mut Criterion) {
    let master = [7u8; 32];
    let sealed: Vec<([u8; 24], Vec<u8>, [u8; 16])> = (0..ENTRIES)
        .map(|_| {
            let mut nonce = [0u8; 24];
            getrandom::fill(&mut nonce).unwrap();
            let (k, n) = derive(&master, &nonce);
            let mut ct = vec![1u8; SIZE];
            let tag = k
                .seal_in_place_separate_tag(n, Aad::from(b"aad"), &mut ct)
                .unwrap();
            (nonce, ct, tag.as_ref().try_into().unwrap())
        })
        .collect();
    bench(c, "mt/raw_open_ring_64", |t, i| {
        let (nonce, ct, tag) = &sealed[index(t, i, 2)];
        let mut out = ct.clone();
        let (k, n) = derive(&master, nonce);
        k.open_in_place_separate_tag(n, Aad::from(b"aad"), Tag::from(*tag), &mut out, 0..)
            .unwrap();
        black_box(out);
    });
}

fn derive(key: &[u8; 32], nonce: &[u8; 24]) -> (LessSafeKey, Nonce) {
    let mut input = [0u8; 16];
    input.copy_from_slice(&nonce[..16]);
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&nonce[16..]);
    let subkey = chacha20::hchacha::<chacha20::R20>(key.into(), (&input).into());
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, subkey.as_slice()).unwrap();
    (LessSafeKey::new(unbound), Nonce::assume_unique_for_key(n))
}

fn peers(c: &mut Criterion) {
    let keys: Vec<String> = (0..ENTRIES).map(key).collect();
    let moka_cache: moka::sync::Cache<String, Vec<u8>> = moka::sync::Cache::builder()
        .max_capacity(ENTRIES as u64)
        .time_to_live(Duration::from_secs(3600))
        .build();
    for k in &keys {
        moka_cache.insert(k.clone(), vec![1u8; SIZE]);
    }
    bench(c, "mt/moka_get_64", |t, i| {
        black_box(moka_cache.get(keys[index(t, i, 2)].as_str()).unwrap());
    });
    let map: Mutex<HashMap<String, Vec<u8>>> =
        Mutex::new(keys.iter().map(|k| (k.clone(), vec![1u8; SIZE])).collect());
    bench(c, "mt/mutex_hashmap_get_64", |t, i| {
        let k = keys[index(t, i, 2)].as_str();
        black_box(map.lock().unwrap().get(k).unwrap().clone());
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = sealcache_get, raw_open, peers
}
criterion_main!(benches);
