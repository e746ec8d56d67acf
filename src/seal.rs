//! Entry format, associated data, and seal/open of cached values.
//!
//! Every cached value is stored as one *sealed entry*:
//! `[FORMAT_VERSION (1)] [nonce (24)] [ciphertext (n)] [tag (16)]`, the output
//! of XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha) under the 32-byte key of the
//! entry's epoch and a fresh random 24-byte nonce from `getrandom`. The
//! associated data is `b"sealcache" || FORMAT_VERSION || epoch (u64 LE) ||
//! cache_key.len() (u64 LE) || cache_key`, so an entry only opens under the
//! format version, epoch and cache key it was sealed for: moving it to another
//! key or epoch, or changing any one of its bytes, makes [`open_into`] fail with
//! the single opaque [`OpenError`] and leaves the output buffer zeroed. Opening
//! never panics, whatever the input. The default path ([`Backend::Ring`]) builds
//! XChaCha20-Poly1305 exactly as the draft defines it: an HChaCha20 subkey
//! (from the `chacha20` crate) over the first 16 nonce bytes, then ring's
//! ChaCha20-Poly1305 with the 12-byte nonce `[0; 4] || nonce[16..24]`. It is
//! the default because `chacha20poly1305` 0.11 (poly1305 0.9) is about 4x
//! slower in a dependent crate's default build (~1.3 µs against ~0.3 µs per
//! 64-byte open: its AVX2 Poly1305 helpers are not inlined, and only a
//! `--cfg poly1305_backend="soft"` that dependents cannot set fixes it). The
//! user-named `chacha20poly1305::XChaCha20Poly1305` stays in the crate as the
//! [`reference`](mod@reference) implementation; known-answer tests pin both backends to the
//! draft's test vectors and a property test proves they produce byte-identical
//! entries.

use zeroize::Zeroize;

/// Version of the sealed-entry format; the first byte of every entry, and bound
/// into the associated data.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// Length of an epoch key in bytes.
pub(crate) const KEY_LEN: usize = 32;
/// Length of the XChaCha20-Poly1305 nonce stored in each entry, in bytes.
pub(crate) const NONCE_LEN: usize = 24;
/// Length of the Poly1305 authentication tag at the end of each entry, in bytes.
pub(crate) const TAG_LEN: usize = 16;
/// Bytes added to a plaintext: version byte + nonce + tag = 41.
pub(crate) const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// Longest plaintext both backends accept: ChaCha20's 32-bit block counter
/// allows `(2^32 - 1) * 64` bytes; `chacha20poly1305` rejects that exact
/// length, ring accepts it, so the common limit is one byte less.
const MAX_PLAINTEXT_LEN: u64 = ((1u64 << 32) - 1) * 64 - 1;

/// Domain-separation prefix of the associated data.
const AAD_DOMAIN: &[u8; 9] = b"sealcache";
/// Length of the fixed part of the associated data: domain, version, epoch,
/// cache-key length.
const AAD_HEADER_LEN: usize = AAD_DOMAIN.len() + 1 + 8 + 8;
/// Associated data up to this length is built on the stack; longer cache keys
/// use one heap allocation (the associated data is not secret).
const AAD_INLINE_CAP: usize = 256;

/// Length of the sealed entry for a plaintext of `plaintext_len` bytes, or
/// `None` if it overflows `usize` or exceeds the AEAD's message-length limit.
pub(crate) fn sealed_len(plaintext_len: usize) -> Option<usize> {
    if plaintext_len as u64 > MAX_PLAINTEXT_LEN {
        return None;
    }
    plaintext_len.checked_add(OVERHEAD)
}

/// Length of the plaintext inside `sealed`, or `None` if `sealed` is shorter
/// than [`OVERHEAD`]. Does not authenticate anything.
pub(crate) fn plaintext_len(sealed: &[u8]) -> Option<usize> {
    sealed.len().checked_sub(OVERHEAD)
}

/// Why [`seal_into`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SealError {
    /// The operating system's random number generator (`getrandom`) failed.
    Random,
    /// `out` is not exactly [`sealed_len`]`(plaintext.len())` bytes long, or
    /// the plaintext exceeds the AEAD's message-length limit.
    Length,
}

