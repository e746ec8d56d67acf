//! The types that carry keys and secrets across the API: [`CacheKey`] (the
//! bytes a key is bound by), [`SecretValue`] (what `insert` accepts) and
//! [`SecretBytes`] (what `get` returns: zeroized on drop, redacted in
//! `Debug`, readable only through [`ExposeSecret`]).

use std::fmt;

use secrecy::ExposeSecret;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Anything that can name a cache entry. The bytes it returns are the
/// identity of the entry and are bound into each sealed entry's associated
/// data, so an entry moved to another key fails to open.
///
/// **Keys are not secret.** The cache keeps them in plaintext on the
/// ordinary heap (in its index, in the flight table of a running load, in
/// cached "not found" entries) and does not wipe them when they go: a
/// memory dump shows which keys were cached or asked for. Name entries by
/// an id (`"db/password"`, a user or tenant id), never by a secret; to
/// look a secret up by another secret (a token by its value), key by a
/// keyed hash of it (HMAC under a key of your own).
///
/// Implemented for `str`, `String`, `[u8]`, `Vec<u8>`, `[u8; N]`, the
/// shared and boxed forms `Box`, `Arc` and `Rc` of `str` and `[u8]`,
/// `Cow` of them, and references to all of these.
pub trait CacheKey {
    /// The key's bytes.
    fn key_bytes(&self) -> &[u8];
}

impl CacheKey for str {
    fn key_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}
impl CacheKey for String {
    fn key_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}
impl CacheKey for [u8] {
    fn key_bytes(&self) -> &[u8] {
        self
    }
}
impl CacheKey for Vec<u8> {
    fn key_bytes(&self) -> &[u8] {
        self
    }
}
impl<const N: usize> CacheKey for [u8; N] {
    fn key_bytes(&self) -> &[u8] {
        self
    }
}
/// Keys held as `Box`, `Arc`, `Rc` or `Cow` of `str` or `[u8]`.
macro_rules! key_through_deref {
    ($($ty:ty),* $(,)?) => {$(
        impl CacheKey for $ty {
            fn key_bytes(&self) -> &[u8] {
                (**self).key_bytes()
            }
        }
    )*};
}
key_through_deref!(
    Box<str>,
    Box<[u8]>,
    std::sync::Arc<str>,
    std::sync::Arc<[u8]>,
    std::rc::Rc<str>,
    std::rc::Rc<[u8]>,
    std::borrow::Cow<'_, str>,
    std::borrow::Cow<'_, [u8]>,
);
impl<K: CacheKey + ?Sized> CacheKey for &K {
    fn key_bytes(&self) -> &[u8] {
        (**self).key_bytes()
    }
}

/// A secret to insert. Borrowed values are read and left to the caller;
/// owned values (`Vec<u8>`, `Box<[u8]>`, `String`, [`SecretBytes`], and
/// `secrecy`'s `SecretBox` of anything zeroizable that is bytes, such as
/// `SecretString`) are consumed and zeroized once sealed.
pub trait SecretValue {
    /// Runs `f` on the plaintext, then wipes it if this value owns it.
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R;
}

impl SecretValue for &[u8] {
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }
}
impl SecretValue for &str {
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.as_bytes())
    }
}
impl SecretValue for &String {
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.as_bytes())
    }
}
impl SecretValue for &Vec<u8> {
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }
}
impl<const N: usize> SecretValue for &[u8; N] {
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }
}
impl SecretValue for Vec<u8> {
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        // Wiped on drop, so also if `f` panics.
        let owned = WipeOnDrop(self);
        f(&owned.0)
    }
}

/// Wipes the vector it holds when dropped.
struct WipeOnDrop(Vec<u8>);

impl Drop for WipeOnDrop {
    fn drop(&mut self) {
        wipe_vec(&mut self.0);
    }
}
impl SecretValue for Box<[u8]> {
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        // No copy: a boxed slice becomes a vector of the same allocation.
        self.into_vec().with_plaintext(f)
    }
}
impl<S: Zeroize + AsRef<[u8]> + ?Sized> SecretValue for secrecy::SecretBox<S> {
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        // `SecretBox` zeroizes its contents when dropped, here at the end.
        f(self.expose_secret().as_ref())
    }
}
impl<S: Zeroize + AsRef<[u8]> + ?Sized> SecretValue for &secrecy::SecretBox<S> {
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.expose_secret().as_ref())
    }
}
impl SecretValue for String {
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        self.into_bytes().with_plaintext(f)
    }
}
impl SecretValue for SecretBytes {
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.bytes)
    }
}
impl SecretValue for &SecretBytes {
    fn with_plaintext<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.bytes)
    }
}

/// Zeroizes a vector's bytes and its spare capacity, then empties it.
///
/// `Zeroize for Vec<u8>` does the same one volatile byte store at a time
/// (about 300 ns for 1 KiB here); the slice impls used here are one fill
/// each, kept by an optimisation barrier.
fn wipe_vec(bytes: &mut Vec<u8>) {
    bytes.as_mut_slice().zeroize();
    bytes.spare_capacity_mut().zeroize();
    bytes.clear();
}

