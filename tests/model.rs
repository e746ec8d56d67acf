//! Model-based property tests: random operation sequences run against the
//! real cache and a reference model in lock step (exact expiry, LRU at the
//! configured recency resolution, exact at zero, by the resolution's rule,
//! which implies its eviction guarantee, epoch-key deadlines, statistics),
//! and properties of the sealed-entry format through `sealcache::testing`.
//!
//! The same model and harness drive the `cache_ops` fuzz target.

#![cfg(feature = "test-hooks")]

#[path = "common/model.rs"]
mod model;

use proptest::collection::vec;
use proptest::prelude::*;
use sealcache::testing::{SEAL_OVERHEAD, open, seal};

use model::{Config, Harness, KEYS, Loader, MAX_VALUE_LEN, Offset, Op, SEC};

fn key() -> impl Strategy<Value = u8> {
    0..KEYS
}

fn offset() -> impl Strategy<Value = Offset> {
    prop_oneof![Just(Offset::Before), Just(Offset::At), Just(Offset::After)]
}

fn loader() -> impl Strategy<Value = Loader> {
    prop_oneof![
        3 => (0..=MAX_VALUE_LEN).prop_map(Loader::Found),
        1 => Just(Loader::NotFound),
        1 => Just(Loader::Fail),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (key(), 0..=MAX_VALUE_LEN).prop_map(|(key, len)| Op::Insert { key, len }),
        6 => key().prop_map(|key| Op::Get { key }),
        3 => key().prop_map(|key| Op::With { key }),
        4 => (key(), loader()).prop_map(|(key, loader)| Op::Load { key, loader }),
        2 => key().prop_map(|key| Op::Invalidate { key }),
        1 => Just(Op::InvalidateAll),
        4 => (0..3 * SEC).prop_map(|nanos| Op::Advance { nanos }),
        1 => (0u16..40).prop_map(|secs| Op::AdvanceSecs { secs }),
        3 => (any::<u8>(), offset()).prop_map(|(entry, offset)| Op::ToExpiry { entry, offset }),
        2 => (any::<u8>(), offset()).prop_map(|(key, offset)| Op::ToDeadline { key, offset }),
        1 => Just(Op::SyncReaper),
        1 => Just(Op::AdvanceZero),
        1 => (key(), any::<u16>(), any::<u8>())
            .prop_map(|(key, position, mask)| Op::Tamper { key, position, mask }),
    ]
}

/// Configurations: a quarter with both loader knobs off (the high bits of
/// the configuration bytes clear), the rest with arbitrary bytes, where
/// `negative_ttl` and `max_stale` are each on in three cases out of four.
fn config() -> impl Strategy<Value = Config> {
    prop_oneof![
        1 => (any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(ttl, epochs, max)| Config::from_raw(ttl % 4, epochs % 8, max)),
        3 => (any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(ttl, epochs, max)| Config::from_raw(ttl, epochs, max)),
    ]
}

/// Operations weighted towards the loader knobs: more loads that report
/// "not found" or fail, and more landings on expiries and stale-grace ends
/// (`ToExpiry` with bit 7 of `entry` set).
fn knob_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => op(),
        2 => (key(), prop_oneof![Just(Loader::NotFound), Just(Loader::Fail)])
            .prop_map(|(key, loader)| Op::Load { key, loader }),
        2 => (any::<u8>(), offset()).prop_map(|(entry, offset)| Op::ToExpiry { entry, offset }),
    ]
}