/// [`open_into`] failed. Deliberately opaque: a wrong length, an unknown
/// format version, a wrong key, epoch or cache key and a tampered byte are
/// indistinguishable to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenError;

/// Seals `plaintext` into `out` (exactly [`sealed_len`] bytes) under a fresh
/// random nonce from [`getrandom::fill`], using the default backend.
///
/// On error `out` holds no plaintext (it is zeroed whenever it has the right
/// length).
pub(crate) fn seal_into(
    key: &[u8; KEY_LEN],
    epoch: u64,
    cache_key: &[u8],
    plaintext: &[u8],
    out: &mut [u8],
) -> Result<(), SealError> {
    Backend::DEFAULT.seal_into(key, epoch, cache_key, plaintext, out)
}

/// Seals like [`seal_into`] but under the caller's `nonce`: deterministic, for
/// known-answer tests and benchmarks only. Production code never takes nonces
/// from callers; reusing a nonce under one key breaks confidentiality and
/// authenticity.
#[cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "for tests, benchmarks and the test-hooks `testing` module"
    )
)]
pub(crate) fn seal_into_with_nonce(
    key: &[u8; KEY_LEN],
    epoch: u64,
    cache_key: &[u8],
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    out: &mut [u8],
) -> Result<(), SealError> {
    Backend::DEFAULT.seal_into_with_nonce(key, epoch, cache_key, nonce, plaintext, out)
}

/// Opens `sealed` into `out` (exactly [`plaintext_len`] bytes), using the
/// default backend. On any failure `out` is zeroed and the one opaque
/// [`OpenError`] returned. Never panics on any input (wrong lengths included).
pub(crate) fn open_into(
    key: &[u8; KEY_LEN],
    epoch: u64,
    cache_key: &[u8],
    sealed: &[u8],
    out: &mut [u8],
) -> Result<(), OpenError> {
    Backend::DEFAULT.open_into(key, epoch, cache_key, sealed, out)
}

/// The reference implementation: the same entry format sealed and opened with
/// `chacha20poly1305::XChaCha20Poly1305`, the AEAD the user named. Kept to
/// prove the default path byte-identical to it and for comparison benchmarks.
#[cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "for tests, benchmarks and the test-hooks `testing` module"
    )
)]
pub(crate) mod reference {
    use super::{Backend, KEY_LEN, NONCE_LEN, OpenError, SealError};

    /// [`super::seal_into_with_nonce`] on the reference backend. Tests and
    /// benchmarks only: production code never takes nonces from callers.
    pub(crate) fn seal_into_with_nonce(
        key: &[u8; KEY_LEN],
        epoch: u64,
        cache_key: &[u8],
        nonce: &[u8; NONCE_LEN],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(), SealError> {
        Backend::Reference.seal_into_with_nonce(key, epoch, cache_key, nonce, plaintext, out)
    }

    /// [`super::open_into`] on the reference backend.
    pub(crate) fn open_into(
        key: &[u8; KEY_LEN],
        epoch: u64,
        cache_key: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), OpenError> {
        Backend::Reference.open_into(key, epoch, cache_key, sealed, out)
    }
}

/// Which XChaCha20-Poly1305 implementation seals and opens. Both produce
/// byte-identical entries (proved by tests), so an entry sealed by one opens
/// with the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// HChaCha20 (`chacha20` crate) + ring's ChaCha20-Poly1305. The default.
    Ring,
    /// `chacha20poly1305::XChaCha20Poly1305`, the reference implementation.
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "for tests, benchmarks and the test-hooks `testing` module"
        )
    )]
    Reference,
}

impl Backend {
    /// The backend behind [`seal_into`] and [`open_into`].
    pub(crate) const DEFAULT: Self = Self::Ring;

    /// [`seal_into`] on this backend.
    pub(crate) fn seal_into(
        self,
        key: &[u8; KEY_LEN],
        epoch: u64,
        cache_key: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(), SealError> {
        // Check the length first so that a misuse does not consume randomness.
        if sealed_len(plaintext.len()) != Some(out.len()) {
            return Err(SealError::Length);
        }
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Random)?;
        self.seal_into_with_nonce(key, epoch, cache_key, &nonce, plaintext, out)
    }

