//! Tests of the `seal` module: known-answer tests pinning both backends to
//! draft-irtf-cfrg-xchacha-03, the entry format and AAD, backend equivalence,
//! tamper detection and panic freedom.

use super::*;
use proptest::prelude::*;
use proptest::sample::Index;

const BACKENDS: [Backend; 2] = [Backend::Ring, Backend::Reference];

/// Decodes a hex string (whitespace ignored); test vectors only.
fn h(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd hex length");
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).expect("hex is ASCII");
            u8::from_str_radix(text, 16).expect("valid hex digit")
        })
        .collect()
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    h(s).try_into().expect("hex has the expected length")
}

// draft-irtf-cfrg-xchacha-03, Appendix A.3.1 (AEAD_XChaCha20_Poly1305).
const A31_PLAINTEXT: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you \
only one tip for the future, sunscreen would be it.";
const A31_AAD: &str = "50515253c0c1c2c3c4c5c6c7";
const A31_KEY: &str = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f";
const A31_IV: &str = "404142434445464748494a4b4c4d4e4f5051525354555657";
const A31_CIPHERTEXT: &str = "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
    731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
    2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
    21f9664c97637da9768812f615c68b13b52e";
const A31_TAG: &str = "c0875924c1c7987947deafd8780acf49";

/// Spec of the associated data, written out independently of `AadBuf`.
fn expected_aad(epoch: u64, cache_key: &[u8]) -> Vec<u8> {
    let mut aad = b"sealcache".to_vec();
    aad.push(1);
    aad.extend_from_slice(&epoch.to_le_bytes());
    aad.extend_from_slice(&(cache_key.len() as u64).to_le_bytes());
    aad.extend_from_slice(cache_key);
    aad
}

fn seal_vec(
    backend: Backend,
    key: &[u8; KEY_LEN],
    epoch: u64,
    cache_key: &[u8],
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
) -> Vec<u8> {
    let mut out = vec![0u8; sealed_len(plaintext.len()).expect("length fits")];
    backend
        .seal_into_with_nonce(key, epoch, cache_key, nonce, plaintext, &mut out)
        .expect("seal succeeds");
    out
}

/// Opens `sealed` into a buffer pre-filled with 0xAA; returns the result and
/// the buffer.
fn open_vec(
    backend: Backend,
    key: &[u8; KEY_LEN],
    epoch: u64,
    cache_key: &[u8],
    sealed: &[u8],
    out_len: usize,
) -> (Result<(), OpenError>, Vec<u8>) {
    let mut out = vec![0xAAu8; out_len];
    let result = backend.open_into(key, epoch, cache_key, sealed, &mut out);
    (result, out)
}

/// Asserts that opening fails and leaves `out` all zero, on both backends.
fn assert_rejected(
    key: &[u8; KEY_LEN],
    epoch: u64,
    cache_key: &[u8],
    sealed: &[u8],
    out_len: usize,
) {
    for backend in BACKENDS {
        let (result, out) = open_vec(backend, key, epoch, cache_key, sealed, out_len);
        assert_eq!(result, Err(OpenError), "{backend:?} accepted a bad entry");
        assert!(out.iter().all(|&b| b == 0), "{backend:?} left bytes in out");
    }
}

#[test]
fn constants() {
    assert_eq!(OVERHEAD, 41);
    assert_eq!(AAD_HEADER_LEN, 26);
    assert_eq!(sealed_len(0), Some(41));
    assert_eq!(sealed_len(64), Some(105));
    assert_eq!(sealed_len(usize::MAX), None);
    assert_eq!(sealed_len(usize::MAX - OVERHEAD), None);
    let max = usize::try_from(MAX_PLAINTEXT_LEN).expect("64-bit target");
    assert_eq!(sealed_len(max), Some(max + OVERHEAD));
    assert_eq!(sealed_len(max + 1), None);
    assert_eq!(plaintext_len(&[]), None);
    assert_eq!(plaintext_len(&[0u8; 40]), None);
    assert_eq!(plaintext_len(&[0u8; 41]), Some(0));
    assert_eq!(plaintext_len(&[0u8; 105]), Some(64));
}

