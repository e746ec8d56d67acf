//! Test hooks (feature `test-hooks`): raw sealing, slab addresses, key
//! export and entry tampering, for the forensics tests, fuzz targets and
//! benchmarks. **Never enable this feature in a production build**: it can
//! copy epoch keys out of locked memory.

use std::ops::Range;

use crate::SealCache;

pub use crate::memory::environment::{
    STRICT_ENV, memfd_secret_supported, require, require_memfd_secret,
};

/// Bytes a sealed entry adds to its plaintext (version, nonce, tag).
pub const SEAL_OVERHEAD: usize = crate::seal::OVERHEAD;

/// Seals `plaintext` as the cache would, under `key` for `epoch` and
/// `cache_key`, with a fresh random nonce.
pub fn seal(key: &[u8; 32], epoch: u64, cache_key: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let len = crate::seal::sealed_len(plaintext.len()).unwrap_or(0);
    let mut out = vec![0; len];
    if crate::seal::seal_into(key, epoch, cache_key, plaintext, &mut out).is_err() {
        out.clear();
    }
    out
}

/// Opens a sealed entry as the cache would; `None` on any failure.
pub fn open(key: &[u8; 32], epoch: u64, cache_key: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let len = crate::seal::plaintext_len(sealed)?;
    let mut out = vec![0; len];
    crate::seal::open_into(key, epoch, cache_key, sealed, &mut out).ok()?;
    Some(out)
}

/// Address range of the cache's key slab.
pub fn slab_range(cache: &SealCache) -> Range<usize> {
    cache.core_for_hooks().keyring.address_range()
}

/// Copies of every live epoch key (to hand to a scanning parent process).
pub fn export_live_keys(cache: &SealCache) -> Vec<[u8; 32]> {
    cache.core_for_hooks().keyring.export_live_keys()
}

/// Whether every byte of the key slab is zero.
pub fn slab_is_zero(cache: &SealCache) -> bool {
    cache.core_for_hooks().keyring.slab_is_zero()
}

/// Applies `f` to the stored sealed bytes of `key`; false if absent.
pub fn tamper(cache: &SealCache, key: &[u8], f: impl FnOnce(&mut [u8])) -> bool {
    cache.core_for_hooks().store.tamper(key, f)
}

/// Swaps the sealed bytes of two entries; false if either is absent.
pub fn swap_sealed(cache: &SealCache, a: &[u8], b: &[u8]) -> bool {
    cache.core_for_hooks().store.swap_sealed(a, b)
}

/// Estimated heap bytes held by the entries.
pub fn heap_bytes(cache: &SealCache) -> usize {
    cache.core_for_hooks().store.heap_bytes()
}
