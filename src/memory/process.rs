//! [`harden_process`]: opt-in, process-wide hardening against core dumps and
//! same-user debuggers. The library never calls it by itself: it changes
//! state that belongs to the whole process (and to the operator), so the
//! application decides.
//!
//! It applies two settings, each verified by its own system call's result:
//!
//! - `prctl(PR_SET_DUMPABLE, 0)`: the kernel writes no core file for the
//!   process, and processes of the same user without `CAP_SYS_PTRACE` can no
//!   longer attach with `ptrace` or open `/proc/PID/mem` (MITRE ATT&CK
//!   T1003.007). Root keeps both abilities.
//! - a soft `RLIMIT_CORE` of 0: no core file even if something later makes
//!   the process dumpable again (for example `execve` of another program).
//!   The hard limit is left alone, so the process may raise it again.

use core::fmt;

/// What [`harden_process`] obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessHardening {
    /// `PR_GET_DUMPABLE` reads 0 after the call.
    pub not_dumpable: bool,
    /// The soft `RLIMIT_CORE` is 0 after the call.
    pub no_core_limit: bool,
}

/// Which step of [`harden_process`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HardeningStep {
    /// `prctl(PR_SET_DUMPABLE, 0)`, or its verification with
    /// `PR_GET_DUMPABLE`.
    Dumpable,
    /// Reading the current `RLIMIT_CORE` (`getrlimit`).
    GetCoreLimit,
    /// Setting the soft `RLIMIT_CORE` to 0 (`setrlimit`).
    SetCoreLimit,
}

impl fmt::Display for HardeningStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dumpable => "prctl(PR_SET_DUMPABLE, 0)",
            Self::GetCoreLimit => "getrlimit(RLIMIT_CORE)",
            Self::SetCoreLimit => "setrlimit(RLIMIT_CORE, soft 0)",
        })
    }
}

/// [`harden_process`] could not apply a step. Steps before it stay applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct HardeningError {
    /// The step that failed.
    pub step: HardeningStep,
    /// The operating system's error number, when the call reported one
    /// (`None` when the call succeeded but verification showed it had no
    /// effect).
    pub errno: Option<i32>,
}

impl fmt::Display for HardeningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process hardening step {} failed", self.step)?;
        match self.errno {
            Some(errno) => write!(f, " (os error {errno})"),
            None => f.write_str(" (no effect)"),
        }
    }
}

impl std::error::Error for HardeningError {}

/// Makes this process non-dumpable (`PR_SET_DUMPABLE` = 0) and sets its soft
/// core-file size limit to 0, verifying both. Opt-in: the library never
/// calls it.
///
/// Call it early in `main`, before secrets are loaded. Side effects to know
/// about: `/proc/self/*` files become owned by root (tools that read them as
/// the same user, such as some profilers, stop working), and
/// same-user debuggers can no longer attach. It does not stop root, which
/// can still read the process's memory (see `THREAT_MODEL.md`).
///
/// ```
/// let report = sealcache::harden_process()?;
/// assert!(report.not_dumpable && report.no_core_limit);
/// # Ok::<(), sealcache::HardeningError>(())
/// ```
///
/// # Errors
///
/// [`HardeningError`] naming the step that failed and its `errno`.
pub fn harden_process() -> Result<ProcessHardening, HardeningError> {
    set_not_dumpable()?;
    set_soft_core_limit_zero()?;
    Ok(ProcessHardening {
        not_dumpable: true,
        no_core_limit: true,
    })
}

fn last_errno() -> Option<i32> {
    std::io::Error::last_os_error().raw_os_error()
}

fn set_not_dumpable() -> Result<(), HardeningError> {
    let fail = |errno| HardeningError {
        step: HardeningStep::Dumpable,
        errno,
    };
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and touches no
    // memory of ours; the unused arguments are passed as 0 as the man page
    // asks. The result is checked.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(fail(last_errno()));
    }
    // SAFETY: PR_GET_DUMPABLE takes no pointer argument; it returns the
    // current setting or -1.
    let now = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) };
    match now {
        0 => Ok(()),
        -1 => Err(fail(last_errno())),
        _ => Err(fail(None)),
    }
}

