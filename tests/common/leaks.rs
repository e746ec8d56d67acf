//! What "no secret in this text" means for the text tests: no rendering of
//! any 4-byte window of a secret. Shared by `tests/forensics_faults.rs` (C12)
//! and `tests/cache.rs` (`Debug` of every public type).

/// Every rendering of a secret that a formatter could produce: raw, hex
/// (both cases), `Debug` of byte slices, `\x` escapes — of every 4-byte
/// window, so a partial leak is caught too.
fn forbidden_fragments(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for w in secret.windows(4) {
        out.push(String::from_utf8_lossy(w).into_owned());
        out.push(w.iter().map(|b| format!("{b:02x}")).collect());
        out.push(w.iter().map(|b| format!("{b:02X}")).collect());
        out.push(format!("{w:?}").trim_matches(['[', ']']).to_string());
        out.push(w.iter().map(|b| format!("\\x{b:02x}")).collect());
    }
    out
}

/// Panics if `text` holds any forbidden fragment of any of `secrets`.
pub fn assert_clean(text: &str, secrets: &[&[u8]], what: &str) {
    for secret in secrets {
        for fragment in forbidden_fragments(secret) {
            assert!(
                !text.contains(&fragment),
                "{what} leaks secret fragment {fragment:?}: {text}"
            );
        }
    }
}