    /// [`seal_into_with_nonce`] on this backend. Production code reaches it
    /// only through [`Backend::seal_into`], with a fresh random nonce.
    pub(crate) fn seal_into_with_nonce(
        self,
        key: &[u8; KEY_LEN],
        epoch: u64,
        cache_key: &[u8],
        nonce: &[u8; NONCE_LEN],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(), SealError> {
        if sealed_len(plaintext.len()) != Some(out.len()) {
            return Err(SealError::Length);
        }
        let Some((version, rest)) = out.split_first_mut() else {
            return Err(SealError::Length);
        };
        let Some((nonce_out, body)) = rest.split_first_chunk_mut::<NONCE_LEN>() else {
            out.zeroize();
            return Err(SealError::Length);
        };
        let Some((ciphertext, tag_out)) = body.split_last_chunk_mut::<TAG_LEN>() else {
            out.zeroize();
            return Err(SealError::Length);
        };
        *version = FORMAT_VERSION;
        *nonce_out = *nonce;
        ciphertext.copy_from_slice(plaintext);
        let aad = AadBuf::new(epoch, cache_key);
        let sealed = self.seal_detached(key, nonce, aad.as_slice(), ciphertext);
        // The AEAD's frames (HChaCha20 state, ring's copy of the subkey)
        // lay below this one, and its registers still hold key material:
        // overwrite both before returning.
        wipe_aead_residue();
        match sealed {
            Ok(tag) => {
                *tag_out = tag;
                Ok(())
            }
            Err(AeadFailure) => {
                out.zeroize();
                Err(SealError::Length)
            }
        }
    }

    /// [`open_into`] on this backend. On any failure `out` is zeroed; never
    /// panics.
    pub(crate) fn open_into(
        self,
        key: &[u8; KEY_LEN],
        epoch: u64,
        cache_key: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), OpenError> {
        let result = self.try_open_into(key, epoch, cache_key, sealed, out);
        if result.is_err() {
            out.zeroize();
        }
        result
    }

    /// [`Backend::open_into`] without the wipe on failure.
    fn try_open_into(
        self,
        key: &[u8; KEY_LEN],
        epoch: u64,
        cache_key: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), OpenError> {
        let (&version, rest) = sealed.split_first().ok_or(OpenError)?;
        let (nonce, body) = rest.split_first_chunk::<NONCE_LEN>().ok_or(OpenError)?;
        let (ciphertext, tag) = body.split_last_chunk::<TAG_LEN>().ok_or(OpenError)?;
        if version != FORMAT_VERSION || ciphertext.len() != out.len() {
            return Err(OpenError);
        }
        out.copy_from_slice(ciphertext);
        let aad = AadBuf::new(epoch, cache_key);
        let opened = self.open_detached(key, nonce, aad.as_slice(), out, tag);
        // As in `seal_into_with_nonce`: wipe the AEAD's dead frames and
        // registers.
        wipe_aead_residue();
        opened.map_err(|AeadFailure| OpenError)
    }

    /// Raw XChaCha20-Poly1305 encryption of `in_out` in place; returns the tag.
    /// Never inlined: its frame (where the subkey and ring's key schedule
    /// live) must lie below the caller's, in the region `wipe_stack` clears.
    #[inline(never)]
    fn seal_detached(
        self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadFailure> {
        match self {
            Self::Ring => ring_backend::xchacha_seal_detached(key, nonce, aad, in_out),
            Self::Reference => reference_backend::xchacha_seal_detached(key, nonce, aad, in_out),
        }
    }

    /// Raw XChaCha20-Poly1305 authentication and decryption of `in_out` in
    /// place. On failure `in_out` may hold garbage; the caller wipes it.
    #[inline(never)]
    fn open_detached(
        self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        match self {
            Self::Ring => ring_backend::xchacha_open_detached(key, nonce, aad, in_out, tag),
            Self::Reference => {
                reference_backend::xchacha_open_detached(key, nonce, aad, in_out, tag)
            }
        }
    }
}

/// Bytes of stack below the caller that [`wipe_stack`] overwrites: more than
/// the deepest call chain of either AEAD backend (HChaCha20, ring's
/// ChaCha20-Poly1305 and its assembly), measured by the forensics tests:
/// in a release build 1 KiB left three subkeys behind, 2 KiB one, 4 KiB
/// none. CI runs those tests in debug and release builds, so a toolchain
/// that deepens the frames fails them. Unoptimised builds use far deeper
/// frames.
const STACK_WIPE_BYTES: usize = if cfg!(debug_assertions) {
    32 * 1024
} else {
    4096
};

/// Erases what an AEAD call leaves behind: its dead stack frames
/// ([`wipe_stack`]) and the vector registers that still hold the subkey
/// ([`memory::wipe_vector_registers`](crate::memory::wipe_vector_registers);
/// a core dump records every thread's registers). Inlined, so the stack wipe
/// runs from the frame that called the AEAD.
#[inline(always)]
fn wipe_aead_residue() {
    wipe_stack();
    crate::memory::wipe_vector_registers();
}

/// Overwrites [`STACK_WIPE_BYTES`] of the stack below the caller's frame
/// with zeros, erasing what the AEAD left in its dead frames: the HChaCha20
/// state and ring's un-zeroized copy of the per-entry subkey (which, with the
/// entry's ciphertext, opens that entry even after its epoch key is wiped).
/// Must be called right after the AEAD returns, from the frame that called
/// it.
///
/// The zeroed array is handed to `black_box`, which the optimiser must
/// treat as reading it, so the fill (a `memset`, tens of nanoseconds for
/// 4 KiB) cannot be elided; `tests/forensics.rs` verifies the effect by
/// scanning the process for subkeys.
#[inline(never)]
fn wipe_stack() {
    let area = [0u8; STACK_WIPE_BYTES];
    core::hint::black_box(&area);
}

/// A raw AEAD operation failed (bad tag, or message too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AeadFailure;

/// The associated data of one entry, built without allocating for cache keys
/// up to `AAD_INLINE_CAP - AAD_HEADER_LEN` (230) bytes.
#[expect(
    clippy::large_enum_variant,
    reason = "the inline variant exists to keep the AAD on the stack, off the allocator"
)]
enum AadBuf {
    /// Short cache keys: the first `len` bytes of `buf`.
    Inline {
        buf: [u8; AAD_INLINE_CAP],
        len: usize,
    },
    /// Long cache keys.
    Heap(Vec<u8>),
}

