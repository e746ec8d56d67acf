//! Fault tests against the real process: guard pages and canary (claims
//! C7–C9), fork (C10), lock failure (C11), leak-free text (C12), and a
//! positive control proving the scanner finds what a child does keep.
//!
//! Tests that crash re-execute this binary as a child (see
//! `forensics/mod.rs`) and assert the signal it died of.

#![cfg(all(target_os = "linux", feature = "test-hooks"))]

#[path = "forensics/mod.rs"]
mod forensics;
#[path = "common/leaks.rs"]
mod leaks;

use leaks::assert_clean;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use forensics::{Kind, NEEDLE_LEN, Needles};
use sealcache::{
    Backend, BootClock, Builder, ConfigError, Error, ExposeSecret, LoadError, ManualClock,
    Protection, ProtectionKind, SealCache, SecretBytes, testing,
};
use zeroize::Zeroize;

fn backend_named(name: &str) -> Backend {
    match name {
        "anon" => Backend::LockedAnonymous,
        "memfd" => Backend::MemfdSecret,
        other => panic!("unknown backend {other}"),
    }
}

fn small_cache(backend: Backend) -> (SealCache, ManualClock) {
    let clock = ManualClock::new();
    let cache = SealCache::builder()
        .ttl(Duration::from_secs(60))
        .max_entries(100)
        .backend(backend)
        .clock(clock.clone())
        .build()
        .expect("build cache");
    (cache, clock)
}

// ---------------------------------------------------------------------------
// Claims C7–C9: guard pages and canary.
// ---------------------------------------------------------------------------

/// Child: builds a cache on `backend` and writes one byte at `offset` from
/// the slab (`end` + 0, or `start` - 17), or corrupts the canary
/// (`start` - 1) and frees the slab.
fn guard_child(role: &str) {
    forensics::no_core_files();
    let (what, backend) = role.split_once(':').expect("role");
    let (cache, _clock) = small_cache(backend_named(backend));
    cache.insert("k", "v").expect("insert");
    let slab = testing::slab_range(&cache);
    let target = match what {
        "end" => slab.end,
        // The 16 bytes before the slab are the canary; the byte before them
        // is the last byte of the leading guard page.
        "start" => slab.start - 16 - 1,
        "canary" => slab.start - 1,
        other => panic!("unknown guard role {other}"),
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size");
    assert_eq!((slab.start - 16) % page, 0, "slab + canary is page-aligned");
    assert_eq!(slab.end % page, 0, "slab ends at the trailing guard page");
    forensics::send(&[b"writing"]);
    let ptr = target as *mut u8;
    // SAFETY: deliberately none — this sacrificial child writes outside the
    // slab to prove the guard pages and canary catch it; the parent asserts
    // the signal it dies of.
    unsafe {
        let old = core::ptr::read_volatile(ptr);
        core::ptr::write_volatile(ptr, !old);
    }
    forensics::send(&[b"written"]);
    drop(cache);
    forensics::send(&[b"survived"]);
}

fn run_guard(test: &str, what: &str, signal: i32) {
    for backend in ["anon", "memfd"] {
        let role = format!("{what}:{backend}");
        let child = forensics::spawn(test, &role);
        let lines = forensics::expect_signal(child, signal);
        // The fault must come from the write (SIGSEGV) or from freeing the
        // slab after it (SIGABRT), not from anything before.
        let expected: &[&str] = if signal == libc::SIGSEGV {
            &["writing"]
        } else {
            &["writing", "written"]
        };
        assert_eq!(lines, expected, "{role}");
        eprintln!("[{test}] {role}: died of signal {signal} after {lines:?}");
    }
}

/// A write one byte past the end of the key slab hits the trailing guard
/// page and kills the process with SIGSEGV (both backends).
#[test]
fn write_one_byte_past_the_key_slab_dies_with_sigsegv() {
    if let Some(role) = forensics::child_role() {
        return guard_child(&role);
    }
    run_guard(
        "write_one_byte_past_the_key_slab_dies_with_sigsegv",
        "end",
        libc::SIGSEGV,
    );
}

/// A write one byte before the page-aligned start (slab start - 16 - 1)
/// hits the leading guard page: SIGSEGV (both backends).
#[test]
fn write_one_byte_before_the_key_slab_dies_with_sigsegv() {
    if let Some(role) = forensics::child_role() {
        return guard_child(&role);
    }
    run_guard(
        "write_one_byte_before_the_key_slab_dies_with_sigsegv",
        "start",
        libc::SIGSEGV,
    );
}

/// A write into the 16-byte canary before the slab (start - 1) is caught
/// when the slab is freed: SIGABRT (both backends).
#[test]
fn corrupted_canary_aborts_when_the_slab_is_freed() {
    if let Some(role) = forensics::child_role() {
        return guard_child(&role);
    }
    run_guard(
        "corrupted_canary_aborts_when_the_slab_is_freed",
        "canary",
        libc::SIGABRT,
    );
}

// ---------------------------------------------------------------------------
// Claim C10: fork.
// ---------------------------------------------------------------------------

/// Forks, runs `f` in the grandchild (which `_exit`s with its result), and
/// returns the grandchild's wait status (killed after 10 s).
fn in_fork(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: fork has no memory-safety preconditions; the grandchild only
    // runs `f` and `_exit`s, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = catch_unwind(AssertUnwindSafe(f)).unwrap_or(99);
        // SAFETY: terminates the grandchild immediately, without running
        // the parent's atexit handlers or destructors twice.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return status;
        }
        assert!(rc == 0, "waitpid failed");
        if Instant::now() > deadline {
            // SAFETY: kills our own stuck grandchild.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn describe_status(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("exit {}", libc::WEXITSTATUS(status))
    }
}