fn set_soft_core_limit_zero() -> Result<(), HardeningError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid, exclusive
    // pointer to a local; the result is checked.
    if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) } != 0 {
        return Err(HardeningError {
            step: HardeningStep::GetCoreLimit,
            errno: last_errno(),
        });
    }
    limit.rlim_cur = 0;
    // SAFETY: setrlimit reads one `rlimit` through a valid pointer to a
    // local; lowering the soft limit below the hard limit is always allowed.
    // The result is checked.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &limit) } != 0 {
        return Err(HardeningError {
            step: HardeningStep::SetCoreLimit,
            errno: last_errno(),
        });
    }
    let mut check = libc::rlimit {
        rlim_cur: 1,
        rlim_max: 0,
    };
    // SAFETY: as the first getrlimit call above.
    if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut check) } != 0 {
        return Err(HardeningError {
            step: HardeningStep::GetCoreLimit,
            errno: last_errno(),
        });
    }
    if check.rlim_cur != 0 {
        return Err(HardeningError {
            step: HardeningStep::SetCoreLimit,
            errno: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child (so the test process stays dumpable) and
    /// returns the child's exit code.
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: fork has no memory-safety preconditions; the child only
        // runs `f` (plain system calls) and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = f();
            // SAFETY: ends the child without running the parent's
            // destructors or atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid);
        assert!(libc::WIFEXITED(status), "child crashed: {status}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn harden_process_makes_the_process_non_dumpable_with_no_core_limit() {
        let code = in_child(|| {
            // Start from a nonzero soft core limit (a shell's `ulimit -c 0`
            // would otherwise make the check below pass on its own).
            let mut start = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: writes one rlimit to a valid local.
            if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut start) } != 0 {
                return 4;
            }
            // Up to the hard limit needs no privilege; a hard limit of 0 has
            // to be raised, which needs CAP_SYS_RESOURCE.
            if start.rlim_max == 0 {
                start.rlim_max = 1 << 20;
            }
            start.rlim_cur = start.rlim_max;
            // SAFETY: reads one rlimit from a valid local.
            if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &start) } != 0 {
                return 5;
            }
            let Ok(report) = harden_process() else {
                return 1;
            };
            if !(report.not_dumpable && report.no_core_limit) {
                return 2;
            }
            // SAFETY: PR_GET_DUMPABLE takes no pointer argument.
            let dumpable =
                unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) };
            let mut limit = libc::rlimit {
                rlim_cur: 1,
                rlim_max: 0,
            };
            // SAFETY: writes one rlimit to a valid local.
            let rc = unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) };
            if dumpable != 0 || rc != 0 || limit.rlim_cur != 0 {
                return 3;
            }
            0
        });
        let test = "harden_process_makes_the_process_non_dumpable_with_no_core_limit";
        if code == 5
            && !super::super::environment::require(
                false,
                test,
                "a nonzero core limit (the hard limit is 0, and raising it needs CAP_SYS_RESOURCE)",
            )
        {
            return;
        }
        assert_eq!(code, 0);
    }

    #[test]
    fn harden_process_is_idempotent_and_keeps_the_hard_limit() {
        let code = in_child(|| {
            let mut before = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: writes one rlimit to a valid local.
            if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut before) } != 0 {
                return 1;
            }
            if harden_process().is_err() || harden_process().is_err() {
                return 2;
            }
            let mut after = before;
            // SAFETY: writes one rlimit to a valid local.
            if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut after) } != 0 {
                return 3;
            }
            if after.rlim_max != before.rlim_max {
                return 4;
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn errors_name_the_step_and_errno_only() {
        let err = HardeningError {
            step: HardeningStep::SetCoreLimit,
            errno: Some(libc::EPERM),
        };
        assert_eq!(
            err.to_string(),
            "process hardening step setrlimit(RLIMIT_CORE, soft 0) failed (os error 1)"
        );
    }
}
