//! The `config_env` fuzz target's property, shared with
//! `tests/fuzz_seeds.rs` (which replays the committed seeds).
//!
//! Arbitrary environment values (UTF-8 or not) for `SEALCACHE_TTL_SECS`
//! and `SEALCACHE_MAX_ENTRIES` through `Builder::from_env_with`: it returns a
//! builder or a typed error and never panics. An independent oracle decides
//! what must be accepted (exactly the in-range decimal integers, optionally
//! with a leading `+` and leading zeros) and which problem each rejected
//! value has; an error must name the variable, and an accepted value must
//! end up in the built cache.
//!
//! Input format (see `fuzz/README.md`): a flags byte (bit 0: TTL set, bit 1:
//! max entries set), the TTL value's length, the TTL value's bytes, and the
//! rest as the max-entries value.

use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use sealcache::{
    Builder, ConfigError, DEFAULT_MAX_ENTRIES, DEFAULT_TTL, ENV_MAX_ENTRIES, ENV_TTL_SECS,
    ManualClock, ValueProblem,
};

/// What the oracle says about one value.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Accept(u64),
    Reject(ValueProblem),
}

/// Decides a value from its bytes alone, without parsing into an integer
/// type until its magnitude is known to fit.
fn oracle(raw: &OsStr, min: u64, max: u64) -> Verdict {
    let Ok(text) = std::str::from_utf8(raw.as_bytes()) else {
        return Verdict::Reject(ValueProblem::NotUnicode);
    };
    if text.is_empty() {
        return Verdict::Reject(ValueProblem::Empty);
    }
    let (negative, digits) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Verdict::Reject(ValueProblem::NotANumber);
    }
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Verdict::Reject(ValueProblem::Zero);
    }
    if negative {
        return Verdict::Reject(ValueProblem::Negative);
    }
    const U64_MAX: &str = "18446744073709551615";
    if significant.len() > U64_MAX.len()
        || (significant.len() == U64_MAX.len() && significant > U64_MAX)
    {
        return Verdict::Reject(ValueProblem::Overflow);
    }
    let value = significant
        .bytes()
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
    if value < min || value > max {
        return Verdict::Reject(ValueProblem::OutOfRange);
    }
    Verdict::Accept(value)
}

/// Runs one input; panics on any violation.
pub fn check(data: &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let ttl_len = usize::from(data.get(1).copied().unwrap_or(0));
    let rest = data.get(2..).unwrap_or(&[]);
    let (ttl_bytes, max_bytes) = rest.split_at(ttl_len.min(rest.len()));
    let ttl = (flags & 1 != 0).then(|| OsString::from_vec(ttl_bytes.to_vec()));
    let max = (flags & 2 != 0).then(|| OsString::from_vec(max_bytes.to_vec()));

    let asked = RefCell::new(Vec::new());
    let result = Builder::from_env_with(|name| {
        asked.borrow_mut().push(name.to_owned());
        match name {
            ENV_TTL_SECS => ttl.clone(),
            ENV_MAX_ENTRIES => max.clone(),
            other => panic!("asked for an unexpected variable {other}"),
        }
    });

    let ttl_verdict = ttl.as_deref().map(|v| oracle(v, 1, 3600));
    let max_verdict = max.as_deref().map(|v| oracle(v, 1, 10_000_000));
    // The first rejected variable, in the order they are read.
    let expected_error = match (&ttl_verdict, &max_verdict) {
        (Some(Verdict::Reject(problem)), _) => Some((ENV_TTL_SECS, *problem, ttl.as_deref())),
        (_, Some(Verdict::Reject(problem))) => Some((ENV_MAX_ENTRIES, *problem, max.as_deref())),
        _ => None,
    };

    match (result, expected_error) {
        (Ok(builder), None) => {
            let asked = asked.into_inner();
            assert_eq!(
                asked,
                [ENV_TTL_SECS, ENV_MAX_ENTRIES],
                "each variable read once"
            );
            let cache = builder
                .clock(ManualClock::new())
                .build()
                .expect("accepted values build");
            let ttl = match ttl_verdict {
                Some(Verdict::Accept(secs)) => std::time::Duration::from_secs(secs),
                _ => DEFAULT_TTL,
            };
            let max = match max_verdict {
                Some(Verdict::Accept(n)) => usize::try_from(n).expect("small"),
                _ => DEFAULT_MAX_ENTRIES,
            };
            assert_eq!(cache.ttl(), ttl);
            assert_eq!(cache.max_entries(), max);
        }
        (Err(err), Some((variable, problem, raw))) => {
            let ConfigError::Env {
                variable: named,
                ref value,
                problem: found,
                accepted,
            } = err
            else {
                panic!("expected ConfigError::Env, got {err:?}");
            };
            assert_eq!(named, variable, "the error names the variable");
            assert_eq!(found, problem, "the problem with {raw:?}");
            // Echoed only if made of digits and signs and at most 64
            // characters long (quoted whole); anything else, which might be
            // a misrouted secret, only by its length.
            let lossy = raw.expect("set").to_string_lossy();
            let numeric = !lossy.is_empty()
                && lossy.chars().count() <= 64
                && lossy
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '+' || c == '-');
            let shown = if numeric {
                format!("{lossy:?}")
            } else {
                format!("<{} characters>", lossy.chars().count())
            };
            assert_eq!(*value, shown, "what the error shows of {raw:?}");
            assert!(!accepted.is_empty());
            let message = err.to_string();
            assert!(message.contains(variable), "{message:?} names {variable}");
        }
        (result, expected) => {
            panic!("from_env_with gave {result:?}, the oracle expects error {expected:?}")
        }
    }
}