fn fork_child(backend: &str) {
    forensics::no_core_files();
    let (cache, _clock) = small_cache(backend_named(backend));
    let mut fingerprints = Vec::new();
    for i in 0..10 {
        let mut secret = [0u8; NEEDLE_LEN];
        forensics::random_secret(&mut secret);
        fingerprints.push(forensics::fingerprint(&secret));
        cache.insert(&format!("s{i}"), &secret[..]).expect("insert");
        secret.zeroize();
    }
    assert!(
        !testing::slab_is_zero(&cache),
        "keys are in the slab before fork"
    );
    let slab = testing::slab_range(&cache);

    // Grandchild 1: the cache refuses to serve, seal or open.
    let refused = in_fork(|| {
        let get = cache.get("s0");
        let with = cache.with("s0", |b| b.len());
        let insert = cache.insert("new", "value");
        let ok = matches!(get, Err(Error::Forked))
            && matches!(with, Err(Error::Forked))
            && matches!(insert, Err(Error::Forked));
        drop(cache.clone());
        if ok { 0 } else { 1 }
    });
    forensics::send_value("refused", describe_status(refused));

    // Grandchild 2: its view of the slab holds no key (anonymous memory:
    // zero-filled by MADV_WIPEONFORK; memfd_secret: not mapped, so the read
    // faults).
    let view = in_fork(|| {
        let mut nonzero = 0;
        for addr in slab.clone() {
            // SAFETY: reads the slab's address range in the forked child;
            // for memfd_secret the range is unmapped there and the read
            // faults, which is the point (the parent asserts the signal).
            if unsafe { core::ptr::read_volatile(addr as *const u8) } != 0 {
                nonzero += 1;
            }
        }
        if nonzero == 0 { 0 } else { 2 }
    });
    forensics::send_value("slab_view", describe_status(view));

    // The parent's cache is unaffected.
    let intact = fingerprints.iter().enumerate().all(|(i, want)| {
        let name = format!("s{i}");
        let got = cache.get(&name).expect("get").expect("live");
        forensics::fingerprint(got.expose_secret()) == *want
            && cache.with(&name, forensics::fingerprint).expect("with") == Some(*want)
    });
    forensics::send_value("parent_intact", intact);
    forensics::wait_for_parent();
}

