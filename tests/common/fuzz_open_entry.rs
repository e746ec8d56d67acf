//! The `open_entry` fuzz target's property, shared with
//! `tests/fuzz_seeds.rs` (which replays the committed seeds).
//!
//! Opening sealed entries: a known secret is sealed under a key, a fixed
//! epoch and a fixed cache key, then the fuzzer alters the sealed bytes
//! (flips, sets, inserts, removes, truncates, extends, replaces) and may
//! change the key, the epoch and the cache key. `testing::open` must never
//! panic, and must succeed only when all four equal the originals exactly,
//! returning the exact secret. The rest of the input is opened as a fully
//! arbitrary entry.
//!
//! The key is fresh random bytes on every execution, not a constant: under a
//! constant key, libFuzzer's comparison tracing records a genuine sealed
//! entry from one execution and replays it in a later one, where it opens
//! (to that execution's secret) — a replay, which is valid AEAD behaviour
//! under a reused key, not a forgery. The cache itself never reuses an epoch
//! key across epochs or caches.
//!
//! Input format (see `fuzz/README.md`): secret length and bytes, key mode,
//! epoch mode, cache-key mode, mutation count and mutations, then the raw
//! entry.

use sealcache::testing::{SEAL_OVERHEAD, open, seal};

const EPOCH: u64 = 0x0123_4567_89ab_cdef;
const CACHE_KEY: &[u8] = b"db/password";

/// Reads the input front to back; past the end every read is zero.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.u8()))
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
}

/// Applies one mutation chosen by `r` to `bytes`.
fn mutate(r: &mut Reader<'_>, bytes: &mut Vec<u8>) {
    let tag = r.u8() % 8;
    let at = usize::from(r.u16());
    let arg = r.u8();
    let len = bytes.len();
    match tag {
        0 if len > 0 => bytes[at % len] ^= arg,
        1 if len > 0 => bytes[at % len] = arg,
        2 => bytes.truncate(at % (len + 1)),
        3 => {
            let extra = r.take(usize::from(arg));
            bytes.extend_from_slice(&extra);
        }
        4 => bytes.insert(at % (len + 1), arg),
        5 if len > 0 => {
            bytes.remove(at % len);
        }
        6 => {
            let n = usize::from(r.u16());
            *bytes = r.take(n);
        }
        7 if len > 0 => {
            // Swap two bytes (a no-op when they are equal).
            let other = usize::from(arg) % len;
            bytes.swap(at % len, other);
        }
        _ => {}
    }
}

/// Runs one input; panics on any violation.
pub fn check(data: &[u8]) {
    let mut r = Reader(data);
    let secret_len = usize::from(r.u8());
    let secret = r.take(secret_len);
    let mut base = [0u8; 32];
    getrandom::fill(&mut base).expect("the OS random number generator works");
    let sealed = seal(&base, EPOCH, CACHE_KEY, &secret);
    assert_eq!(sealed.len(), secret.len() + SEAL_OVERHEAD);
    assert_eq!(
        open(&base, EPOCH, CACHE_KEY, &sealed).as_deref(),
        Some(secret.as_slice())
    );

    let mut key = base;
    match r.u8() % 4 {
        1 => key[usize::from(r.u8()) % 32] ^= r.u8(),
        2 => key = std::array::from_fn(|_| r.u8()),
        _ => {}
    }
    let epoch = match r.u8() % 4 {
        1 => EPOCH ^ r.u64(),
        2 => EPOCH.wrapping_add(u64::from(r.u8())),
        3 => r.u64(),
        _ => EPOCH,
    };
    let mut cache_key = CACHE_KEY.to_vec();
    match r.u8() % 4 {
        1 => {
            let n = usize::from(r.u8());
            cache_key = r.take(n);
        }
        2 => cache_key.push(r.u8()),
        3 => {
            cache_key.pop();
        }
        _ => {}
    }
    let mut bytes = sealed.clone();
    for _ in 0..r.u8() % 9 {
        mutate(&mut r, &mut bytes);
    }

    let exact = key == base && epoch == EPOCH && cache_key == CACHE_KEY && bytes == sealed;
    let opened = open(&key, epoch, &cache_key, &bytes);
    if exact {
        assert_eq!(opened.as_deref(), Some(secret.as_slice()), "exact input");
    } else {
        assert_eq!(
            opened,
            None,
            "altered input opened (key {}, epoch {}, cache key {}, bytes {})",
            key == base,
            epoch == EPOCH,
            cache_key == CACHE_KEY,
            bytes == sealed
        );
    }

    // The rest, fully arbitrary, as an entry under the (possibly changed)
    // parameters and under the originals: never opens (that would be a
    // forgery under a key the fuzzer has never seen).
    let raw = r.0;
    assert_eq!(open(&key, epoch, &cache_key, raw), None);
    assert_eq!(open(&base, EPOCH, CACHE_KEY, raw), None);
}
