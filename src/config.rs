//! Configuration: the builder, its defaults and bounds, `from_env`, and the
//! typed [`ConfigError`] that every rejected value produces.
//!
//! Every knob is validated by [`Builder::build`]; nothing is clamped or
//! silently replaced by a default. Environment values are parsed strictly:
//! no whitespace trimming, no units, decimal digits only.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::SealCache;
use crate::clock::{BootClock, Clock};
use crate::error::Error;
use crate::memory::Backend;

/// Default time to live of an entry: 60 s.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Default bound on the number of entries: 1000.
pub const DEFAULT_MAX_ENTRIES: usize = 1000;
/// Shortest accepted TTL: 1 s.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest accepted TTL: 3600 s.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Largest accepted `max_entries`: 10,000,000.
pub const MAX_MAX_ENTRIES: usize = 10_000_000;
/// The default epoch length is the TTL divided by this.
pub const DEFAULT_EPOCHS_PER_TTL: u32 = 4;
/// The shortest accepted epoch is the TTL divided by this.
pub const MAX_EPOCHS_PER_TTL: u32 = 64;
/// Default recency resolution: 1 s, or a 64th of the TTL if that is
/// shorter (see [`Builder::recency_resolution`]).
pub const DEFAULT_RECENCY_RESOLUTION: Duration = Duration::from_secs(1);

/// Environment variable holding the TTL in whole seconds.
pub const ENV_TTL_SECS: &str = "SEALCACHE_TTL_SECS";
/// Environment variable holding the maximum number of entries.
pub const ENV_MAX_ENTRIES: &str = "SEALCACHE_MAX_ENTRIES";

/// What to do when a memory protection cannot be obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protection {
    /// Fail [`Builder::build`] (and any later operation that needs locked
    /// memory) with [`Error::Protection`] naming what was missing. Default.
    #[default]
    Require,
    /// Continue without it and report what is active through
    /// [`SealCache::protections`].
    BestEffort,
}

/// What was wrong with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValueProblem {
    /// The value is the empty string.
    Empty,
    /// The value is not valid Unicode.
    NotUnicode,
    /// The value is not a decimal number (letters, spaces, units, fractions).
    NotANumber,
    /// The value is negative.
    Negative,
    /// The value is zero.
    Zero,
    /// The value does not fit in 64 bits.
    Overflow,
    /// The value is a number outside the accepted range.
    OutOfRange,
    /// The value is not a finite number (NaN or infinite).
    NotFinite,
}

impl fmt::Display for ValueProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "is empty",
            Self::NotUnicode => "is not valid Unicode",
            Self::NotANumber => "is not a whole decimal number (no units, spaces, `_` or `.`)",
            Self::Negative => "is negative",
            Self::Zero => "is zero",
            Self::Overflow => "is too large to represent",
            Self::OutOfRange => "is out of range",
            Self::NotFinite => "is not a finite number",
        })
    }
}

/// A configuration value was rejected. Names the variable or setting, what
/// was wrong with the value and the accepted range.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable held an unusable value.
    Env {
        /// The variable, e.g. `SEALCACHE_TTL_SECS`.
        variable: &'static str,
        /// The value, quoted (`"-5"`), if it is made only of digits and
        /// signs and is at most 64 characters long, else only its length,
        /// e.g. `<7 characters>`:
        /// these variables hold a TTL and a count, but a misrouted one (a
        /// template that put a password there) must not reach the logs.
        value: String,
        /// What was wrong with it.
        problem: ValueProblem,
        /// The accepted range, e.g. `1..=3600 (seconds)`.
        accepted: &'static str,
    },
    /// A `SEALCACHE_` environment variable that sealcache does not read
    /// (a misspelled name would otherwise be ignored without a word).
    UnknownEnv {
        /// The variable's name (lossily converted, at most 64 characters).
        variable: String,
    },
    /// A builder setting was out of its accepted range.
    Setting {
        /// The setting, e.g. `ttl`.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What was wrong with it.
        problem: ValueProblem,
        /// The accepted range, computed from the other settings where it
        /// depends on them.
        accepted: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env {
                variable,
                value,
                problem,
                accepted,
            } => write!(
                f,
                "environment variable {variable}={value} {problem}; accepted: {accepted}"
            ),
            Self::UnknownEnv { variable } => write!(
                f,
                "environment variable {variable:?} is not one sealcache reads (it reads \
                 {ENV_TTL_SECS} and {ENV_MAX_ENTRIES}); a misspelling? Unset or rename it"
            ),
            Self::Setting {
                setting,
                value,
                problem,
                accepted,
            } => write!(
                f,
                "setting `{setting}` = {value} {problem}; accepted: {accepted}"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The validated settings a cache runs with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) ttl: Duration,
    pub(crate) max_entries: usize,
    pub(crate) epoch: Duration,
    pub(crate) protection: Protection,
    pub(crate) backend: Backend,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) refresh_ahead: Option<f64>,
    pub(crate) max_stale: Duration,
    pub(crate) ttl_jitter: Option<f64>,
    pub(crate) recency_resolution: Duration,
}