/// After `fork`, the child's view of the key slab holds no live key (wiped
/// for anonymous memory, unmapped for memfd_secret), the child's cache
/// refuses with `Error::Forked` instead of serving data, and the parent's
/// cache still serves every secret.
#[test]
fn forked_child_holds_no_key_and_gets_forked_error_while_parent_works() {
    const TEST: &str = "forked_child_holds_no_key_and_gets_forked_error_while_parent_works";
    if let Some(role) = forensics::child_role() {
        return fork_child(&role);
    }
    for (backend, slab_view) in [("anon", "exit 0"), ("memfd", "signal 11")] {
        let mut child = forensics::spawn(TEST, backend);
        let lines = child.until_ready();
        eprintln!("[{TEST}] {backend}: {lines:?}");
        assert_eq!(forensics::value(&lines, "refused"), "exit 0", "{backend}");
        assert_eq!(
            forensics::value(&lines, "slab_view"),
            slab_view,
            "{backend}"
        );
        assert_eq!(
            forensics::value(&lines, "parent_intact"),
            "true",
            "{backend}"
        );
        child.finish_ok();
    }
}

// ---------------------------------------------------------------------------
// Claim C11: lock failure.
// ---------------------------------------------------------------------------

const CAP_IPC_LOCK: u32 = 14;
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Removes capability `cap` (below 32) from this thread's effective,
/// permitted and inheritable sets.
fn drop_capability(cap: u32) {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData structs for version 3; both
    // pointers are valid.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget");
    let bit = 1u32 << cap;
    data[0].effective &= !bit;
    data[0].permitted &= !bit;
    data[0].inheritable &= !bit;
    // SAFETY: capset reads the header and two CapData structs.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset (drop capability {cap})");
}

/// Drops CAP_IPC_LOCK from this thread and sets RLIMIT_MEMLOCK to
/// `limit` bytes, then proves that locking one page more than that fails.
fn drop_memlock(limit: usize) {
    drop_capability(CAP_IPC_LOCK);
    let rlimit = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: limit as libc::rlim_t,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlimit) };
    assert_eq!(rc, 0, "setrlimit(RLIMIT_MEMLOCK, {limit})");
    let over = limit + 4096;
    let pages = vec![0u8; over + 4096];
    // SAFETY: mlock of our own live buffer; undone below if it succeeds.
    let locked = unsafe { libc::mlock(pages.as_ptr().cast(), over) };
    if locked == 0 {
        // SAFETY: undoes the lock just taken.
        unsafe { libc::munlock(pages.as_ptr().cast(), over) };
    }
    assert_ne!(
        locked, 0,
        "mlock still works: CAP_IPC_LOCK or the limit was not dropped"
    );
}

fn build(backend: Backend, protection: Protection) -> Result<SealCache, Error> {
    SealCache::builder()
        .backend(backend)
        .protection(protection)
        .clock(ManualClock::new())
        .build()
}

fn failure_kind(result: Result<SealCache, Error>) -> String {
    match result {
        Err(Error::Protection(failure)) => format!("{:?} errno={:?}", failure.kind, failure.errno),
        Err(other) => format!("other error: {other}"),
        Ok(cache) => format!("built: {}", cache.protections()),
    }
}

fn works(cache: &SealCache) -> bool {
    cache.insert("k", "locked-out secret").is_ok()
        && cache
            .get("k")
            .ok()
            .flatten()
            .is_some_and(|s| s.expose_secret() == b"locked-out secret")
        && cache.with("k", <[u8]>::len).ok() == Some(Some(17))
}

fn assert_kind(lines: &[String], tag: &str, kind: &str) {
    let got = forensics::value(lines, tag);
    assert!(got.starts_with(&format!("{kind} errno=")), "{tag}: {got}");
}