/// Configurations with both loader knobs on.
fn knob_config() -> impl Strategy<Value = Config> {
    (any::<u8>(), 1u8..7, any::<u8>(), 1u8..7, any::<u8>()).prop_map(
        |(ttl, negative, epochs, stale, max)| {
            Config::from_raw(
                (ttl % 4) | (negative << 2),
                (epochs % 8) | (stale << 3),
                max,
            )
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// The cache behaves exactly like the model on every sequence.
    #[test]
    fn cache_matches_the_reference_model(config in config(), ops in vec(op(), 1..48)) {
        Harness::run(config, &ops);
    }

    /// The same with `negative_ttl` and `max_stale` both on and operations
    /// that exercise them.
    #[test]
    fn cache_matches_the_model_with_loader_knobs(
        config in knob_config(),
        ops in vec(knob_op(), 1..48),
    ) {
        prop_assert!(config.negative_ttl.is_some() && config.max_stale > 0);
        Harness::run(config, &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// open(seal(x)) = x, with the documented layout.
    #[test]
    fn open_inverts_seal(
        key in any::<[u8; 32]>(),
        epoch in any::<u64>(),
        cache_key in vec(any::<u8>(), 0..64),
        plaintext in vec(any::<u8>(), 0..256),
    ) {
        let sealed = seal(&key, epoch, &cache_key, &plaintext);
        prop_assert_eq!(sealed.len(), plaintext.len() + SEAL_OVERHEAD);
        prop_assert_eq!(sealed[0], 1, "format version byte");
        prop_assert_eq!(open(&key, epoch, &cache_key, &sealed), Some(plaintext.clone()));
        // A fresh random nonce each time: two seals of one input differ.
        let again = seal(&key, epoch, &cache_key, &plaintext);
        prop_assert_ne!(&sealed[1..25], &again[1..25]);
        prop_assert_eq!(open(&key, epoch, &cache_key, &again), Some(plaintext));
    }

    /// Another key, epoch or cache key never opens an entry.
    #[test]
    fn a_different_key_epoch_or_cache_key_fails(
        key in any::<[u8; 32]>(),
        epoch in any::<u64>(),
        cache_key in vec(any::<u8>(), 0..32),
        plaintext in vec(any::<u8>(), 0..64),
        key_byte in 0usize..32,
        key_flip in 1u8..=255,
        other_epoch in any::<u64>(),
        other_cache_key in vec(any::<u8>(), 0..32),
    ) {
        let sealed = seal(&key, epoch, &cache_key, &plaintext);
        let mut wrong_key = key;
        wrong_key[key_byte] ^= key_flip;
        prop_assert_eq!(open(&wrong_key, epoch, &cache_key, &sealed), None);
        if other_epoch != epoch {
            prop_assert_eq!(open(&key, other_epoch, &cache_key, &sealed), None);
        }
        prop_assert_eq!(open(&key, epoch ^ 1, &cache_key, &sealed), None);
        if other_cache_key != cache_key {
            prop_assert_eq!(open(&key, epoch, &other_cache_key, &sealed), None);
        }
        let mut longer = cache_key.clone();
        longer.push(0);
        prop_assert_eq!(open(&key, epoch, &longer, &sealed), None);
    }

    /// Any change to the version byte, nonce, ciphertext or tag fails.
    #[test]
    fn every_altered_region_fails(
        key in any::<[u8; 32]>(),
        epoch in any::<u64>(),
        cache_key in vec(any::<u8>(), 0..32),
        plaintext in vec(any::<u8>(), 1..64),
        region in 0usize..4,
        within in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut sealed = seal(&key, epoch, &cache_key, &plaintext);
        let tag_start = sealed.len() - 16;
        let range = match region {
            0 => 0..1,                // version
            1 => 1..25,               // nonce
            2 => 25..tag_start,       // ciphertext (non-empty plaintext)
            _ => tag_start..sealed.len(), // tag
        };
        let at = range.start + within.index(range.len());
        sealed[at] ^= flip;
        prop_assert_eq!(open(&key, epoch, &cache_key, &sealed), None, "byte {} altered", at);
    }

    /// Every truncation and every extension fails; short inputs never panic.
    #[test]
    fn truncated_or_extended_entries_fail(
        key in any::<[u8; 32]>(),
        epoch in any::<u64>(),
        plaintext in vec(any::<u8>(), 0..64),
        cut in any::<prop::sample::Index>(),
        extra in vec(any::<u8>(), 1..32),
    ) {
        let sealed = seal(&key, epoch, b"k", &plaintext);
        let keep = cut.index(sealed.len());
        prop_assert_eq!(open(&key, epoch, b"k", &sealed[..keep]), None, "kept {}", keep);
        let mut extended = sealed.clone();
        extended.extend_from_slice(&extra);
        prop_assert_eq!(open(&key, epoch, b"k", &extended), None);
    }

    /// Arbitrary bytes never open (and never panic).
    #[test]
    fn arbitrary_bytes_never_open(
        key in any::<[u8; 32]>(),
        epoch in any::<u64>(),
        bytes in vec(any::<u8>(), 0..128),
    ) {
        prop_assert_eq!(open(&key, epoch, b"k", &bytes), None);
    }
}

/// A fixed sequence through every operation kind, so a broken harness shows
/// up even if the generators were to drift.
#[test]
fn a_scripted_run_through_every_operation() {
    let ops = [
        Op::Insert { key: 0, len: 5 },
        Op::Insert { key: 1, len: 0 },
        Op::Get { key: 0 },
        Op::With { key: 1 },
        Op::Load {
            key: 2,
            loader: Loader::Found(9),
        },
        Op::Load {
            key: 2,
            loader: Loader::Fail,
        },
        Op::Load {
            key: 3,
            loader: Loader::NotFound,
        },
        Op::Load {
            key: 3,
            loader: Loader::Fail,
        },
        Op::Insert { key: 4, len: 1 },
        Op::Insert { key: 5, len: 1 },
        Op::ToExpiry {
            entry: 0,
            offset: Offset::Before,
        },
        Op::Get { key: 0 },
        Op::ToExpiry {
            entry: 0,
            offset: Offset::At,
        },
        Op::Get { key: 0 },
        Op::ToDeadline {
            key: 0,
            offset: Offset::At,
        },
        Op::SyncReaper,
        Op::AdvanceZero,
        Op::Insert { key: 6, len: 7 },
        Op::Tamper {
            key: 6,
            position: 3,
            mask: 0x40,
        },
        Op::With { key: 6 },
        Op::Invalidate { key: 6 },
        Op::Invalidate { key: 5 },
        Op::Advance { nanos: 1 },
        Op::AdvanceSecs { secs: 100 },
        Op::InvalidateAll,
        Op::Get { key: 1 },
    ];
    Harness::run(Config::DEFAULT, &ops);
}

/// The committed seeds of the `cache_ops` fuzz target decode and pass, so
/// the input format documented in `fuzz/README.md` stays in step with the
/// decoder (and a crash input copied there replays here).
#[test]
fn cache_ops_fuzz_seeds_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/cache_ops");
    let mut replayed = 0;
    let (mut negative_hits, mut stale_served) = (0, 0);
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/cache_ops exists") {
        let path = entry.expect("readable").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with("seed-") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("readable seed");
        let (config, ops) = model::decode(&bytes);
        assert!(!ops.is_empty(), "{name} decodes to operations");
        let mut harness = Harness::new(config);
        ops.iter()
            .take(model::MAX_OPS)
            .for_each(|op| harness.apply(op));
        let stats = harness.cache.stats();
        negative_hits += stats.negative_hits;
        stale_served += stats.stale_served;
        harness.finish();
        replayed += 1;
    }
    assert!(replayed >= 5, "only {replayed} seeds in {}", dir.display());
    assert!(
        negative_hits > 0 && stale_served > 0,
        "the seeds reach the loader knobs ({negative_hits} negative hits, {stale_served} stale served)"
    );
}

/// Regression (found by `cache_ops`, a harness bug): flipping the same bits
/// of a stored entry twice restores it, so it must read back intact; the
/// first model only remembered "tampered" and expected an integrity error.
#[test]
fn tampering_twice_with_the_same_mask_restores_the_entry() {
    // crash-c99df42c…: config TTL 4 s, epoch 1 s, 2 entries.
    let crash: &[u8] = &[
        3, 3, 1, 0, 3, 1, 0, 0, 3, 0, 1, 3, 38, 1, 0, 0, 2, 0, 3, 0, 1, 3, 38, 1, 0, 0, 2, 3, 1, 1,
        1, 0, 40, 1, 2,
    ];
    let (config, ops) = model::decode(crash);
    Harness::run(config, &ops);
    let ops = [
        Op::Insert { key: 3, len: 16 },
        Op::Tamper {
            key: 3,
            position: 5,
            mask: 0x41,
        },
        Op::Tamper {
            key: 3,
            position: 5,
            mask: 0x41,
        },
        Op::Get { key: 3 },
        Op::Tamper {
            key: 3,
            position: 7,
            mask: 0x01,
        },
        Op::Tamper {
            key: 3,
            position: 8,
            mask: 0x01,
        },
        Op::Tamper {
            key: 3,
            position: 7,
            mask: 0x01,
        },
        Op::With { key: 3 },
    ];
    Harness::run(Config::DEFAULT, &ops);
}

/// The knobs live in bits every committed seed leaves clear: old inputs
/// keep their configuration, with both knobs off.
#[test]
fn config_bytes_without_high_bits_leave_the_knobs_off() {
    for ttl in 0..4 {
        for epochs in 0..8 {
            for max in [0, 1, 7, 255] {
                let config = Config::from_raw(ttl, epochs, max);
                assert_eq!(config.negative_ttl, None);
                assert_eq!(config.max_stale, 0);
                assert_eq!(config.recency_resolution, 0, "exact LRU");
            }
        }
    }
    let on = Config::from_raw(3 | (4 << 2), 3 | (4 << 3), 3);
    assert_eq!(
        (on.ttl_secs, on.epochs_per_ttl, on.max_entries),
        (4, 4, 4),
        "the low bits still pick TTL, epoch and bound"
    );
    assert_eq!((on.negative_ttl, on.max_stale), (Some(SEC), SEC));
}

/// A scripted run through negative caching: a "not found" is cached for
/// `negative_ttl` (negative hits, no loader call, an LRU slot), replaced by
/// an insert, and gone at its expiry.
#[test]
fn a_scripted_run_through_negative_ttl() {
    let config = Config {
        negative_ttl: Some(SEC),
        ..Config::DEFAULT
    };
    let ops = [
        Op::Insert { key: 0, len: 4 },
        Op::ToExpiry {
            entry: 0,
            offset: Offset::At,
        },
        Op::Load {
            key: 0,
            loader: Loader::NotFound,
        },
        Op::Get { key: 0 },
        Op::With { key: 0 },
        Op::Load {
            key: 0,
            loader: Loader::Fail,
        },
        Op::Tamper {
            key: 0,
            position: 3,
            mask: 1,
        },
        Op::Load {
            key: 0,
            loader: Loader::Found(3),
        },
        Op::Insert { key: 1, len: 1 },
        Op::Insert { key: 2, len: 1 },
        Op::Insert { key: 3, len: 1 },
        Op::Get { key: 0 },
        Op::Insert { key: 4, len: 1 },
        Op::Get { key: 1 },
        Op::Load {
            key: 5,
            loader: Loader::NotFound,
        },
        Op::ToExpiry {
            entry: 3,
            offset: Offset::Before,
        },
        Op::Get { key: 5 },
        Op::ToExpiry {
            entry: 3,
            offset: Offset::At,
        },
        Op::Load {
            key: 5,
            loader: Loader::NotFound,
        },
        Op::Insert { key: 5, len: 2 },
        Op::Get { key: 5 },
        Op::Load {
            key: 6,
            loader: Loader::NotFound,
        },
        Op::AdvanceSecs { secs: 30 },
        Op::Get { key: 6 },
    ];
    let mut harness = Harness::new(config);
    ops.iter().for_each(|op| harness.apply(op));
    let stats = harness.cache.stats();
    assert_eq!(
        stats.negative_hits, 6,
        "four reads of key 0, two more later"
    );
    assert_eq!(stats.stale_served, 0);
    harness.finish();
}

/// A scripted run through stale-if-error: an expired entry within
/// `max_stale` is a kept miss for `get`/`with`, served when a reload fails,
/// replaced when it succeeds, removed on "not found" and at the grace end.
#[test]
fn a_scripted_run_through_max_stale() {
    let config = Config {
        max_stale: SEC,
        ..Config::DEFAULT
    };
    let ops = [
        Op::Insert { key: 0, len: 4 },
        Op::Insert { key: 1, len: 5 },
        Op::Insert { key: 2, len: 6 },
        Op::ToExpiry {
            entry: 0,
            offset: Offset::At,
        },
        Op::Get { key: 0 },
        Op::With { key: 0 },
        Op::Load {
            key: 0,
            loader: Loader::Fail,
        },
        Op::Load {
            key: 1,
            loader: Loader::NotFound,
        },
        Op::Load {
            key: 2,
            loader: Loader::Found(2),
        },
        Op::Get { key: 2 },
        Op::Insert { key: 3, len: 1 },
        Op::Insert { key: 4, len: 1 },
        Op::ToExpiry {
            entry: 0x80,
            offset: Offset::Before,
        },
        Op::Load {
            key: 0,
            loader: Loader::Fail,
        },
        Op::ToExpiry {
            entry: 0x80,
            offset: Offset::At,
        },
        Op::Load {
            key: 0,
            loader: Loader::Fail,
        },
        Op::ToDeadline {
            key: 0,
            offset: Offset::Before,
        },
        Op::ToDeadline {
            key: 0,
            offset: Offset::At,
        },
        Op::Get { key: 3 },
    ];
    let mut harness = Harness::new(config);
    ops.iter().for_each(|op| harness.apply(op));
    let stats = harness.cache.stats();
    assert_eq!(stats.stale_served, 2, "two failed reloads inside the grace");
    assert_eq!(stats.negative_hits, 0);
    harness.finish();
}

/// The shrunk failures proptest once found, pinned as explicit cases: its
/// regression file stores RNG seeds, which replay other inputs once the
/// strategies change.
#[test]
fn shrunk_failures_replay_as_explicit_cases() {
    let short = |max_entries, negative_ttl, max_stale| Config {
        ttl_secs: 1,
        epochs_per_ttl: 1,
        max_entries,
        negative_ttl,
        max_stale,
        recency_resolution: 0,
    };
    // An empty value read exactly at its expiry.
    Harness::run(
        short(2, None, 0),
        &[
            Op::Insert { key: 6, len: 0 },
            Op::ToExpiry {
                entry: 0,
                offset: Offset::At,
            },
            Op::Get { key: 6 },
        ],
    );
    // Eviction with a bound of one.
    Harness::run(
        short(1, None, 0),
        &[
            Op::Insert { key: 2, len: 0 },
            Op::Insert { key: 3, len: 0 },
            Op::Get { key: 2 },
        ],
    );
    // A cached "not found" makes the epoch's key (the reaper drops it with
    // that key).
    Harness::run(
        short(1, Some(1_000_000), 0),
        &[Op::Load {
            key: 0,
            loader: Loader::NotFound,
        }],
    );
    // A damaged entry one nanosecond into its stale grace: the load's first
    // look does not open it, so the loader runs.
    Harness::run(
        short(4, Some(999_999_999), 1),
        &[
            Op::Insert { key: 1, len: 0 },
            Op::Load {
                key: 0,
                loader: Loader::NotFound,
            },
            Op::Load {
                key: 2,
                loader: Loader::NotFound,
            },
            Op::ToExpiry {
                entry: 4,
                offset: Offset::After,
            },
            Op::Tamper {
                key: 1,
                position: 0,
                mask: 1,
            },
            Op::Load {
                key: 1,
                loader: Loader::NotFound,
            },
        ],
    );
}