impl AadBuf {
    /// `b"sealcache" || FORMAT_VERSION || epoch (u64 LE) ||
    /// cache_key.len() (u64 LE) || cache_key`.
    fn new(epoch: u64, cache_key: &[u8]) -> Self {
        let mut header = [0u8; AAD_HEADER_LEN];
        let (domain, rest) = header.split_at_mut(AAD_DOMAIN.len());
        domain.copy_from_slice(AAD_DOMAIN);
        let (version, rest) = rest.split_at_mut(1);
        version[0] = FORMAT_VERSION;
        let (epoch_le, key_len_le) = rest.split_at_mut(8);
        epoch_le.copy_from_slice(&epoch.to_le_bytes());
        // usize is at most 64 bits on every supported target.
        key_len_le.copy_from_slice(&(cache_key.len() as u64).to_le_bytes());

        let total = AAD_HEADER_LEN.saturating_add(cache_key.len());
        if total <= AAD_INLINE_CAP {
            let mut buf = [0u8; AAD_INLINE_CAP];
            let (head, tail) = buf.split_at_mut(AAD_HEADER_LEN);
            head.copy_from_slice(&header);
            if let Some(dst) = tail.get_mut(..cache_key.len()) {
                dst.copy_from_slice(cache_key);
            }
            Self::Inline { buf, len: total }
        } else {
            let mut v = Vec::with_capacity(total);
            v.extend_from_slice(&header);
            v.extend_from_slice(cache_key);
            Self::Heap(v)
        }
    }

    /// The associated data.
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline { buf, len } => buf.get(..*len).unwrap_or(buf),
            Self::Heap(v) => v,
        }
    }
}