fn nolock_child() {
    drop_memlock(0);
    forensics::send_value(
        "require_anon",
        failure_kind(build(Backend::LockedAnonymous, Protection::Require)),
    );
    let best = build(Backend::LockedAnonymous, Protection::BestEffort).expect("best effort builds");
    let report = best.protections();
    forensics::send_value(
        "best_effort_anon",
        format!(
            "works={} mlock={} locked_bytes={} failures={:?}",
            works(&best),
            report.mlock,
            best.locked_bytes(),
            report.failures.iter().map(|f| f.kind).collect::<Vec<_>>()
        ),
    );
    forensics::send_value(
        "memfd_require",
        failure_kind(build(Backend::MemfdSecret, Protection::Require)),
    );
    forensics::send_value(
        "memfd_best_effort",
        failure_kind(build(Backend::MemfdSecret, Protection::BestEffort)),
    );
    forensics::send_value(
        "auto_require",
        failure_kind(build(Backend::Auto, Protection::Require)),
    );
    // The default builder, no protection named: `Require` is the default.
    forensics::send_value(
        "default_builder",
        failure_kind(SealCache::builder().clock(ManualClock::new()).build()),
    );
    let auto = build(Backend::Auto, Protection::BestEffort).expect("auto best effort builds");
    let report = auto.protections();
    forensics::send_value(
        "auto_best_effort",
        format!(
            "works={} backend={} memfd_secret={} mlock={} failures={:?}",
            works(&auto),
            report.backend,
            report.memfd_secret,
            report.mlock,
            report.failures.iter().map(|f| f.kind).collect::<Vec<_>>()
        ),
    );
    forensics::wait_for_parent();
}

/// Without CAP_IPC_LOCK and with RLIMIT_MEMLOCK = 0: `Require`, which is
/// also what a builder that names no protection gets, refuses to build with
/// a typed `Mlock` error; `BestEffort` builds, works, and reports
/// mlock off; memfd_secret fails with a typed error when forced and falls
/// back to (unlocked, reported) anonymous memory under `Auto`.
#[test]
fn without_cap_ipc_lock_and_memlock_require_fails_typed_and_best_effort_reports() {
    const TEST: &str =
        "without_cap_ipc_lock_and_memlock_require_fails_typed_and_best_effort_reports";
    if forensics::child_role().is_some() {
        return nolock_child();
    }
    let mut child = forensics::spawn(TEST, "nolock");
    let lines = child.until_ready();
    eprintln!("[{TEST}] {lines:#?}");
    assert_kind(&lines, "require_anon", "Mlock");
    assert_eq!(
        forensics::value(&lines, "best_effort_anon"),
        "works=true mlock=false locked_bytes=0 failures=[Mlock]"
    );
    assert_kind(&lines, "memfd_require", "MemfdSecret");
    assert_kind(&lines, "memfd_best_effort", "MemfdSecret");
    assert_kind(&lines, "auto_require", "Mlock");
    assert_kind(&lines, "default_builder", "Mlock");
    assert_eq!(
        forensics::value(&lines, "auto_best_effort"),
        "works=true backend=locked_anonymous memfd_secret=false mlock=false \
         failures=[MemfdSecret, Mlock]"
    );
    child.finish_ok();
}

/// The locked-memory limit of the `lowlock` child: room for the key slab
/// and small scratch buffers, not for a scratch buffer of [`BIG_SECRET`].
const LOW_MEMLOCK: usize = 64 * 1024;
/// A secret whose `with` scratch buffer does not fit in [`LOW_MEMLOCK`].
const BIG_SECRET: usize = 256 * 1024;

/// With room in RLIMIT_MEMLOCK for the key slab but not for a large `with`
/// scratch buffer (and no CAP_IPC_LOCK): under `Require` the cache builds
/// with every protection, and `with` on a large secret fails with a failure
/// that names the scratch buffer; under `BestEffort` it works, and
/// `protections()` turns mlock off, names the scratch buffer (not the
/// slab) in its failures and its text, while the slab's own locked bytes
/// stay reported.
#[test]
fn a_with_scratch_buffer_that_cannot_be_locked_is_named_in_the_error_and_the_report() {
    const TEST: &str =
        "a_with_scratch_buffer_that_cannot_be_locked_is_named_in_the_error_and_the_report";
    if forensics::child_role().is_some() {
        return lowlock_child();
    }
    let mut child = forensics::spawn(TEST, "lowlock");
    let lines = child.until_ready();
    eprintln!("[{TEST}] {lines:#?}");
    assert_eq!(
        forensics::value(&lines, "require"),
        "built mlock=true small_with=true big_with=Mlock/ScratchBuffer"
    );
    let text = forensics::value(&lines, "require_text");
    assert!(
        text.starts_with(
            "memory protection required: mlock was not obtained for a with() scratch buffer ("
        ) && text.contains("raise RLIMIT_MEMLOCK"),
        "{text}"
    );
    assert_eq!(
        forensics::value(&lines, "best_effort"),
        "big_with=true mlock=false slab_locked=true failures=[(Mlock, ScratchBuffer)]"
    );
    let shown = forensics::value(&lines, "best_effort_text");
    assert!(
        shown.contains(" mlock=off ")
            && shown.contains("; failed: mlock was not obtained for a with() scratch buffer"),
        "{shown}"
    );
    child.finish_ok();
}