/// draft-irtf-cfrg-xchacha-03 section 2.2.1, through the same `chacha20::hchacha`
/// call the ring backend makes.
#[test]
fn hchacha20_draft_vector() {
    let key: [u8; 32] = arr("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
    let input: [u8; 16] = arr("000000090000004a0000000031415927");
    let expected: [u8; 32] =
        arr("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc");
    let out = chacha20::hchacha::<chacha20::R20>((&key).into(), (&input).into());
    assert_eq!(out.as_slice(), &expected);
}

fn check_a31(backend: Backend) {
    let key: [u8; 32] = arr(A31_KEY);
    let nonce: [u8; 24] = arr(A31_IV);
    let aad = h(A31_AAD);
    let mut buf = A31_PLAINTEXT.to_vec();
    let tag = backend
        .seal_detached(&key, &nonce, &aad, &mut buf)
        .expect("seal");
    assert_eq!(buf, h(A31_CIPHERTEXT), "{backend:?} ciphertext");
    assert_eq!(tag.to_vec(), h(A31_TAG), "{backend:?} tag");

    backend
        .open_detached(&key, &nonce, &aad, &mut buf, &tag)
        .expect("open");
    assert_eq!(buf, A31_PLAINTEXT);

    let mut bad_tag = tag;
    bad_tag[0] ^= 1;
    let mut buf = h(A31_CIPHERTEXT);
    assert_eq!(
        backend.open_detached(&key, &nonce, &aad, &mut buf, &bad_tag),
        Err(AeadFailure)
    );
}

#[test]
fn xchacha_draft_a31_ring() {
    check_a31(Backend::Ring);
}

#[test]
fn xchacha_draft_a31_reference() {
    check_a31(Backend::Reference);
}

/// Pins the entry layout and the associated data: an entry is the version, the
/// nonce, then the raw AEAD output over the AAD written out from the spec.
#[test]
fn entry_format_and_aad() {
    let key: [u8; 32] = arr(A31_KEY);
    let nonce: [u8; 24] = arr(A31_IV);
    let epoch = 0x0102_0304_0506_0708;
    // A 230-byte cache key is the longest with an inline AAD; 231 goes to the heap.
    for key_len in [0usize, 1, 17, 229, 230, 231, 1000] {
        let cache_key: Vec<u8> = (0..key_len).map(|i| (i % 251) as u8).collect();
        let aad = expected_aad(epoch, &cache_key);
        assert_eq!(AadBuf::new(epoch, &cache_key).as_slice(), aad.as_slice());
        for backend in BACKENDS {
            let sealed = seal_vec(backend, &key, epoch, &cache_key, &nonce, A31_PLAINTEXT);
            assert_eq!(sealed.len(), A31_PLAINTEXT.len() + OVERHEAD);
            assert_eq!(sealed[0], FORMAT_VERSION);
            assert_eq!(&sealed[1..25], &nonce);
            let mut ct = A31_PLAINTEXT.to_vec();
            let tag = Backend::Reference
                .seal_detached(&key, &nonce, &aad, &mut ct)
                .expect("seal");
            assert_eq!(&sealed[25..25 + ct.len()], ct.as_slice());
            assert_eq!(&sealed[25 + ct.len()..], &tag);
        }
    }
    // The AAD of the A.3.1 header fields, byte for byte.
    assert_eq!(
        AadBuf::new(epoch, b"k").as_slice(),
        h("7365616c6361636865 01 0807060504030201 0100000000000000 6b").as_slice()
    );
}

#[test]
fn top_level_functions_use_ring_and_match_reference() {
    let key = [7u8; 32];
    let nonce = [9u8; 24];
    let mut a = vec![0u8; sealed_len(5).unwrap()];
    let mut b = vec![0u8; sealed_len(5).unwrap()];
    seal_into_with_nonce(&key, 3, b"ck", &nonce, b"hello", &mut a).unwrap();
    reference::seal_into_with_nonce(&key, 3, b"ck", &nonce, b"hello", &mut b).unwrap();
    assert_eq!(a, b);
    let mut out = [0u8; 5];
    open_into(&key, 3, b"ck", &b, &mut out).unwrap();
    assert_eq!(&out, b"hello");
    let mut out = [0u8; 5];
    reference::open_into(&key, 3, b"ck", &a, &mut out).unwrap();
    assert_eq!(&out, b"hello");
}

#[test]
fn seal_rejects_wrong_out_length() {
    let key = [1u8; 32];
    for backend in BACKENDS {
        for len in [0usize, 1, 40, 41 + 9, 41 + 11, 200] {
            let mut out = vec![0x55u8; len];
            assert_eq!(
                backend.seal_into(&key, 0, b"k", b"0123456789", &mut out),
                Err(SealError::Length)
            );
            assert_eq!(
                backend.seal_into_with_nonce(&key, 0, b"k", &[0; 24], b"0123456789", &mut out),
                Err(SealError::Length)
            );
        }
    }
}

#[test]
fn seal_uses_fresh_random_nonces() {
    let key = [2u8; 32];
    let mut seen = std::collections::HashSet::new();
    for _ in 0..64 {
        let mut out = vec![0u8; sealed_len(64).unwrap()];
        seal_into(&key, 5, b"k", &[0x42; 64], &mut out).unwrap();
        assert_eq!(out[0], FORMAT_VERSION);
        assert!(seen.insert(out[1..25].to_vec()), "nonce repeated");
    }
}

#[test]
fn round_trip_sizes() {
    let key = [3u8; 32];
    for len in [0usize, 1, 64, 64 * 1024] {
        let secret: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
        for sealer in BACKENDS {
            let mut sealed = vec![0u8; sealed_len(len).unwrap()];
            sealer
                .seal_into(&key, 11, b"db/password", &secret, &mut sealed)
                .unwrap();
            assert_eq!(plaintext_len(&sealed), Some(len));
            for opener in BACKENDS {
                let (result, out) = open_vec(opener, &key, 11, b"db/password", &sealed, len);
                assert_eq!(result, Ok(()), "{sealer:?} -> {opener:?}, len {len}");
                assert_eq!(out, secret);
            }
        }
    }
}

/// Every byte of a 64-byte secret's entry, flipped by 0x01 and by 0x80.
#[test]
fn exhaustive_single_byte_flips() {
    let key = [4u8; 32];
    let secret = [0x5Au8; 64];
    let mut sealed = vec![0u8; sealed_len(64).unwrap()];
    seal_into(&key, 8, b"api-key", &secret, &mut sealed).unwrap();
    for i in 0..sealed.len() {
        for mask in [0x01u8, 0x80] {
            let mut tampered = sealed.clone();
            tampered[i] ^= mask;
            assert_rejected(&key, 8, b"api-key", &tampered, 64);
        }
    }
}

#[test]
fn every_other_version_byte_is_rejected() {
    let key = [5u8; 32];
    let mut sealed = vec![0u8; sealed_len(16).unwrap()];
    seal_into(&key, 1, b"k", &[1; 16], &mut sealed).unwrap();
    for version in (0..=u8::MAX).filter(|&v| v != FORMAT_VERSION) {
        let mut tampered = sealed.clone();
        tampered[0] = version;
        assert_rejected(&key, 1, b"k", &tampered, 16);
    }
}

#[test]
fn wrong_out_length_is_rejected() {
    let key = [6u8; 32];
    let mut sealed = vec![0u8; sealed_len(16).unwrap()];
    seal_into(&key, 1, b"k", &[1; 16], &mut sealed).unwrap();
    for out_len in [0usize, 15, 17, 57] {
        assert_rejected(&key, 1, b"k", &sealed, out_len);
    }
}

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(512)
}