/// XChaCha20-Poly1305 from HChaCha20 (`chacha20` crate) and ring's
/// ChaCha20-Poly1305, as constructed in draft-irtf-cfrg-xchacha section 2.
mod ring_backend {
    use super::{AeadFailure, KEY_LEN, NONCE_LEN, TAG_LEN};
    use ring::aead::{CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
    use zeroize::Zeroize;

    /// Derives the per-nonce ChaCha20-Poly1305 key and nonce — subkey =
    /// HChaCha20(key, nonce[0..16]), nonce = `[0; 4] || nonce[16..24]` — and
    /// runs `f` with them. The key is built where it is used and lent, not
    /// returned: ring's key type is large, and moving it through `Result`s
    /// cost about a tenth of an open in `memcpy`.
    ///
    /// The subkey bytes are wiped here, but ring keeps its own copy inside
    /// `LessSafeKey` (in this frame) and does not zeroize it on drop; the
    /// caller overwrites this frame with `wipe_stack` once the AEAD returns.
    fn with_derived<R>(
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        f: impl FnOnce(&LessSafeKey, Nonce) -> Result<R, AeadFailure>,
    ) -> Result<R, AeadFailure> {
        let mut hchacha_input = [0u8; 16];
        let mut chacha_nonce = [0u8; 12];
        let (prefix, suffix) = nonce.split_at(16);
        hchacha_input.copy_from_slice(prefix);
        chacha_nonce[4..].copy_from_slice(suffix);

        let mut derived = chacha20::hchacha::<chacha20::R20>(key.into(), (&hchacha_input).into());
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, derived.as_slice());
        // Wiped through the slice before anything can return: `Zeroize` for
        // arrays and `Zeroizing` wipe byte by byte.
        derived.as_mut_slice().zeroize();
        let aead_key = LessSafeKey::new(unbound.map_err(|_| AeadFailure)?);
        f(&aead_key, Nonce::assume_unique_for_key(chacha_nonce))
    }

    /// Encrypts `in_out` in place and returns the tag.
    pub(super) fn xchacha_seal_detached(
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadFailure> {
        with_derived(key, nonce, |sealing_key, nonce| {
            let tag = sealing_key
                .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), in_out)
                .map_err(|_| AeadFailure)?;
            let mut out = [0u8; TAG_LEN];
            out.copy_from_slice(tag.as_ref());
            Ok(out)
        })
    }

    /// Authenticates and decrypts `in_out` in place (ring zeroes it on a bad
    /// tag).
    pub(super) fn xchacha_open_detached(
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        with_derived(key, nonce, |opening_key, nonce| {
            opening_key
                .open_in_place_separate_tag(
                    nonce,
                    ring::aead::Aad::from(aad),
                    Tag::from(*tag),
                    in_out,
                    0..,
                )
                .map(|_| ())
                .map_err(|_| AeadFailure)
        })
    }
}

/// XChaCha20-Poly1305 from `chacha20poly1305` 0.11 through the non-deprecated
/// `AeadInOut` API.
///
/// `XChaCha20Poly1305` keeps a copy of the key that it wipes on drop only when
/// `chacha20poly1305`'s `zeroize` feature is enabled.
mod reference_backend {
    use super::{AeadFailure, KEY_LEN, NONCE_LEN, TAG_LEN};
    use chacha20poly1305::aead::inout::InOutBuf;
    use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305};

    /// Encrypts `in_out` in place and returns the tag.
    pub(super) fn xchacha_seal_detached(
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadFailure> {
        let cipher = XChaCha20Poly1305::new(key.into());
        let tag = cipher
            .encrypt_inout_detached(nonce.into(), aad, InOutBuf::from(in_out))
            .map_err(|_| AeadFailure)?;
        Ok(tag.into())
    }

    /// Authenticates `in_out` and, only if the tag is valid, decrypts it in
    /// place.
    pub(super) fn xchacha_open_detached(
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        let cipher = XChaCha20Poly1305::new(key.into());
        cipher
            .decrypt_inout_detached(nonce.into(), aad, InOutBuf::from(in_out), tag.into())
            .map_err(|_| AeadFailure)
    }
}

#[cfg(test)]
mod tests;