fn lowlock_child() {
    drop_memlock(LOW_MEMLOCK);
    let big = vec![7u8; BIG_SECRET];
    // Locked anonymous memory everywhere: with `Auto`, a machine without
    // memfd_secret would add a fallback failure to the report.
    let require =
        build(Backend::LockedAnonymous, Protection::Require).expect("the slab fits the limit");
    require.insert("small", "s").expect("insert");
    require.insert("big", &big[..]).expect("insert");
    let small_with = require.with("small", <[u8]>::len) == Ok(Some(1));
    let big_with = require.with("big", <[u8]>::len);
    let failure = match &big_with {
        Err(Error::Protection(failure)) => format!("{:?}/{:?}", failure.kind, failure.memory),
        other => format!("{other:?}"),
    };
    forensics::send_value(
        "require",
        format!(
            "built mlock={} small_with={small_with} big_with={failure}",
            require.protections().mlock
        ),
    );
    let text = big_with.map_or_else(|err| err.to_string(), |_| "worked".into());
    forensics::send_value("require_text", text);
    let best = build(Backend::LockedAnonymous, Protection::BestEffort).expect("best effort builds");
    best.insert("big", &big[..]).expect("insert");
    let big_with = best.with("big", <[u8]>::len) == Ok(Some(BIG_SECRET));
    let report = best.protections();
    forensics::send_value(
        "best_effort",
        format!(
            "big_with={big_with} mlock={} slab_locked={} failures={:?}",
            report.mlock,
            best.locked_bytes() > 0,
            report
                .failures
                .iter()
                .map(|f| (f.kind, f.memory))
                .collect::<Vec<_>>()
        ),
    );
    forensics::send_value("best_effort_text", report);
    forensics::wait_for_parent();
}

const CAP_SYS_PTRACE: u32 = 19;

/// This thread's capability set `field` (`CapEff`, `CapPrm`, ...).
fn capabilities(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("capability set in /proc/thread-self/status")
}

const CAP_SETPCAP: u32 = 8;

/// Whether this process can start children without CAP_SYS_PTRACE: its
/// bounding set lacks it already, or it may drop it from there
/// (CAP_SETPCAP). Otherwise root's children get it back at `exec`.
fn can_give_up_cap_sys_ptrace() -> bool {
    capabilities("CapBnd") & (1 << CAP_SYS_PTRACE) == 0
        || capabilities("CapEff") & (1 << CAP_SETPCAP) != 0
}

/// Gives up CAP_SYS_PTRACE for this thread and for every process it
/// starts: from the bounding set (root's capabilities come back at `exec`
/// otherwise), and from the effective, permitted and inheritable sets.
fn give_up_cap_sys_ptrace() {
    if capabilities("CapBnd") & (1 << CAP_SYS_PTRACE) != 0 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointer.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                CAP_SYS_PTRACE as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        assert_eq!(rc, 0, "prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE)");
    }
    drop_capability(CAP_SYS_PTRACE);
}

