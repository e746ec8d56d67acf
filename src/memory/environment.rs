//! What this machine provides, for tests that attack the real thing: some
//! need `memfd_secret(2)`, `gcore` or a kernel that writes core files. On a
//! machine without one of them such a test is skipped with its reason
//! printed, unless `SEALCACHE_STRICT_ENV=1` (CI sets it), which turns the
//! skip into a failure, so that the machine that vouches for the claims
//! cannot skip them silently.

/// The variable that makes a missing capability of the machine fail a test
/// instead of skipping it.
pub const STRICT_ENV: &str = "SEALCACHE_STRICT_ENV";

/// Returns `available`. When it is false, panics under
/// `SEALCACHE_STRICT_ENV=1`; otherwise prints `SKIPPED <test>: <what> is
/// not available` to stderr, so the caller returns early.
#[must_use]
pub fn require(available: bool, test: &str, what: &str) -> bool {
    if available {
        return true;
    }
    let strict = std::env::var(STRICT_ENV).is_ok_and(|v| v == "1");
    assert!(
        !strict,
        "{test}: {what} is not available on this machine ({STRICT_ENV}=1 requires it)"
    );
    eprintln!(
        "SKIPPED {test}: {what} is not available on this machine (set {STRICT_ENV}=1 to fail instead)"
    );
    false
}

/// [`require`] of [`memfd_secret_supported`]: whether `test` can use
/// `memfd_secret` here.
#[must_use]
pub fn require_memfd_secret(test: &str) -> bool {
    require(memfd_secret_supported(), test, "memfd_secret(2)")
}

/// Whether the kernel hands out `memfd_secret(2)` descriptors (Linux >=
/// 5.14 with `CONFIG_SECRETMEM`, enabled at boot before 6.5, and not
/// filtered by seccomp). Probed with the raw system call, not through the
/// crate's own backend, so a broken backend cannot look like a missing
/// kernel feature.
#[must_use]
pub fn memfd_secret_supported() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: memfd_secret takes one flags argument and returns a new
        // descriptor or -1; the descriptor, if any, is ours and closed here.
        let fd = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) };
        let Ok(fd) = libc::c_int::try_from(fd) else {
            return false;
        };
        if fd < 0 {
            return false;
        }
        // SAFETY: `fd` is the open descriptor made above, closed only here.
        // A failed close of a probe descriptor changes nothing of the answer.
        let _closed = unsafe { libc::close(fd) };
        true
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}
