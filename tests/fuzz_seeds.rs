//! The committed seeds of the `open_entry` and `config_env` fuzz targets,
//! replayed through the same property the targets check (the `cache_ops`
//! seeds are replayed by `tests/model.rs`). A seed whose format drifted
//! from its target, or a change that breaks a property on a seed, fails
//! here in `cargo test`, without a fuzzing run.

#![cfg(all(target_os = "linux", feature = "test-hooks"))]

#[path = "common/fuzz_config_env.rs"]
mod config_env;
#[path = "common/fuzz_open_entry.rs"]
mod open_entry;

/// Runs `check` on every `seed-*` file of `fuzz/corpus/<target>`; returns
/// how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus directory exists") {
        let path = entry.expect("readable").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("seed-") {
            check(&std::fs::read(&path).expect("readable seed"));
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn open_entry_seeds_hold_the_targets_property() {
    assert!(replay("open_entry", open_entry::check) >= 13);
}

#[test]
fn config_env_seeds_hold_the_targets_property() {
    assert!(replay("config_env", config_env::check) >= 10);
}