/// What a process of the same user without CAP_SYS_PTRACE gets from
/// opening `/proc/PID/mem` and from `ptrace(PTRACE_SEIZE)`, for each child
/// `test` runs in the given `roles`: `Ok` or the errno. The children are
/// started by the prober's own thread after it gave CAP_SYS_PTRACE up, so
/// they lack it too: the kernel also refuses a tracer whose capabilities
/// are not a superset of its target's, and only dumpability may differ.
fn access_without_cap_sys_ptrace(
    test: &'static str,
    roles: &'static [&'static str],
) -> Vec<(Result<(), i32>, Result<(), i32>)> {
    std::thread::spawn(move || {
        give_up_cap_sys_ptrace();
        let mut children: Vec<_> = roles
            .iter()
            .map(|role| forensics::spawn(test, role))
            .collect();
        let got = children
            .iter_mut()
            .map(|child| {
                child.until_ready();
                let pid = child.pid();
                let mem = std::fs::File::open(format!("/proc/{pid}/mem"))
                    .map(drop)
                    .map_err(|err| err.raw_os_error().unwrap_or(0));
                let target = libc::pid_t::try_from(pid).expect("pid");
                // SAFETY: PTRACE_SEIZE takes a pid, no address and no data
                // (options 0); it only changes kernel state. The child is
                // let go when this thread ends.
                let rc = unsafe {
                    libc::ptrace(
                        libc::PTRACE_SEIZE,
                        target,
                        std::ptr::null_mut::<libc::c_void>(),
                        std::ptr::null_mut::<libc::c_void>(),
                    )
                };
                let seize = if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
                };
                (mem, seize)
            })
            .collect();
        children.into_iter().for_each(forensics::Spawned::finish_ok);
        got
    })
    .join()
    .expect("prober thread")
}

/// Whether Yama leaves a parent free to trace its own children
/// (`ptrace_scope` 0 or 1, or no Yama at all).
fn ptrace_of_children_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .map_or(true, |scope| matches!(scope.trim(), "0" | "1"))
}

/// After `harden_process()`, a process of the same user without
/// CAP_SYS_PTRACE can neither open its `/proc/PID/mem` nor attach to it
/// with `ptrace`; the same prober can do both to an unhardened sibling
/// (the control, so that a prober that can do nothing proves nothing).
#[test]
fn after_harden_process_a_same_user_process_cannot_read_or_trace_it() {
    const TEST: &str = "after_harden_process_a_same_user_process_cannot_read_or_trace_it";
    if let Some(role) = forensics::child_role() {
        if role == "hardened" {
            sealcache::harden_process().expect("harden_process");
        }
        let cache = SealCache::builder().build().expect("build");
        cache
            .insert("k", "a secret behind harden_process")
            .expect("insert");
        forensics::wait_for_parent();
        return;
    }
    if !testing::require(
        ptrace_of_children_allowed(),
        TEST,
        "ptrace of a child (Yama ptrace_scope 0 or 1)",
    ) || !testing::require(
        can_give_up_cap_sys_ptrace(),
        TEST,
        "children without CAP_SYS_PTRACE (CAP_SETPCAP, or no CAP_SYS_PTRACE)",
    ) {
        return;
    }
    let got = access_without_cap_sys_ptrace(TEST, &["plain", "hardened"]);
    assert_eq!(got[0], (Ok(()), Ok(())), "control: the unhardened sibling");
    assert_eq!(
        got[1],
        (Err(libc::EACCES), Err(libc::EPERM)),
        "the hardened process"
    );
}

// ---------------------------------------------------------------------------
// Claim C12: leak-free text.
// ---------------------------------------------------------------------------