/// Secret bytes returned by [`SealCache::get`](crate::SealCache::get).
///
/// The buffer is allocated once at its exact size, zeroized when dropped,
/// never `Clone`, and its `Debug` prints `SecretBytes([REDACTED])`. Read it
/// with [`ExposeSecret::expose_secret`], which makes every read greppable.
///
/// ```
/// use sealcache::{ExposeSecret, SecretBytes};
///
/// let secret = SecretBytes::from("hunter2");
/// assert_eq!(secret.expose_secret(), b"hunter2");
/// assert_eq!(format!("{secret:?}"), "SecretBytes([REDACTED])");
/// ```
///
/// Secrets cannot be cloned by accident:
///
/// ```compile_fail
/// let secret = sealcache::SecretBytes::from("hunter2");
/// let copy = secret.clone();
/// ```
pub struct SecretBytes {
    bytes: Box<[u8]>,
}

impl SecretBytes {
    /// A zero-filled secret of `len` bytes, to be filled in place.
    pub(crate) fn zeroed(len: usize) -> Self {
        Self {
            bytes: vec![0u8; len].into_boxed_slice(),
        }
    }

    /// The buffer, for filling in place.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// The secret's length in bytes (not secret).
    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the secret is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl From<&[u8]> for SecretBytes {
    fn from(bytes: &[u8]) -> Self {
        Self {
            bytes: Box::from(bytes),
        }
    }
}

impl From<&str> for SecretBytes {
    fn from(text: &str) -> Self {
        Self::from(text.as_bytes())
    }
}

impl From<Vec<u8>> for SecretBytes {
    /// Takes the vector without copying when it has no spare capacity;
    /// otherwise copies into an exact-size buffer and zeroizes the vector.
    fn from(mut bytes: Vec<u8>) -> Self {
        if bytes.len() == bytes.capacity() {
            return Self {
                bytes: bytes.into_boxed_slice(),
            };
        }
        let exact = Self::from(bytes.as_slice());
        wipe_vec(&mut bytes);
        exact
    }
}

impl From<String> for SecretBytes {
    /// As `From<Vec<u8>>`.
    fn from(text: String) -> Self {
        Self::from(text.into_bytes())
    }
}

impl ExposeSecret<[u8]> for SecretBytes {
    fn expose_secret(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        // Through the slice: `Zeroize for Box<[u8]>` wipes byte by byte.
        self.bytes[..].zeroize();
    }
}

impl ZeroizeOnDrop for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes([REDACTED])")
    }
}

impl PartialEq for SecretBytes {
    /// Compares every byte, with no early exit at the first difference, to
    /// keep the time from depending on where two equal-length secrets
    /// differ. Lengths are compared first and are not hidden. A best
    /// effort: Rust promises no constant-time code generation (each step
    /// goes through `black_box` so the optimiser cannot see an early exit);
    /// use a dedicated crate such as `subtle` where timing is in the threat
    /// model.
    fn eq(&self, other: &Self) -> bool {
        self.bytes.len() == other.bytes.len()
            && self
                .bytes
                .iter()
                .zip(other.bytes.iter())
                .fold(0u8, |acc, (a, b)| core::hint::black_box(acc | (a ^ b)))
                == 0
    }
}

impl Eq for SecretBytes {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let secret = SecretBytes::from("correct horse battery staple");
        let shown = format!("{secret:?} {secret:#?}");
        assert!(!shown.contains("horse"));
        assert!(shown.contains("REDACTED"));
    }

    #[test]
    fn vec_with_spare_capacity_is_copied_exactly() {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(b"abc");
        let secret = SecretBytes::from(v);
        assert_eq!(secret.expose_secret(), b"abc");
        assert_eq!(secret.len(), 3);
    }

    /// The sealer sees an owned value intact. That the value is wiped
    /// afterwards is proved from outside the process: `tests/forensics.rs`
    /// inserts half its secrets as owned vectors and finds none of them in
    /// freed memory (and finds them when `wipe_vec` is removed).
    #[test]
    fn owned_values_reach_the_sealer_intact() {
        let value = String::from("wipe-me");
        let seen = value.with_plaintext(<[u8]>::to_vec);
        assert_eq!(seen, b"wipe-me");
    }

    #[test]
    fn keys_of_every_kind_give_the_same_bytes() {
        fn bytes<K: CacheKey + ?Sized>(k: &K) -> Vec<u8> {
            k.key_bytes().to_vec()
        }
        assert_eq!(bytes("ab"), b"ab");
        assert_eq!(bytes(&String::from("ab")), b"ab");
        assert_eq!(bytes(&b"ab"[..]), b"ab");
        assert_eq!(bytes(&vec![b'a', b'b']), b"ab");
        assert_eq!(bytes(b"ab"), b"ab");
    }
}