/// Builds a [`SealCache`]. Every knob has a documented default and range;
/// [`build`](Self::build) rejects anything outside it with a typed error.
///
/// ```
/// use sealcache::{Protection, SealCache};
/// use std::time::Duration;
///
/// let cache = SealCache::builder()
///     .ttl(Duration::from_secs(30))
///     .max_entries(10_000)
///     .protection(Protection::Require)
///     .build()?;
/// # Ok::<(), sealcache::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    ttl: Duration,
    max_entries: usize,
    epoch: Option<Duration>,
    protection: Protection,
    backend: Backend,
    clock: Arc<dyn Clock>,
    negative_ttl: Option<Duration>,
    refresh_ahead: Option<f64>,
    max_stale: Option<Duration>,
    ttl_jitter: Option<f64>,
    recency_resolution: Option<Duration>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            max_entries: DEFAULT_MAX_ENTRIES,
            epoch: None,
            protection: Protection::Require,
            backend: Backend::Auto,
            clock: Arc::new(BootClock),
            negative_ttl: None,
            refresh_ahead: None,
            max_stale: None,
            ttl_jitter: None,
            recency_resolution: None,
        }
    }
}

impl Builder {
    /// A builder with every default: TTL 60 s, 1000 entries, epoch TTL/4,
    /// recency resolution 1 s or TTL/64, [`Protection::Require`],
    /// [`Backend::Auto`], [`BootClock`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder seeded from `SEALCACHE_TTL_SECS` and `SEALCACHE_MAX_ENTRIES`
    /// (unset variables keep their defaults).
    ///
    /// # Errors
    /// [`ConfigError::Env`] for a set variable whose value is empty, not a
    /// whole decimal number, negative, zero, too large or out of range;
    /// [`ConfigError::UnknownEnv`] for any other variable whose name starts
    /// with `SEALCACHE_` in any case (`SEALCACHE_TTL`, `sealcache_ttl_secs`),
    /// except `SEALCACHE_STRICT_ENV`, which the crate's own tests read.
    pub fn from_env() -> Result<Self, ConfigError> {
        check_env_names(std::env::vars_os().map(|(name, _)| name))?;
        Self::from_env_with(|name| std::env::var_os(name))
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`
    /// instead of the process environment (for tests and for configuration
    /// systems that mimic the environment). `lookup` cannot list names, so
    /// unknown `SEALCACHE_` variables are not reported here.
    ///
    /// # Errors
    /// [`ConfigError::Env`], as for [`from_env`](Self::from_env).
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        let mut builder = Self::new();
        if let Some(raw) = lookup(ENV_TTL_SECS) {
            let secs = parse_env(
                ENV_TTL_SECS,
                &raw,
                MIN_TTL.as_secs(),
                MAX_TTL.as_secs(),
                "1..=3600 (whole seconds)",
            )?;
            builder.ttl = Duration::from_secs(secs);
        }
        if let Some(raw) = lookup(ENV_MAX_ENTRIES) {
            let max = parse_env(
                ENV_MAX_ENTRIES,
                &raw,
                1,
                MAX_MAX_ENTRIES as u64,
                "1..=10000000 (entries)",
            )?;
            builder.max_entries = usize::try_from(max).unwrap_or(MAX_MAX_ENTRIES);
        }
        Ok(builder)
    }

    /// Time to live of every entry: an entry inserted at `t` is never
    /// returned by [`get`](crate::SealCache::get) or
    /// [`with`](crate::SealCache::with) at or after `t + ttl` (for
    /// `get_or_try_load`, see [`max_stale`](Self::max_stale)). Default 60 s;
    /// accepted 1 s ..= 3600 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Bound on the number of entries; inserting beyond it evicts the least
    /// recently used entry, to the
    /// [recency resolution](Self::recency_resolution). Default 1000;
    /// accepted 1 ..= 10,000,000.
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// Length of one key epoch. Entries inserted during one epoch share one
    /// key, wiped one TTL (plus [`max_stale`](Self::max_stale)) after the
    /// epoch ends, so a copy of an expired entry's ciphertext stays
    /// decryptable for at most this long after the entry expired, plus the
    /// jitter taken off its TTL ([`ttl_jitter`](Self::ttl_jitter)) and
    /// `max_stale` when those are set. Default TTL/4; accepted TTL/64 ..= TTL
    /// (this bounds the number of live keys to ⌈(TTL + `max_stale`)/epoch⌉ + 2).
    pub fn epoch_length(mut self, epoch: Duration) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// What to do when a memory protection cannot be had. Default
    /// [`Protection::Require`].
    pub fn protection(mut self, protection: Protection) -> Self {
        self.protection = protection;
        self
    }

    /// Which memory holds the epoch keys. Default [`Backend::Auto`]:
    /// `memfd_secret` where the kernel offers it, else locked anonymous pages.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The clock for expiry and key deadlines. Default [`BootClock`]; tests
    /// use a [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Opt-in negative caching: a loader's "not found" (never an error) is
    /// cached for this long, so repeated look-ups of a missing secret do not
    /// reach the database. A cached "not found" is an entry: it counts
    /// towards `max_entries` (and may evict), is tied to the current epoch
    /// key (made if needed), and the reaper drops it with that key. Off by
    /// default; accepted 1 ms ..= TTL.
    pub fn negative_ttl(mut self, negative_ttl: Duration) -> Self {
        self.negative_ttl = Some(negative_ttl);
        self
    }

    /// Opt-in refresh-ahead: the first
    /// [`get_or_try_load`](crate::SealCache::get_or_try_load) hit in the last
    /// `fraction` of an entry's TTL reloads it (one load, however many
    /// callers; that caller waits for the load) while every other caller
    /// keeps getting the cached value. With
    /// [`ttl_jitter`](Self::ttl_jitter) the window is `fraction` of the
    /// shortest lifetime jitter can give, `TTL × (1 − jitter)`, so that no
    /// entry is reloaded before `1 − fraction` of its own lifetime. If
    /// the reload fails, its caller gets the cached value only if that is
    /// still live when the loader gives up (or within `max_stale` of its
    /// expiry, when set), else the loader's error.
    /// Off by default; accepted 0 < fraction < 1.
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = Some(fraction);
        self
    }

    /// Opt-in stale-if-error with a hard cap: when a load for an expired
    /// entry fails, the old value may be served for at most `max_stale` past
    /// its expiry (counted in [`Stats::stale_served`](crate::Stats::stale_served)),
    /// never longer: the bound is checked when the loader gives up, not when
    /// it starts, and a value invalidated meanwhile is never served. Epoch keys then live `ttl + max_stale` after their
    /// epoch. Off by default; accepted 0 ..= TTL.
    pub fn max_stale(mut self, max_stale: Duration) -> Self {
        self.max_stale = Some(max_stale);
        self
    }

    /// Opt-in TTL jitter: each entry's TTL is shortened by a random amount
    /// of up to `fraction` of it, so entries loaded together do not expire
    /// together. Never lengthens a TTL. Off by default; accepted
    /// 0 < fraction < 1.
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.ttl_jitter = Some(fraction);
        self
    }

    /// How finely eviction tells recent entries apart (the LRU's
    /// resolution). A hit on an entry whose recency was refreshed less than
    /// `resolution` ago leaves its recency as it is, so hits on an entry
    /// read more often than once per `resolution` write nothing shared
    /// between threads but the shard's lock and counters; eviction then
    /// removes an entry whose last use is at most `resolution` after the
    /// least recently used entry's, give or take how far recency stamps ran
    /// ahead of their clock readings (see
    /// [the manual](crate::manual#recency-lru-at-a-resolution)).
    /// `Duration::ZERO` makes the LRU exact: every hit refreshes. Default:
    /// 1 s, or a 64th of the TTL if that is shorter; accepted 0 ..= TTL.
    pub fn recency_resolution(mut self, resolution: Duration) -> Self {
        self.recency_resolution = Some(resolution);
        self
    }

    /// Checks every setting and returns them, or the first one out of range.
    pub(crate) fn settings(&self) -> Result<Settings, ConfigError> {
        if self.ttl < MIN_TTL || self.ttl > MAX_TTL {
            return Err(ConfigError::Setting {
                setting: "ttl",
                value: format!("{:?}", self.ttl),
                problem: if self.ttl.is_zero() {
                    ValueProblem::Zero
                } else {
                    ValueProblem::OutOfRange
                },
                accepted: "1s..=3600s".into(),
            });
        }
        if self.max_entries == 0 || self.max_entries > MAX_MAX_ENTRIES {
            return Err(ConfigError::Setting {
                setting: "max_entries",
                value: self.max_entries.to_string(),
                problem: if self.max_entries == 0 {
                    ValueProblem::Zero
                } else {
                    ValueProblem::OutOfRange
                },
                accepted: "1..=10000000".into(),
            });
        }
        let shortest = self.ttl / MAX_EPOCHS_PER_TTL;
        let epoch = self.epoch.unwrap_or(self.ttl / DEFAULT_EPOCHS_PER_TTL);
        if epoch < shortest || epoch > self.ttl {
            return Err(ConfigError::Setting {
                setting: "epoch_length",
                value: format!("{epoch:?}"),
                problem: if epoch.is_zero() {
                    ValueProblem::Zero
                } else {
                    ValueProblem::OutOfRange
                },
                accepted: format!("{shortest:?}..={:?} (ttl/64..=ttl)", self.ttl),
            });
        }
        if let Some(negative) = self.negative_ttl
            && (negative < Duration::from_millis(1) || negative > self.ttl)
        {
            return Err(ConfigError::Setting {
                setting: "negative_ttl",
                value: format!("{negative:?}"),
                problem: if negative.is_zero() {
                    ValueProblem::Zero
                } else {
                    ValueProblem::OutOfRange
                },
                accepted: format!("1ms..={:?} (at most the ttl)", self.ttl),
            });
        }
        check_fraction("refresh_ahead", self.refresh_ahead)?;
        check_fraction("ttl_jitter", self.ttl_jitter)?;
        let max_stale = self.max_stale.unwrap_or(Duration::ZERO);
        self.check_within_ttl("max_stale", max_stale)?;
        let recency_resolution = self
            .recency_resolution
            .unwrap_or_else(|| DEFAULT_RECENCY_RESOLUTION.min(self.ttl / 64));
        self.check_within_ttl("recency_resolution", recency_resolution)?;
        Ok(Settings {
            recency_resolution,
            negative_ttl: self.negative_ttl,
            refresh_ahead: self.refresh_ahead,
            max_stale,
            ttl_jitter: self.ttl_jitter,
            ttl: self.ttl,
            max_entries: self.max_entries,
            epoch,
            protection: self.protection,
            backend: self.backend,
            clock: Arc::clone(&self.clock),
        })
    }

    /// Rejects a `setting` of `value` longer than the TTL (zero is accepted).
    fn check_within_ttl(&self, setting: &'static str, value: Duration) -> Result<(), ConfigError> {
        if value > self.ttl {
            return Err(ConfigError::Setting {
                setting,
                value: format!("{value:?}"),
                problem: ValueProblem::OutOfRange,
                accepted: format!("0s..={:?} (at most the ttl)", self.ttl),
            });
        }
        Ok(())
    }

    /// Validates the settings, allocates and verifies the locked key slab,
    /// and starts the reaper thread.
    ///
    /// # Errors
    /// - [`Error::Config`] for a setting out of range.
    /// - [`Error::Protection`] under [`Protection::Require`] when a memory
    ///   protection could not be had (the error names it and the remedy), or
    ///   when [`Backend::MemfdSecret`] was asked for and the kernel refused.
    /// - [`Error::Reaper`] when the reaper thread could not be started.
    pub fn build(self) -> Result<SealCache, Error> {
        let settings = self.settings().map_err(Error::Config)?;
        SealCache::from_settings(settings)
    }
}

/// The variable the crate's own tests read (see `.ci/run`): not a setting,
/// but not a misspelling either.
const ENV_TESTS_STRICT: &str = "SEALCACHE_STRICT_ENV";

/// Fails on the first name that starts with `SEALCACHE_` (any case) and is
/// not a variable `from_env` reads.
fn check_env_names(names: impl IntoIterator<Item = OsString>) -> Result<(), ConfigError> {
    const PREFIX: &str = "SEALCACHE_";
    for name in names {
        let text = name.to_string_lossy();
        let prefixed = text
            .get(..PREFIX.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(PREFIX));
        if prefixed && ![ENV_TTL_SECS, ENV_MAX_ENTRIES, ENV_TESTS_STRICT].contains(&&*text) {
            return Err(ConfigError::UnknownEnv {
                variable: text.chars().take(64).collect(),
            });
        }
    }
    Ok(())
}

/// Checks that an opt-in fraction lies strictly between 0 and 1.
fn check_fraction(setting: &'static str, fraction: Option<f64>) -> Result<(), ConfigError> {
    match fraction {
        Some(f) if !(f > 0.0 && f < 1.0) => Err(ConfigError::Setting {
            setting,
            value: format!("{f}"),
            problem: if f == 0.0 {
                ValueProblem::Zero
            } else if !f.is_finite() {
                ValueProblem::NotFinite
            } else if f < 0.0 {
                ValueProblem::Negative
            } else {
                ValueProblem::OutOfRange
            },
            accepted: "0 < fraction < 1".into(),
        }),
        _ => Ok(()),
    }
}

/// Parses an environment value as a whole decimal number in `min..=max`.
fn parse_env(
    variable: &'static str,
    raw: &OsStr,
    min: u64,
    max: u64,
    accepted: &'static str,
) -> Result<u64, ConfigError> {
    let lossy = raw.to_string_lossy();
    let numeric = lossy
        .chars()
        .all(|c| c.is_ascii_digit() || c == '+' || c == '-');
    // Up to 64 digits and signs are quoted whole; anything longer is shown
    // by its length, never cut (a cut value would not be the one set).
    let shown = if numeric && !lossy.is_empty() && lossy.len() <= 64 {
        format!("{lossy:?}")
    } else {
        format!("<{} characters>", lossy.chars().count())
    };
    let fail = |problem| ConfigError::Env {
        variable,
        value: shown.clone(),
        problem,
        accepted,
    };
    let text = raw.to_str().ok_or_else(|| fail(ValueProblem::NotUnicode))?;
    if text.is_empty() {
        return Err(fail(ValueProblem::Empty));
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail(ValueProblem::NotANumber));
    }
    let all_zero = digits.bytes().all(|b| b == b'0');
    if negative && !all_zero {
        return Err(fail(ValueProblem::Negative));
    }
    if all_zero {
        return Err(fail(ValueProblem::Zero));
    }
    let value: u64 = digits.parse().map_err(|_| fail(ValueProblem::Overflow))?;
    if value < min || value > max {
        return Err(fail(ValueProblem::OutOfRange));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ttl: Option<&str>, max: Option<&str>) -> Result<Builder, ConfigError> {
        Builder::from_env_with(|name| match name {
            ENV_TTL_SECS => ttl.map(OsString::from),
            ENV_MAX_ENTRIES => max.map(OsString::from),
            _ => None,
        })
    }

    fn problem_of(result: Result<Builder, ConfigError>) -> (&'static str, ValueProblem) {
        match result {
            Err(ConfigError::Env {
                variable, problem, ..
            }) => (variable, problem),
            other => panic!("expected an Env error, got {other:?}"),
        }
    }

    #[test]
    fn unset_variables_give_the_defaults() {
        let settings = env(None, None).unwrap().settings().unwrap();
        assert_eq!(settings.ttl, DEFAULT_TTL);
        assert_eq!(settings.max_entries, DEFAULT_MAX_ENTRIES);
        assert_eq!(settings.epoch, DEFAULT_TTL / 4);
    }

    #[test]
    fn valid_values_are_taken() {
        let settings = env(Some("3600"), Some("10000000"))
            .unwrap()
            .settings()
            .unwrap();
        assert_eq!(settings.ttl, MAX_TTL);
        assert_eq!(settings.max_entries, MAX_MAX_ENTRIES);
        let settings = env(Some("1"), Some("+1")).unwrap().settings().unwrap();
        assert_eq!(settings.ttl, MIN_TTL);
        assert_eq!(settings.max_entries, 1);
    }

    #[test]
    fn every_bad_ttl_value_has_its_own_problem() {
        let cases = [
            ("", ValueProblem::Empty),
            ("abc", ValueProblem::NotANumber),
            ("60s", ValueProblem::NotANumber),
            (" 60", ValueProblem::NotANumber),
            ("1.5", ValueProblem::NotANumber),
            ("-", ValueProblem::NotANumber),
            ("-5", ValueProblem::Negative),
            ("0", ValueProblem::Zero),
            ("-0", ValueProblem::Zero),
            ("3601", ValueProblem::OutOfRange),
            ("18446744073709551616", ValueProblem::Overflow),
        ];
        for (value, expected) in cases {
            let (variable, problem) = problem_of(env(Some(value), None));
            assert_eq!(variable, ENV_TTL_SECS, "{value:?}");
            assert_eq!(problem, expected, "{value:?}");
        }
    }

    #[test]
    fn every_bad_max_entries_value_has_its_own_problem() {
        let cases = [
            ("", ValueProblem::Empty),
            ("ten", ValueProblem::NotANumber),
            ("-1", ValueProblem::Negative),
            ("0", ValueProblem::Zero),
            ("10000001", ValueProblem::OutOfRange),
            ("99999999999999999999999", ValueProblem::Overflow),
        ];
        for (value, expected) in cases {
            let (variable, problem) = problem_of(env(None, Some(value)));
            assert_eq!(variable, ENV_MAX_ENTRIES, "{value:?}");
            assert_eq!(problem, expected, "{value:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn non_unicode_is_rejected() {
        use std::os::unix::ffi::OsStringExt;
        let result = Builder::from_env_with(|name| {
            (name == ENV_TTL_SECS).then(|| OsString::from_vec(vec![0x36, 0xff]))
        });
        assert_eq!(problem_of(result), (ENV_TTL_SECS, ValueProblem::NotUnicode));
    }

    #[test]
    fn error_messages_name_variable_problem_and_range() {
        let err = env(Some("0"), None).unwrap_err().to_string();
        assert!(err.contains("SEALCACHE_TTL_SECS"), "{err}");
        assert!(err.contains("is zero"), "{err}");
        assert!(err.contains("1..=3600"), "{err}");
        assert_eq!(
            env(Some("-5"), None).unwrap_err().to_string(),
            "environment variable SEALCACHE_TTL_SECS=\"-5\" is negative; accepted: 1..=3600 \
             (whole seconds)"
        );
    }

    /// A value that is not made of digits and signs may be a secret that a
    /// template put in the wrong variable: the error shows its length only.
    #[test]
    fn a_non_numeric_value_is_not_echoed() {
        let err = env(Some("hunter2-Passw0rd"), None).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains("hunter") && !text.contains("Passw0rd"),
            "{text}"
        );
        assert!(text.contains("<16 characters>"), "{text}");
        let err = env(None, Some("")).unwrap_err().to_string();
        assert!(err.contains("<0 characters> is empty"), "{err}");
        // A numeric value is quoted whole up to 64 characters; a longer one
        // (a numeric token put there by mistake) only by its length.
        let long = format!("{}9999", "0".repeat(70));
        let err = env(Some(&long), None).unwrap_err().to_string();
        assert!(
            !err.contains("0000") && err.contains("<74 characters>"),
            "{err}"
        );
        let err = env(Some(&"9".repeat(64)), None).unwrap_err().to_string();
        assert!(err.contains(&format!("{:?}", "9".repeat(64))), "{err}");
    }

    #[test]
    fn misspelled_sealcache_variables_are_reported_by_name() {
        let names = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            check_env_names(names(&[
                "PATH",
                ENV_TTL_SECS,
                ENV_MAX_ENTRIES,
                ENV_TESTS_STRICT,
                "SEALCACHEX"
            ])),
            Ok(())
        );
        for typo in [
            "SEALCACHE_TTL",
            "sealcache_ttl_secs",
            "Sealcache_Max_Entries",
        ] {
            let err = check_env_names(names(&["HOME", typo])).unwrap_err();
            assert_eq!(
                err,
                ConfigError::UnknownEnv {
                    variable: typo.into()
                }
            );
            assert!(err.to_string().contains("misspelling"), "{err}");
        }
    }

    #[test]
    fn fractions_say_what_is_wrong_with_them() {
        let problem = |f: f64| match Builder::new().refresh_ahead(f).settings() {
            Err(ConfigError::Setting { problem, .. }) => problem,
            other => panic!("{f}: {other:?}"),
        };
        assert_eq!(problem(f64::NAN), ValueProblem::NotFinite);
        assert_eq!(problem(f64::INFINITY), ValueProblem::NotFinite);
        assert_eq!(problem(-0.5), ValueProblem::Negative);
        assert_eq!(problem(0.0), ValueProblem::Zero);
        assert_eq!(problem(1.5), ValueProblem::OutOfRange);
        let text = Builder::new()
            .ttl_jitter(f64::NAN)
            .settings()
            .unwrap_err()
            .to_string();
        assert_eq!(
            text,
            "setting `ttl_jitter` = NaN is not a finite number; accepted: 0 < fraction < 1"
        );
    }

    #[test]
    fn builder_settings_out_of_range_are_rejected() {
        let bad_ttl = Builder::new().ttl(Duration::from_millis(999)).settings();
        assert!(matches!(
            bad_ttl,
            Err(ConfigError::Setting { setting: "ttl", .. })
        ));
        let zero = Builder::new().max_entries(0).settings();
        assert!(matches!(
            zero,
            Err(ConfigError::Setting {
                setting: "max_entries",
                problem: ValueProblem::Zero,
                ..
            })
        ));
        let short_epoch = Builder::new()
            .ttl(Duration::from_secs(64))
            .epoch_length(Duration::from_millis(999))
            .settings();
        assert!(matches!(
            short_epoch,
            Err(ConfigError::Setting {
                setting: "epoch_length",
                ..
            })
        ));
        let long_epoch = Builder::new()
            .ttl(Duration::from_secs(10))
            .epoch_length(Duration::from_secs(11))
            .settings();
        assert!(long_epoch.is_err());
        for bad in [0.0, 1.0, -0.5, f64::NAN, f64::INFINITY] {
            assert!(
                Builder::new().refresh_ahead(bad).settings().is_err(),
                "{bad}"
            );
            assert!(Builder::new().ttl_jitter(bad).settings().is_err(), "{bad}");
        }
        assert!(
            Builder::new()
                .negative_ttl(Duration::ZERO)
                .settings()
                .is_err()
        );
        assert!(
            Builder::new()
                .negative_ttl(Duration::from_secs(61))
                .settings()
                .is_err()
        );
        assert!(
            Builder::new()
                .max_stale(Duration::from_secs(61))
                .settings()
                .is_err()
        );
        let edge = Builder::new()
            .ttl(Duration::from_secs(64))
            .epoch_length(Duration::from_secs(1))
            .settings()
            .unwrap();
        assert_eq!(edge.epoch, Duration::from_secs(1));
    }

    #[test]
    fn recency_resolution_defaults_to_a_second_or_a_64th_of_the_ttl() {
        let resolution = |builder: Builder| builder.settings().unwrap().recency_resolution;
        assert_eq!(resolution(Builder::new()), Duration::from_micros(937_500));
        assert_eq!(
            resolution(Builder::new().ttl(MAX_TTL)),
            DEFAULT_RECENCY_RESOLUTION
        );
        assert_eq!(
            resolution(Builder::new().ttl(MIN_TTL)),
            Duration::from_micros(15_625)
        );
        let exact = Builder::new().recency_resolution(Duration::ZERO);
        assert_eq!(resolution(exact), Duration::ZERO);
        let whole_ttl = Builder::new().recency_resolution(DEFAULT_TTL);
        assert_eq!(resolution(whole_ttl), DEFAULT_TTL);
        let text = Builder::new()
            .recency_resolution(Duration::from_secs(61))
            .settings()
            .unwrap_err()
            .to_string();
        assert_eq!(
            text,
            "setting `recency_resolution` = 61s is out of range; accepted: 0s..=60s (at most the ttl)"
        );
    }
}