/// Debug/Display of every public type, every error message the cache can
/// produce, and what a panicking loader's caller and waiters receive hold no
/// byte sequence of any secret or epoch key.
#[test]
fn text_of_every_public_type_error_and_panicking_loader_holds_no_secret() {
    let mut raw = [0u8; NEEDLE_LEN];
    forensics::random_secret(&mut raw);
    let printable = b"pw-Zq8rT1mK0vXy7LbN3sWd5HcJ2fGe9";
    let clock = ManualClock::new();
    let cache = SealCache::builder()
        .ttl(Duration::from_secs(60))
        .clock(clock.clone())
        .build()
        .expect("build");
    cache.insert("raw", &raw[..]).expect("insert");
    cache.insert("printable", &printable[..]).expect("insert");
    let keys = testing::export_live_keys(&cache);
    let mut secrets: Vec<&[u8]> = vec![&raw, printable];
    secrets.extend(keys.iter().map(|k| &k[..]));

    let got = cache.get("raw").expect("get").expect("live");
    let builder = SealCache::builder().ttl(Duration::from_secs(60));
    let mut texts = vec![
        format!("{cache:?}"),
        format!("{cache:#?}"),
        format!("{got:?}"),
        format!("{:?}", SecretBytes::from(&printable[..])),
        format!("{:?} {:#?}", cache.stats(), cache.stats()),
        format!("{} {:?}", cache.protections(), cache.protections()),
        format!("{clock:?} {:?}", BootClock),
        format!("{builder:?}"),
        format!("{:?} {:?}", Protection::Require, Backend::Auto),
    ];
    // Every error the cache returns, from real failures where possible.
    assert!(testing::tamper(&cache, b"raw", |sealed| sealed[30] ^= 1));
    let integrity = cache.get("raw").expect_err("tampered");
    assert_eq!(integrity, Error::Integrity);
    let too_long = cache
        .insert(&vec![b'k'; 1 << 20], &raw[..])
        .expect_err("key too long");
    let value_too_long = cache
        .insert("big", vec![0u8; sealcache::MAX_VALUE_LEN + 1])
        .expect_err("value too long");
    let config = SealCache::builder()
        .ttl(Duration::ZERO)
        .build()
        .expect_err("zero ttl");
    // Configuration errors show a rejected value only if it is numeric (a
    // secret put in the TTL variable by mistake shows as its length), and
    // name an unknown variable.
    let misrouted = String::from_utf8(printable.to_vec()).expect("printable");
    let env: ConfigError = Builder::from_env_with(|name| {
        (name == sealcache::ENV_TTL_SECS).then(|| misrouted.clone().into())
    })
    .expect_err("bad env value");
    for err in [
        integrity,
        too_long,
        value_too_long,
        config,
        Error::Forked,
        Error::Random,
        Error::Reaper,
    ] {
        texts.push(format!("{err} {err:?}"));
    }
    texts.push(format!("{env} {env:?}"));
    // What `from_env` says of a misspelled variable (it reads the process
    // environment, so the error is built here): its name, nothing else.
    let unknown = ConfigError::UnknownEnv {
        variable: "SEALCACHE_TTL".into(),
    };
    texts.push(format!("{unknown} {unknown:?}"));
    for kind in [
        ProtectionKind::Mlock,
        ProtectionKind::NoDump,
        ProtectionKind::GuardPages,
        ProtectionKind::Canary,
        ProtectionKind::ForkWipe,
        ProtectionKind::MemfdSecret,
        ProtectionKind::Allocation,
    ] {
        texts.push(format!("{kind} {kind:?} {}", kind.remedy()));
    }

    // A loader that holds the secret and panics with a message that does
    // not contain it: the caller gets back exactly that payload, waiters get
    // the payload-free `LoaderPanicked`, and nothing is cached.
    let leader_cache = cache.clone();
    let leader = std::thread::spawn(move || {
        catch_unwind(AssertUnwindSafe(|| {
            let _ =
                leader_cache.get_or_try_load("loaded", || -> Result<Option<Vec<u8>>, String> {
                    let fetched = b"pw-LOADED-4f9a1c77e2d0b8a6c3f5e1d".to_vec();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while leader_cache.stats().coalesced_waits < 1 && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    assert!(!fetched.is_empty());
                    panic!("database row malformed")
                });
        }))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.stats().loads < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let waiter = cache.get_or_try_load("loaded", || -> Result<Option<Vec<u8>>, String> {
        panic!("a waiter must not load")
    });
    let payload = leader
        .join()
        .expect("leader thread")
        .expect_err("leader panics");
    let payload_text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .expect("string payload");
    assert_eq!(
        payload_text, "database row malformed",
        "payload passed through unchanged"
    );
    let waiter_err = match waiter {
        Err(err @ LoadError::LoaderPanicked) => err,
        other => panic!("waiter got {other:?}"),
    };
    texts.push(format!("{payload_text} {waiter_err} {waiter_err:?}"));
    let loader_err = cache
        .get_or_try_load("failing", || -> Result<Option<Vec<u8>>, String> {
            Err("lookup failed".to_string())
        })
        .expect_err("loader error");
    texts.push(format!("{loader_err} {loader_err:?}"));
    let elsewhere = LoadError::<String>::LoaderFailedElsewhere;
    texts.push(format!("{elsewhere} {elsewhere:?}"));
    // A loader that asks for the secret it is loading.
    let reentrant = cache
        .get_or_try_load("reentrant", || -> Result<Option<Vec<u8>>, String> {
            let inner = cache
                .get_or_try_load("reentrant", || -> Result<Option<Vec<u8>>, String> {
                    Ok(Some(b"never loaded".to_vec()))
                });
            let err = inner.expect_err("a loader asking for its own key");
            Err(format!("inner call failed: {err} {err:?}"))
        })
        .expect_err("the outer loader reports the inner failure");
    texts.push(format!("{reentrant} {reentrant:?}"));
    assert!(
        cache.get("loaded").expect("get").is_none(),
        "nothing cached"
    );
    let loaded: &[u8] = b"pw-LOADED-4f9a1c77e2d0b8a6c3f5e1d";
    secrets.push(loaded);

    for text in &texts {
        assert_clean(text, &secrets, "formatted output");
    }
    eprintln!(
        "[text] {} renderings checked against {} secrets/keys, none leaks",
        texts.len(),
        secrets.len()
    );
    raw.zeroize();
}

// ---------------------------------------------------------------------------
// Control: the scanner finds what a child keeps.
// ---------------------------------------------------------------------------

fn keeper_child() {
    let mut on_stack = [0u8; NEEDLE_LEN];
    forensics::random_secret(&mut on_stack);
    let mut on_heap = vec![0u8; NEEDLE_LEN];
    getrandom::fill(&mut on_heap).expect("getrandom");
    forensics::send_hex("plain", &on_stack);
    forensics::send_hex("plain", &on_heap);
    // Freed without wiping, as a buggy library would: a 48-byte secret
    // (looked for by its last 32 bytes, as tests/forensics.rs does) and a
    // 32-byte key (looked for by its last 16 bytes too). Nothing allocates
    // between the frees and the scan, so their chunks are not reused.
    let mut freed_secret = vec![0u8; NEEDLE_LEN + 16];
    getrandom::fill(&mut freed_secret).expect("getrandom");
    forensics::send_hex("plain", &freed_secret[16..]);
    let mut freed_key = vec![0u8; NEEDLE_LEN];
    getrandom::fill(&mut freed_key).expect("getrandom");
    forensics::send_hex("key", &freed_key);
    drop(std::hint::black_box(freed_secret));
    drop(std::hint::black_box(freed_key));
    forensics::wait_for_parent();
    std::hint::black_box((&on_stack, &on_heap));
    on_stack.zeroize();
    on_heap.zeroize();
}

/// The scanner is not blind: two secrets a child deliberately keeps (one on
/// its stack, one on its heap) are both found by the parent's scan of
/// `/proc/CHILD/mem`, on the stack and heap respectively; so are a secret
/// and a key it freed without wiping, whose first 16 bytes glibc has
/// overwritten.
#[test]
fn scanner_finds_secrets_a_child_keeps_on_its_stack_and_heap() {
    const TEST: &str = "scanner_finds_secrets_a_child_keeps_on_its_stack_and_heap";
    if forensics::child_role().is_some() {
        return keeper_child();
    }
    let mut child = forensics::spawn(TEST, "keeper");
    let lines = child.until_ready();
    let needles = Needles::from_lines(&lines);
    let scan = forensics::scan_process(child.pid(), &needles);
    eprintln!("[{TEST}] {}", scan.describe());
    // Needles 0..3 are the plaintexts in the order sent (kept on the stack,
    // kept on the heap, freed); needle 3 is the freed key.
    for (needle, kind) in [
        (0, Kind::Plaintext),
        (1, Kind::Plaintext),
        (2, Kind::Plaintext),
        (3, Kind::Key),
    ] {
        assert!(
            scan.hits
                .iter()
                .any(|h| h.needle == needle && h.kind == kind),
            "{kind:?} #{needle} not found:\n{}",
            scan.describe()
        );
    }
    assert!(
        scan.hits
            .iter()
            .any(|h| h.needle == 3 && h.location.contains("last 16 bytes only")),
        "the freed key is found by its tail:\n{}",
        scan.describe()
    );
    assert!(
        scan.hits.iter().any(|h| h.location.contains("stack")),
        "{}",
        scan.describe()
    );
    child.finish_ok();
}