prop_compose! {
    fn entry_inputs()(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 24]>(),
        epoch in any::<u64>(),
        cache_key in prop::collection::vec(any::<u8>(), 0..300),
        plaintext in prop::collection::vec(any::<u8>(), 0..2048),
    ) -> ([u8; 32], [u8; 24], u64, Vec<u8>, Vec<u8>) {
        (key, nonce, epoch, cache_key, plaintext)
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn backends_are_byte_identical((key, nonce, epoch, cache_key, plaintext) in entry_inputs()) {
        let ring = seal_vec(Backend::Ring, &key, epoch, &cache_key, &nonce, &plaintext);
        let reference = seal_vec(Backend::Reference, &key, epoch, &cache_key, &nonce, &plaintext);
        prop_assert_eq!(ring, reference);
    }

    #[test]
    fn open_inverts_seal_across_backends((key, nonce, epoch, cache_key, plaintext) in entry_inputs()) {
        for sealer in BACKENDS {
            let sealed = seal_vec(sealer, &key, epoch, &cache_key, &nonce, &plaintext);
            for opener in BACKENDS {
                let (result, out) = open_vec(opener, &key, epoch, &cache_key, &sealed, plaintext.len());
                prop_assert_eq!(result, Ok(()));
                prop_assert_eq!(&out, &plaintext);
            }
        }
    }

    #[test]
    fn wrong_key_epoch_or_cache_key_is_rejected(
        (key, nonce, epoch, cache_key, plaintext) in entry_inputs(),
        other_key in any::<[u8; 32]>(),
        other_epoch in any::<u64>(),
        other_cache_key in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let sealed = seal_vec(Backend::Ring, &key, epoch, &cache_key, &nonce, &plaintext);
        let n = plaintext.len();
        if other_key != key {
            assert_rejected(&other_key, epoch, &cache_key, &sealed, n);
        }
        if other_epoch != epoch {
            assert_rejected(&key, other_epoch, &cache_key, &sealed, n);
        }
        if other_cache_key != cache_key {
            assert_rejected(&key, epoch, &other_cache_key, &sealed, n);
        }
        // Near misses: one more or one fewer byte of cache key, epoch +- 1.
        let mut longer = cache_key.clone();
        longer.push(0);
        assert_rejected(&key, epoch, &longer, &sealed, n);
        if let Some((_, shorter)) = cache_key.split_last() {
            assert_rejected(&key, epoch, shorter, &sealed, n);
        }
        assert_rejected(&key, epoch.wrapping_add(1), &cache_key, &sealed, n);
        assert_rejected(&key, epoch.wrapping_sub(1), &cache_key, &sealed, n);
    }

    #[test]
    fn any_tampered_byte_is_rejected(
        (key, nonce, epoch, cache_key, plaintext) in entry_inputs(),
        version in any::<u8>(),
        nonce_at in any::<Index>(),
        body_at in any::<Index>(),
        tag_at in any::<Index>(),
        mask in 1u8..=255,
    ) {
        let sealed = seal_vec(Backend::Ring, &key, epoch, &cache_key, &nonce, &plaintext);
        let n = plaintext.len();
        let mut positions = vec![1 + nonce_at.index(NONCE_LEN), 1 + NONCE_LEN + n + tag_at.index(TAG_LEN)];
        if n > 0 {
            positions.push(1 + NONCE_LEN + body_at.index(n));
        }
        for at in positions {
            let mut tampered = sealed.clone();
            tampered[at] ^= mask;
            assert_rejected(&key, epoch, &cache_key, &tampered, n);
        }
        if version != FORMAT_VERSION {
            let mut tampered = sealed.clone();
            tampered[0] = version;
            assert_rejected(&key, epoch, &cache_key, &tampered, n);
        }
    }

    #[test]
    fn truncation_and_extension_are_rejected(
        (key, nonce, epoch, cache_key, plaintext) in entry_inputs(),
        cut in any::<Index>(),
        extra in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let sealed = seal_vec(Backend::Ring, &key, epoch, &cache_key, &nonce, &plaintext);
        let n = plaintext.len();
        let truncated = &sealed[..cut.index(sealed.len())];
        let mut extended = sealed.clone();
        extended.extend_from_slice(&extra);
        for candidate in [truncated, extended.as_slice()] {
            // With the caller's expected length and with the length the entry claims.
            assert_rejected(&key, epoch, &cache_key, candidate, n);
            if let Some(claimed) = plaintext_len(candidate) {
                assert_rejected(&key, epoch, &cache_key, candidate, claimed);
            }
        }
    }

    #[test]
    fn open_never_panics_on_arbitrary_input(
        key in any::<[u8; 32]>(),
        epoch in any::<u64>(),
        cache_key in prop::collection::vec(any::<u8>(), 0..64),
        sealed in prop::collection::vec(any::<u8>(), 0..512),
        out_len in 0usize..600,
        use_claimed_len in any::<bool>(),
    ) {
        let out_len = if use_claimed_len { plaintext_len(&sealed).unwrap_or(out_len) } else { out_len };
        // Forging a Poly1305 tag at random has probability ~2^-106.
        assert_rejected(&key, epoch, &cache_key, &sealed, out_len);
    }
}
