//! The crate's error type. No variant carries secret bytes: the worst an
//! error can reveal is a configuration value or an `errno`.

use std::fmt;

use crate::config::ConfigError;
use crate::memory::ProtectionFailure;

/// Everything a cache operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A sealed entry failed authentication: its bytes, its key binding or
    /// its epoch were altered. The entry has been dropped and counted in
    /// [`Stats::integrity_failures`](crate::Stats::integrity_failures). Never
    /// carries data; never another entry's plaintext.
    Integrity,
    /// This process is a child created by `fork` after the cache was built.
    /// The child has no usable epoch keys (they are wiped or unmapped on
    /// fork) and the cache refuses to seal or open anything in it. Build a
    /// new cache in the child.
    Forked,
    /// A required memory protection could not be had, under
    /// [`Protection::Require`](crate::Protection::Require). The failure names
    /// the protection, the `errno`, and what the operator can do.
    Protection(ProtectionFailure),
    /// A configuration value was rejected.
    Config(ConfigError),
    /// The operating system's random number generator failed (`getrandom`).
    Random,
    /// The reaper thread could not be started or has stopped, so keys would
    /// not be wiped on time; the cache refuses to create new keys.
    Reaper,
    /// The key is longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
    },
    /// The secret is longer than [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN).
    ValueTooLong {
        /// The secret's length in bytes.
        len: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Integrity => f.write_str(
                "a sealed cache entry failed authentication and was dropped \
                 (memory corruption or tampering)",
            ),
            Self::Forked => f.write_str(
                "this cache was built before fork(); a forked child has no usable \
                 keys: build a new cache in the child",
            ),
            Self::Protection(failure) => write!(f, "memory protection required: {failure}"),
            Self::Config(err) => write!(f, "invalid configuration: {err}"),
            Self::Random => f.write_str("the operating system random number generator failed"),
            Self::Reaper => f.write_str(
                "the key reaper thread could not be started or has stopped; \
                 keys would not be wiped on time",
            ),
            Self::KeyTooLong { len } => write!(
                f,
                "cache key of {len} bytes is longer than the maximum of {} bytes",
                crate::MAX_KEY_LEN
            ),
            Self::ValueTooLong { len } => write!(
                f,
                "secret of {len} bytes is longer than the maximum of {} bytes",
                crate::MAX_VALUE_LEN
            ),
        }
    }
}

/// No source: the one variant that wraps another error
/// ([`Error::Config`]) already prints its message, and a reporter that
/// walks the chain (`anyhow`, `eyre`) would print it twice. Match the
/// variant to reach the [`ConfigError`].
impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(err: ConfigError) -> Self {
        Self::Config(err)
    }
}
