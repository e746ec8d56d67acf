//! Tests with real system calls and real attacks: overflows into guard
//! pages, canary corruption, forks, and memlock exhaustion, each run in a
//! forked child whose fate the parent checks.

use std::io::Read as _;
use std::os::fd::FromRawFd as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::secret_mem::{FAIL_AT, Step};
use super::*;

fn page() -> usize {
    sys::page_size().expect("page size")
}

/// How a forked child ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Signaled(i32),
}

/// Runs `f` in a forked child (no core dumps), returning how it ended and
/// what it wrote to its report string.
fn in_child(f: impl FnOnce(&mut String) -> i32) -> (Outcome, String) {
    // Make sure memsec's one-time initialisation ran in the parent, so the
    // child never waits on a `Once` another parent thread was holding.
    drop(LockedBuf::new(1).expect("warm-up"));
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two descriptors to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fork has no memory-safety preconditions; the child only runs
    // `f` (code that allocates through glibc malloc, which is fork-safe)
    // and then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid rlimit struct; failure only means a core file.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        let mut report = String::new();
        let code = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut report))).unwrap_or(101);
        // SAFETY: writing our own string buffer to our pipe; then `_exit`
        // without running destructors or atexit handlers of the parent's
        // copy of the process state.
        unsafe {
            libc::write(fds[1], report.as_ptr().cast(), report.len());
            libc::_exit(code)
        }
    }
    drop(f);
    // SAFETY: closing our copy of the write end, which we own.
    unsafe { libc::close(fds[1]) };
    // SAFETY: `fds[0]` is an open descriptor we own; File takes it over.
    let mut reader = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut report = String::new();
    reader
        .read_to_string(&mut report)
        .expect("read child report");
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child with a valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        assert_eq!(sys::last_errno(), libc::EINTR, "waitpid failed");
    }
    let outcome = if libc::WIFSIGNALED(status) {
        Outcome::Signaled(libc::WTERMSIG(status))
    } else {
        Outcome::Exited(libc::WEXITSTATUS(status))
    };
    (outcome, report)
}

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("fd dir").count()
}

/// Total bytes of address space mapped (robust to VMA splits and to a
/// malloc arena growing inside its own reservation).
fn count_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .filter_map(|line| {
            let (lo, hi) = line.split_whitespace().next()?.split_once('-')?;
            Some(usize::from_str_radix(hi, 16).ok()? - usize::from_str_radix(lo, 16).ok()?)
        })
        .sum()
}

const BACKENDS: [Backend; 3] = [
    Backend::Auto,
    Backend::MemfdSecret,
    Backend::LockedAnonymous,
];

/// Every backend, or only the anonymous one where `memfd_secret` is missing
/// (`Auto` then means the anonymous backend too).
fn backends(test: &str) -> Vec<Backend> {
    if super::environment::require_memfd_secret(test) {
        BACKENDS.to_vec()
    } else {
        vec![Backend::LockedAnonymous]
    }
}

/// The two concrete backends, or only the anonymous one where
/// `memfd_secret` is missing.
fn concrete_backends(test: &str) -> Vec<Backend> {
    if super::environment::require_memfd_secret(test) {
        vec![Backend::MemfdSecret, Backend::LockedAnonymous]
    } else {
        vec![Backend::LockedAnonymous]
    }
}

#[test]
fn round_trip_on_every_backend() {
    for backend in backends("round_trip_on_every_backend") {
        for len in [0, 1, 100, page() - 16, page(), 3 * page() - 16, 10_000] {
            let (mut slab, got) = LockedSlab::allocate(len, backend).expect("allocate");
            assert_eq!(slab.len(), len);
            assert_eq!(slab.bytes().len(), len);
            assert!(slab.bytes().iter().all(|b| *b == 0), "starts zeroed");
            for (i, b) in slab.bytes_mut().iter_mut().enumerate() {
                *b = (i % 251) as u8 + 1;
            }
            assert!(
                slab.bytes()
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == (i % 251) as u8 + 1)
            );
            let range = slab.address_range();
            assert_eq!(range.end - range.start, len);
            assert_eq!(range.start, slab.bytes().as_ptr() as usize);
            slab.wipe();
            assert!(slab.bytes().iter().all(|b| *b == 0), "wiped");
            assert!(!slab.forked());
            let expected = match backend {
                Backend::LockedAnonymous => SlabBackend::LockedAnonymous,
                _ => SlabBackend::MemfdSecret,
            };
            assert_eq!(got.backend, expected, "{backend:?}");
            assert_eq!(slab.backend(), expected);
        }
    }
}

#[test]
fn every_protection_is_active_here() {
    for backend in backends("every_protection_is_active_here") {
        let (slab, got) = LockedSlab::allocate(4 * page() - 16, backend).expect("allocate");
        assert!(
            got.missing().is_empty(),
            "{backend:?}: {got} {:?}",
            got.failures
        );
        assert!(got.failures.is_empty(), "{backend:?}: {:?}", got.failures);
        assert!(got.mlock && got.no_dump && got.guard_pages && got.canary && got.fork_wipe);
        assert!(got.fork_detection);
        assert!(slab.fork_sentinel_page(), "WIPEONFORK sentinel works here");
        assert_eq!(got.memfd_secret, backend != Backend::LockedAnonymous);
        assert_eq!(got.is_active(ProtectionKind::MemfdSecret), got.memfd_secret);
    }
}

#[test]
fn memfd_secret_is_really_used() {
    if !super::environment::require_memfd_secret("memfd_secret_is_really_used") {
        return;
    }
    let (slab, got) = LockedSlab::allocate(page() - 16, Backend::MemfdSecret).expect("memfd");
    assert!(got.memfd_secret);
    let start = slab.address_range().start;
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let line = maps
        .lines()
        .find(|line| {
            let range = line.split_whitespace().next().unwrap_or("");
            let (lo, hi) = range.split_once('-').unwrap_or(("0", "0"));
            let lo = usize::from_str_radix(lo, 16).unwrap_or(0);
            let hi = usize::from_str_radix(hi, 16).unwrap_or(0);
            (lo..hi).contains(&start)
        })
        .expect("slab mapping");
    assert!(line.contains("secretmem"), "{line}");
    // Root reading /proc/self/mem gets EIO on secret memory.
    let mem = std::fs::File::open("/proc/self/mem").expect("mem");
    let mut byte = [0u8; 1];
    let err = std::os::unix::fs::FileExt::read_at(&mem, &mut byte, start as u64)
        .expect_err("secretmem must not be readable through /proc/PID/mem");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
}

#[test]
fn report_texts() {
    let failure = ProtectionFailure::new(ProtectionKind::Mlock, Some(libc::ENOMEM));
    assert_eq!(
        failure.to_string(),
        "mlock was not obtained (ENOMEM: Cannot allocate memory); raise RLIMIT_MEMLOCK \
         (ulimit -l, LimitMEMLOCK= in systemd) or grant CAP_IPC_LOCK"
    );
    let failure = ProtectionFailure::new(ProtectionKind::MemfdSecret, None);
    assert!(
        failure
            .to_string()
            .starts_with("memfd_secret was not obtained; boot with")
    );
    // The remedy follows the errno where it tells the causes apart: a
    // kernel without memfd_secret, or one that has it and no memlock room.
    let missing = ProtectionFailure::new(ProtectionKind::MemfdSecret, Some(libc::ENOSYS));
    assert!(
        missing.remedy().starts_with("boot with a kernel"),
        "{missing}"
    );
    assert!(!missing.remedy().contains("RLIMIT_MEMLOCK"), "{missing}");
    let refused = ProtectionFailure::new(ProtectionKind::MemfdSecret, Some(libc::EPERM));
    assert!(refused.remedy().contains("seccomp"), "{refused}");
    assert!(!refused.remedy().contains("RLIMIT_MEMLOCK"), "{refused}");
    for errno in [libc::EAGAIN, libc::ENOMEM] {
        let no_room = ProtectionFailure::new(ProtectionKind::MemfdSecret, Some(errno));
        assert!(
            no_room.remedy().contains("raise RLIMIT_MEMLOCK"),
            "{no_room}"
        );
        assert!(!no_room.remedy().contains("CONFIG_SECRETMEM"), "{no_room}");
    }
    let scratch =
        ProtectionFailure::new(ProtectionKind::Mlock, Some(libc::ENOMEM)).in_scratch_buffer();
    assert_eq!(scratch.memory, ProtectedMemory::ScratchBuffer);
    assert!(
        scratch
            .to_string()
            .starts_with("mlock was not obtained for a with() scratch buffer (ENOMEM: "),
        "{scratch}"
    );
    // A report names what it did not get, and each failure once.
    let mut report = Protections {
        backend: SlabBackend::LockedAnonymous,
        mlock: true,
        no_dump: true,
        guard_pages: true,
        canary: true,
        fork_wipe: true,
        fork_detection: true,
        memfd_secret: false,
        failures: vec![ProtectionFailure::new(
            ProtectionKind::MemfdSecret,
            Some(libc::ENOSYS),
        )],
    };
    report.mark_missing(scratch);
    report.mark_missing(scratch);
    assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
    assert!(!report.mlock);
    assert_eq!(
        report.to_string(),
        format!(
            "backend=locked_anonymous mlock=off no_dump=on guard_pages=on canary=on fork_wipe=on \
             fork_detection=on; failed: {missing}; {scratch}"
        )
    );
    assert_eq!(Backend::default(), Backend::Auto);
    if !super::environment::require_memfd_secret("report_texts") {
        return;
    }
    let (_slab, got) = LockedSlab::allocate(100, Backend::MemfdSecret).expect("allocate");
    assert_eq!(
        got.to_string(),
        "backend=memfd_secret mlock=on no_dump=on guard_pages=on canary=on fork_wipe=on \
         fork_detection=on"
    );
    let mut off = got.clone();
    off.mlock = false;
    off.fork_wipe = false;
    off.memfd_secret = false;
    assert_eq!(
        off.missing(),
        vec![ProtectionKind::Mlock, ProtectionKind::ForkWipe]
    );
}

#[test]
fn debug_output_has_no_secret_bytes() {
    let (mut slab, _) = LockedSlab::allocate(64, Backend::Auto).expect("allocate");
    slab.bytes_mut().fill(0x41);
    let text = format!("{slab:?}");
    assert!(!text.contains("65") && !text.contains("AAAA"), "{text}");
    let shared = SharedSlab::new(slab, 7u32, 2);
    assert!(!format!("{shared:?}").contains("65"));
    let (mut buf, _) = LockedBuf::new(32).expect("buf");
    buf.slice_mut(32).fill(0x41);
    assert_eq!(format!("{buf:?}"), "LockedBuf { capacity: 32, .. }");
}

/// Allocates and drops 100 memfd_secret slabs, then forces a failure at each
/// step and with absurd sizes; no descriptor and no mapping may survive.
#[test]
fn no_descriptor_or_mapping_leaks() {
    if !super::environment::require_memfd_secret("no_descriptor_or_mapping_leaks") {
        return;
    }
    let (outcome, report) = in_child(|report| {
        // Warm up the heap and the allocator's bookkeeping (after fork a
        // grown arena no longer merges with its old part in the maps).
        report.reserve(1 << 16);
        drop(LockedSlab::allocate(100, Backend::Auto));
        drop(LockedSlab::allocate(page() - 16, Backend::LockedAnonymous));
        let (fds, maps) = (count_fds(), count_maps());
        for _ in 0..100 {
            let (slab, got) = match LockedSlab::allocate(page() - 16, Backend::MemfdSecret) {
                Ok(found) => found,
                Err(_) => return 2,
            };
            if !got.memfd_secret {
                return 3;
            }
            drop(slab);
        }
        if count_fds() != fds {
            return 4;
        }
        for step in [Step::Ftruncate, Step::Reserve, Step::MapFixed, Step::Close] {
            FAIL_AT.with(|cell| cell.set(Some(step)));
            for _ in 0..10 {
                match LockedSlab::allocate(100, Backend::MemfdSecret) {
                    Err(failure) if failure.kind == ProtectionKind::MemfdSecret => {}
                    _ => return 5,
                }
                match LockedSlab::allocate(100, Backend::Auto) {
                    Ok((_, got))
                        if got.backend == SlabBackend::LockedAnonymous
                            && got
                                .failures
                                .iter()
                                .any(|f| f.kind == ProtectionKind::MemfdSecret)
                            && got.missing().is_empty() => {}
                    _ => return 6,
                }
            }
            FAIL_AT.with(|cell| cell.set(None));
        }
        // Real failures: sizes the kernel refuses at ftruncate or mmap.
        for len in [1usize << 50, 1 << 62, usize::MAX - 10] {
            match LockedSlab::allocate(len, Backend::MemfdSecret) {
                Err(failure) => report.push_str(&format!("len {len:#x}: {:?}\n", failure.errno)),
                Ok(_) => return 7,
            }
            match LockedSlab::allocate(len, Backend::Auto) {
                Err(failure) if failure.kind == ProtectionKind::Allocation => {}
                _ => return 8,
            }
        }
        if count_fds() != fds {
            return 9;
        }
        if count_maps() != maps {
            report.push_str(&format!("maps {maps} -> {}\n", count_maps()));
            return 10;
        }
        0
    });
    eprintln!("{report}");
    assert_eq!(outcome, Outcome::Exited(0), "{report}");
}

/// Flips one byte at `offset` from the start (negative: before it) or the
/// end of a fresh slab in a child, then drops the slab. Flipping (not
/// writing a constant) always changes a canary byte: a random canary's byte
/// equals any given constant one time in 256.
fn attack(backend: Backend, len: usize, at: impl Fn(&LockedSlab) -> usize) -> Outcome {
    in_child(|_| {
        let Ok((slab, _)) = LockedSlab::allocate(len, backend) else {
            return 2;
        };
        let target = at(&slab) as *mut u8;
        // SAFETY: deliberately not safe: the attack under test. The access
        // either hits a guard page (SIGSEGV) or the canary (SIGABRT on drop).
        unsafe { core::ptr::write_volatile(target, !core::ptr::read_volatile(target)) };
        drop(slab);
        0
    })
    .0
}

#[test]
fn overflow_and_underflow_hit_guard_pages() {
    let sigsegv = Outcome::Signaled(libc::SIGSEGV);
    for backend in concrete_backends("overflow_and_underflow_hit_guard_pages") {
        let len = 2 * page() - 16;
        // Control: the last and first usable bytes are fine.
        assert_eq!(
            attack(backend, len, |s| s.address_range().end - 1),
            Outcome::Exited(0)
        );
        assert_eq!(
            attack(backend, len, |s| s.address_range().start),
            Outcome::Exited(0)
        );
        // One byte past the end.
        assert_eq!(
            attack(backend, len, |s| s.address_range().end),
            sigsegv,
            "{backend:?}"
        );
        assert_eq!(
            attack(backend, 100, |s| s.address_range().end),
            sigsegv,
            "{backend:?}"
        );
        // One byte before the canary (page-filling size).
        assert_eq!(
            attack(backend, len, |s| s.address_range().start - 17),
            sigsegv,
            "{backend:?}"
        );
    }
}

#[test]
fn corrupted_canary_aborts_on_drop() {
    for backend in concrete_backends("corrupted_canary_aborts_on_drop") {
        for len in [2 * page() - 16, 100] {
            assert_eq!(
                attack(backend, len, |s| s.address_range().start - 1),
                Outcome::Signaled(libc::SIGABRT),
                "{backend:?} {len}"
            );
        }
    }
}

#[test]
fn locked_buf_guard_page() {
    let (outcome, _) = in_child(|_| {
        let Ok((mut buf, missing)) = LockedBuf::new(100) else {
            return 2;
        };
        if !missing.is_empty() {
            return 2;
        }
        let end = buf.slice_mut(100).as_mut_ptr_range().end;
        // SAFETY: deliberately not safe: the overflow under test.
        unsafe { core::ptr::write_volatile(end, 1) };
        0
    });
    assert_eq!(outcome, Outcome::Signaled(libc::SIGSEGV));
}

#[test]
fn forked_child_cannot_read_anonymous_slab() {
    let (mut slab, _) = LockedSlab::allocate(page() - 16, Backend::LockedAnonymous).expect("a");
    slab.bytes_mut().fill(0xAB);
    let (owned, _) = LockedSlab::allocate(100, Backend::LockedAnonymous).expect("b");
    let (mut buf, _) = LockedBuf::new(64).expect("buf");
    buf.slice_mut(64).fill(0xCD);
    let shared = SharedSlab::new(owned, (), 2);
    let (outcome, _) = in_child(|_| {
        if !slab.forked() || !shared.forked() {
            return 2;
        }
        if slab.bytes().iter().any(|b| *b != 0) {
            return 3;
        }
        if buf.slice_mut(64).iter().any(|b| *b != 0) {
            return 4;
        }
        // Dropping in the child leaks instead of aborting on the wiped canary.
        drop(shared);
        drop(buf);
        0
    });
    assert_eq!(outcome, Outcome::Exited(0));
    assert!(!slab.forked());
    assert!(slab.bytes().iter().all(|b| *b == 0xAB), "parent unaffected");
}

#[test]
fn forked_child_cannot_read_memfd_secret_slab() {
    if !super::environment::require_memfd_secret("forked_child_cannot_read_memfd_secret_slab") {
        return;
    }
    let (mut slab, _) = LockedSlab::allocate(page() - 16, Backend::MemfdSecret).expect("slab");
    slab.bytes_mut().fill(0xAB);
    let start = slab.address_range().start as *const u8;
    let (outcome, _) = in_child(|_| {
        // SAFETY: deliberately not safe: reading the unmapped secret in the
        // child must fault.
        i32::from(unsafe { core::ptr::read_volatile(start) })
    });
    assert_eq!(outcome, Outcome::Signaled(libc::SIGSEGV));
    let (owned, _) = LockedSlab::allocate(100, Backend::MemfdSecret).expect("owned");
    let (outcome, _) = in_child(move |_| {
        if !owned.forked() {
            return 2;
        }
        // Dropping must neither touch nor unmap the (absent) mapping.
        drop(owned);
        0
    });
    assert_eq!(outcome, Outcome::Exited(0));
    assert!(slab.bytes().iter().all(|b| *b == 0xAB), "parent unaffected");
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_IPC_LOCK: u32 = 14;

/// Drops CAP_IPC_LOCK from this (child) process and sets RLIMIT_MEMLOCK.
fn drop_ipc_lock(memlock: libc::rlim_t) -> Result<(), &'static str> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: valid header and a two-element data array, as version 3
    // requires.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err("capget");
    }
    data[0].effective &= !(1 << CAP_IPC_LOCK);
    data[0].permitted &= !(1 << CAP_IPC_LOCK);
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err("capset");
    }
    let limit = libc::rlimit {
        rlim_cur: memlock,
        rlim_max: memlock,
    };
    // SAFETY: valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        return Err("setrlimit");
    }
    let mut check = [CapData::default(); 2];
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, check.as_mut_ptr()) } != 0
        || check[0].effective & (1 << CAP_IPC_LOCK) != 0
    {
        return Err("capability still present");
    }
    Ok(())
}

/// With `replay_secret_mapping`, also replays `memfd_secret`'s mapping steps
/// over the limit (needs the system call).
fn memlock_child(
    memlock: libc::rlim_t,
    len: usize,
    replay_secret_mapping: bool,
) -> (Outcome, String) {
    in_child(|report| {
        if let Err(what) = drop_ipc_lock(memlock) {
            report.push_str(what);
            return 2;
        }
        // Grow the heap before counting mappings: the report grows as we go,
        // and after fork a grown arena no longer merges with its old part.
        report.reserve(1 << 16);
        drop(LockedSlab::allocate(len, Backend::Auto));
        let (fds, maps) = (count_fds(), count_maps());
        let Ok((slab, got)) = LockedSlab::allocate(len, Backend::LockedAnonymous) else {
            return 3;
        };
        report.push_str(&format!("anonymous: {got}; failures {:?}\n", got.failures));
        let mlock_failure = got
            .failures
            .iter()
            .find(|f| f.kind == ProtectionKind::Mlock);
        if got.mlock || mlock_failure.is_none() || got.missing() != vec![ProtectionKind::Mlock] {
            return 4;
        }
        drop(slab);
        let Ok((slab, got)) = LockedSlab::allocate(len, Backend::Auto) else {
            return 5;
        };
        report.push_str(&format!("auto: {got}; failures {:?}\n", got.failures));
        for failure in &got.failures {
            report.push_str(&format!("  {failure}\n"));
        }
        if got.backend != SlabBackend::LockedAnonymous
            || !got
                .failures
                .iter()
                .any(|f| f.kind == ProtectionKind::MemfdSecret)
            || got.mlock
        {
            return 6;
        }
        drop(slab);
        match LockedSlab::allocate(len, Backend::MemfdSecret) {
            Err(failure) if failure.kind == ProtectionKind::MemfdSecret => {
                report.push_str(&format!("required memfd_secret: {failure}\n"));
            }
            _ => return 7,
        }
        match LockedBuf::new(len) {
            Ok((_, missing)) if missing.iter().any(|f| f.kind == ProtectionKind::Mlock) => {}
            _ => return 8,
        }
        if count_fds() != fds {
            return 9;
        }
        if count_maps() != maps {
            return 10;
        }
        if !replay_secret_mapping {
            return 0;
        }
        match failed_map_fixed_keeps_reservation() {
            Ok((errno, kept)) => report.push_str(&format!(
                "MAP_FIXED failed with errno {errno}; reservation kept: {kept}\n"
            )),
            Err(what) => {
                report.push_str(what);
                return 11;
            }
        }
        0
    })
}

/// Replays the secret mapping steps with the memlock limit exceeded and
/// reports whether the failed `MAP_FIXED` left the `PROT_NONE` reservation
/// in place or a hole (which `release_after_failed_fixed` must cope with).
fn failed_map_fixed_keeps_reservation() -> Result<(i32, bool), &'static str> {
    let page = page();
    // SAFETY: test-only replay of `SecretRegion::allocate` on our own fresh
    // descriptor and reservation; every result is checked.
    unsafe {
        // Larger than any memlock limit these tests set.
        let page = 64 * page;
        let fd = libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) as libc::c_int;
        if fd < 0 || libc::ftruncate(fd, page as libc::off_t) != 0 {
            return Err("memfd_secret/ftruncate");
        }
        let base = libc::mmap(
            core::ptr::null_mut(),
            3 * page,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if base == libc::MAP_FAILED {
            return Err("reserve");
        }
        let middle = base.cast::<u8>().add(page);
        let mapped = libc::mmap(
            middle.cast(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd,
            0,
        );
        let errno = sys::last_errno();
        libc::close(fd);
        if mapped != libc::MAP_FAILED {
            return Err("MAP_FIXED unexpectedly succeeded");
        }
        // MAP_FIXED_NOREPLACE over the middle fails with EEXIST only if
        // something (our reservation) is still mapped there.
        let probe = libc::mmap(
            middle.cast(),
            page,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        let kept = probe == libc::MAP_FAILED && sys::last_errno() == libc::EEXIST;
        libc::munmap(base, 3 * page);
        Ok((errno, kept))
    }
}

#[test]
fn memlock_exhaustion_is_reported_not_fatal() {
    let replay =
        super::environment::require_memfd_secret("memlock_exhaustion_is_reported_not_fatal");
    for (memlock, len) in [(0, 100), (8192, 16 * page())] {
        let (outcome, report) = memlock_child(memlock, len, replay);
        eprintln!("RLIMIT_MEMLOCK={memlock}:\n{report}");
        assert_eq!(outcome, Outcome::Exited(0), "{report}");
    }
}

#[test]
fn shared_slab_readers_see_whole_writes() {
    let len = 4 * page() - 16;
    let (slab, _) = LockedSlab::allocate(len, Backend::Auto).expect("slab");
    let shared = SharedSlab::new(slab, 0u64, 4);
    assert_eq!(shared.stripes(), 4);
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    std::thread::scope(|scope| {
        // More readers than cores, each on its own stripe pattern; they
        // yield between reads, or on a loaded 2-core machine the writer
        // (which needs every stripe) can wait minutes for its turn.
        for _ in 0..3 {
            let (shared, done, reads) = (&shared, &done, &reads);
            scope.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    {
                        let guard = shared.read();
                        let first = guard.bytes()[0];
                        assert!(guard.bytes().iter().all(|b| *b == first), "torn read");
                        assert_eq!(*guard.meta() as u8, first, "meta and bytes disagree");
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                    std::thread::yield_now();
                }
            });
        }
        while reads.load(Ordering::Relaxed) < 100 {
            std::thread::yield_now();
        }
        for round in 1..=600u64 {
            let mut guard = shared.write();
            *guard.meta_mut() = round;
            guard.bytes_mut().fill(round as u8);
            assert_eq!(*guard.meta(), round);
            assert_eq!(guard.bytes()[len - 1], round as u8);
            if round % 200 == 0 {
                guard.slab_mut().wipe();
                *guard.meta_mut() = 0;
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert_eq!(shared.read().bytes()[0], 0);
}

#[test]
fn shared_slab_recovers_from_poison() {
    let (slab, _) = LockedSlab::allocate(32, Backend::Auto).expect("slab");
    let shared = SharedSlab::new(slab, 1u8, 3);
    let range = shared.address_range();
    std::thread::scope(|scope| {
        let result = scope
            .spawn(|| {
                let _guard = shared.write();
                panic!("poison every stripe");
            })
            .join();
        assert!(result.is_err());
    });
    assert_eq!(*shared.read().meta(), 1);
    shared.write().bytes_mut().fill(9);
    assert!(shared.read().bytes().iter().all(|b| *b == 9));
    assert_eq!(shared.address_range(), range);
    assert!(!shared.forked());
}

#[test]
fn locked_buf_basics() {
    let (mut buf, missing) = LockedBuf::new(100).expect("buf");
    assert!(missing.is_empty(), "{missing:?}");
    assert_eq!(buf.capacity(), 100);
    assert!(buf.slice_mut(100).iter().all(|b| *b == 0));
    buf.slice_mut(50).fill(7);
    assert_eq!(buf.slice_mut(50).len(), 50);
    assert_eq!(buf.slice_mut(1000).len(), 100);
    buf.wipe_prefix(40);
    assert!(buf.slice_mut(40).iter().all(|b| *b == 0));
    assert!(buf.slice_mut(50)[40..].iter().all(|b| *b == 7));
    buf.wipe();
    assert!(buf.slice_mut(100).iter().all(|b| *b == 0));
    let (empty, _) = LockedBuf::new(0).expect("empty");
    assert_eq!(empty.capacity(), 0);
    std::thread::spawn(move || drop(buf)).join().expect("send");
}

#[test]
fn boottime_is_monotonic() {
    let a = boottime_now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let b = boottime_now();
    assert!(a > std::time::Duration::ZERO);
    assert!(b >= a + std::time::Duration::from_millis(20), "{a:?} {b:?}");
}

#[test]
fn slab_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    fn check_send<T: Send>() {}
    check::<LockedSlab>();
    check::<SharedSlab<u64>>();
    check_send::<LockedBuf>();
}

/// Maps one page of a file whose path is not UTF-8 (`/tmp/…caf\xe9…/f`) at a
/// low address, so that its line in `/proc/self/smaps` precedes every
/// mapping the slab makes. Returns the mapping, or why it could not be had.
fn map_non_utf8_path_low() -> Result<(*mut libc::c_void, usize), &'static str> {
    use std::os::unix::ffi::OsStrExt as _;
    let page = page();
    let mut dir = b"/tmp/sealcache-caf\xe9-".to_vec();
    dir.extend_from_slice(sys::getpid().to_string().as_bytes());
    let dir = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&dir));
    std::fs::create_dir_all(&dir).map_err(|_| "mkdir")?;
    let path = dir.join("f");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|_| "create")?;
    file.set_len(page as u64).map_err(|_| "set_len")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let mut mapped = Err("no free low address");
    for hint in [0x1000_0000usize, 0x2000_0000, 0x4000_0000, 0x0100_0000] {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping;
        // a new read-only mapping of our own file; the result is checked.
        let raw = unsafe {
            libc::mmap(
                hint as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE,
                fd,
                0,
            )
        };
        if raw as usize == hint {
            mapped = Ok((raw, page));
            break;
        }
        if raw != libc::MAP_FAILED {
            // SAFETY: a mapping we just made elsewhere (old kernel: hint only).
            unsafe { libc::munmap(raw, page) };
        }
    }
    drop(file);
    let _removed = std::fs::remove_file(&path);
    let _removed = std::fs::remove_dir(&dir);
    mapped
}

/// A mapping whose path is not UTF-8 (a program run from a directory named
/// `caf\xe9`) listed before the slab in `/proc/self/smaps` must not hide the
/// secret mapping's `lo` flag: `mlock(2)` fails with `ENOMEM` on secret
/// memory, so that flag is the only evidence that it is locked.
#[test]
fn non_utf8_mapping_path_does_not_hide_the_secret_lock() {
    if !super::environment::require_memfd_secret(
        "non_utf8_mapping_path_does_not_hide_the_secret_lock",
    ) {
        return;
    }
    let (outcome, report) = in_child(|report| {
        let (addr, len) = match map_non_utf8_path_low() {
            Ok(found) => found,
            Err(what) => {
                report.push_str(what);
                return 2;
            }
        };
        // The setup really puts a non-UTF-8 line in smaps, below the slab.
        if std::fs::read_to_string("/proc/self/smaps").is_ok() {
            report.push_str("smaps unexpectedly valid UTF-8");
            return 3;
        }
        let (slab, got) = match LockedSlab::allocate(page() - 16, Backend::MemfdSecret) {
            Ok(found) => found,
            Err(failure) => {
                report.push_str(&failure.to_string());
                return 4;
            }
        };
        if slab.address_range().start < addr as usize {
            report.push_str("slab below the file mapping");
            return 5;
        }
        report.push_str(&format!("{got}; failures {:?}", got.failures));
        if !got.mlock || !got.missing().is_empty() || !got.failures.is_empty() {
            return 6;
        }
        drop(slab);
        // SAFETY: the file mapping made above, unreferenced.
        unsafe { libc::munmap(addr, len) };
        0
    });
    assert_eq!(outcome, Outcome::Exited(0), "{report}");
}

#[test]
fn smaps_parser_reads_bytes_not_text() {
    let smaps: &[u8] = b"55d0c0a00000-55d0c0a21000 r-xp 00000000 08:01 1234   /tmp/caf\xe9/app\n\
        Size:                132 kB\n\
        VmFlags: rd ex mr mw me dw\n\
        7f0000001000-7f0000003000 rw-s 00000000 00:01 77     /secretmem (deleted)\n\
        Size:                  8 kB\n\
        Locked:                8 kB\n\
        VmFlags: rd wr sh mr mw me ms lo dc dd\n\
        7f0000004000-7f0000005000 ---p 00000000 00:00 0 \n\
        VmFlags: mr mw me\n";
    // What the old text parser hit: reading it as lines of text fails.
    assert!(std::io::BufRead::lines(smaps).any(|line| line.is_err()));
    let lines = |text: &'static [u8]| text.split(|byte| *byte == b'\n');
    assert_eq!(
        sys::parse_vma_flags(lines(smaps), 0x7f00_0000_1000),
        Some(
            ["rd", "wr", "sh", "mr", "mw", "me", "ms", "lo", "dc", "dd"]
                .map(String::from)
                .to_vec()
        )
    );
    assert_eq!(
        sys::parse_vma_flags(lines(smaps), 0x55d0_c0a0_0000),
        Some(
            ["rd", "ex", "mr", "mw", "me", "dw"]
                .map(String::from)
                .to_vec()
        )
    );
    // No mapping starts there (inside one is not the start).
    assert_eq!(sys::parse_vma_flags(lines(smaps), 0x7f00_0000_2000), None);
    // A mapping without a VmFlags line before the next header.
    let no_flags: &[u8] = b"1000-2000 rw-p 0 0:0 0 /x\xff\nSize: 4 kB\n3000-4000 rw-p 0 0:0 0\n\
        VmFlags: lo\n";
    assert_eq!(sys::parse_vma_flags(lines(no_flags), 0x1000), None);
    assert_eq!(
        sys::parse_vma_flags(lines(no_flags), 0x3000),
        Some(vec!["lo".to_owned()])
    );
    assert_eq!(sys::parse_vma_flags(lines(b""), 0x1000), None);
}

/// Under `Backend::Auto`, a `memfd_secret` region whose lock cannot be
/// verified (as without a readable `/proc/self/smaps`) is given up for the
/// anonymous backend, which verifies its own `mlock`; a required
/// `memfd_secret` keeps the region and reports the lock missing.
#[test]
fn auto_falls_back_when_the_secret_region_misses_a_baseline_protection() {
    if !super::environment::require_memfd_secret(
        "auto_falls_back_when_the_secret_region_misses_a_baseline_protection",
    ) {
        return;
    }
    let (outcome, report) = in_child(|report| {
        report.reserve(1 << 16);
        drop(LockedSlab::allocate(100, Backend::Auto));
        let (fds, maps) = (count_fds(), count_maps());
        FAIL_AT.with(|cell| cell.set(Some(Step::Lock)));
        for _ in 0..10 {
            let Ok((slab, got)) = LockedSlab::allocate(page() - 16, Backend::MemfdSecret) else {
                return 2;
            };
            if got.backend != SlabBackend::MemfdSecret
                || got.mlock
                || got.missing() != vec![ProtectionKind::Mlock]
                || got.failures
                    != vec![ProtectionFailure::new(
                        ProtectionKind::Mlock,
                        Some(libc::ENOMEM),
                    )]
            {
                report.push_str(&format!("required: {got} {:?}\n", got.failures));
                return 3;
            }
            drop(slab);
            let Ok((mut slab, got)) = LockedSlab::allocate(page() - 16, Backend::Auto) else {
                return 4;
            };
            if got.backend != SlabBackend::LockedAnonymous
                || slab.backend() != SlabBackend::LockedAnonymous
                || got.memfd_secret
                || !got.missing().is_empty()
                || got.failures
                    != vec![ProtectionFailure::new(
                        ProtectionKind::MemfdSecret,
                        Some(libc::ENOMEM),
                    )]
            {
                report.push_str(&format!("auto: {got} {:?}\n", got.failures));
                return 5;
            }
            slab.bytes_mut().fill(7);
            drop(slab);
        }
        FAIL_AT.with(|cell| cell.set(None));
        if count_fds() != fds || count_maps() != maps {
            return 6;
        }
        // Without the fault, Auto keeps memfd_secret.
        match LockedSlab::allocate(100, Backend::Auto) {
            Ok((_, got)) if got.memfd_secret && got.failures.is_empty() => 0,
            _ => 7,
        }
    });
    assert_eq!(outcome, Outcome::Exited(0), "{report}");
}

/// Forks, runs `f` in the child (which `_exit`s with its result) and waits:
/// the child's exit code, or 100 + the signal that ended it.
fn fork_and_wait(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: called from a single-threaded forked test child; the new
    // child only runs `f` and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return 90;
    }
    if pid == 0 {
        let code = f();
        // SAFETY: ending the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        if sys::last_errno() != libc::EINTR {
            return 91;
        }
    }
    if libc::WIFSIGNALED(status) {
        100 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// A parent and its forked child can have the same process id: the init
/// (PID 1) of a PID namespace that unshares a new PID namespace and forks
/// has a child that is PID 1 there too. Dropping a locked buffer in that
/// child must still leak the wiped copy instead of handing it to memsec,
/// whose canary check would abort on the zeroed canary.
#[test]
fn fork_copy_is_recognised_when_parent_and_child_share_a_pid() {
    let (outcome, report) = in_child(|report| {
        // SAFETY: unshare only changes the namespaces of this (single-
        // threaded) child and of its future children. Without
        // CAP_SYS_ADMIN, a new user namespace grants it, where the system
        // allows unprivileged ones.
        let unshared = unsafe {
            libc::unshare(libc::CLONE_NEWPID) == 0
                || libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID) == 0
        };
        if !unshared {
            report.push_str(&format!("unshare: errno {}", sys::last_errno()));
            return 2;
        }
        fork_and_wait(|| {
            // PID 1 of the first new namespace.
            if sys::getpid() != 1 {
                return 3;
            }
            let Ok((mut buf, _)) = LockedBuf::new(64) else {
                return 4;
            };
            buf.slice_mut(64).fill(0xCD);
            // SAFETY: as above.
            if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                return 5;
            }
            fork_and_wait(move || {
                // PID 1 again, in the nested namespace: same pid as the
                // process that allocated `buf`.
                if sys::getpid() != 1 {
                    return 6;
                }
                if buf.slice_mut(64).iter().any(|b| *b != 0) {
                    return 7;
                }
                drop(buf);
                0
            })
        })
    });
    if outcome == Outcome::Exited(2) && report.starts_with("unshare") {
        let _skip = super::environment::require(
            false,
            "fork_copy_is_recognised_when_parent_and_child_share_a_pid",
            "a PID namespace (unshare(CLONE_NEWPID), as root or in a user namespace)",
        );
        return;
    }
    assert_eq!(outcome, Outcome::Exited(0), "{report}");
}

/// An underflow that writes zeros over the whole canary, in the process that
/// allocated the memory, must still abort at free: a zeroed canary is not
/// taken for a forked child's wiped copy.
#[test]
fn zeroed_canary_still_aborts_on_drop() {
    let zero_canary = |at: *mut u8| {
        for i in 1..=16 {
            // SAFETY: deliberately not safe: the underflow under test.
            unsafe { core::ptr::write_volatile(at.wrapping_sub(i), 0) };
        }
    };
    let (outcome, _) = in_child(|_| {
        let Ok((mut buf, _)) = LockedBuf::new(page() - 16) else {
            return 2;
        };
        zero_canary(buf.slice_mut(1).as_mut_ptr());
        drop(buf);
        0
    });
    assert_eq!(outcome, Outcome::Signaled(libc::SIGABRT), "LockedBuf");
    for backend in concrete_backends("zeroed_canary_still_aborts_on_drop") {
        let (outcome, _) = in_child(|_| {
            let Ok((slab, _)) = LockedSlab::allocate(100, backend) else {
                return 2;
            };
            zero_canary(slab.address_range().start as *mut u8);
            drop(slab);
            0
        });
        assert_eq!(outcome, Outcome::Signaled(libc::SIGABRT), "{backend:?}");
    }
}

/// The boot-clock fallback is anchored at the last good reading, not the
/// first: after a suspend it must not go back to before the suspend.
#[test]
fn boot_clock_fallback_never_goes_backwards() {
    use super::time::Fallback;
    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;
    let clock = Fallback::new();
    // Boot time 100 s at monotonic 100 s; a failure at monotonic 101 s.
    assert_eq!(clock.good(100 * S), 100 * S);
    let a = clock.fallback(Some(101 * S));
    assert_eq!(a, 101 * S);
    assert_eq!(clock.good(102 * S), 102 * S);
    // A 1000 s suspend: boot time 1103 s at monotonic 103 s. Anchored at
    // the first good reading (100 s at monotonic 100 s), the fallback would
    // now read 104 s.
    assert_eq!(clock.good(1103 * S), 1103 * S);
    let b = clock.fallback(Some(104 * S));
    assert!((1103 * S..=1103 * S + MS).contains(&b), "{b}");
    // Further fallback readings advance with the monotonic clock.
    let c = clock.fallback(Some(105 * S));
    assert_eq!(c, b + S);
    // A good reading is never less than an earlier fallback reading: the
    // clock waits (here by under 1 ms) for boot time to catch up.
    assert_eq!(clock.good(1104 * S), c);
    assert_eq!(clock.good(1104 * S + 2 * MS), 1104 * S + 2 * MS);
    // Without any clock it stands still, never going back.
    let d = clock.fallback(None);
    assert!(d >= 1104 * S + 2 * MS, "{d}");
    assert_eq!(clock.fallback(None), d);
    // A monotonic reading that went backwards changes nothing either.
    assert_eq!(clock.fallback(Some(0)), d);
    // Good readings within the 1 ms grain of the recorded one are covered
    // by the fallback's floor too.
    let clock = Fallback::new();
    assert_eq!(clock.good(10 * S), 10 * S);
    assert_eq!(clock.good(10 * S + MS / 2), 10 * S + MS / 2);
    assert!(clock.fallback(Some(0)) >= 10 * S + MS / 2);
}

/// `boottime_now` with its clocks failing (test hook) keeps going forward
/// and never panics; run in a child so the shared fallback state of the
/// test process is untouched.
#[test]
fn boottime_survives_failing_clocks() {
    use super::time::{CLOCK_FAULT, ClockFault};
    let (outcome, report) = in_child(|report| {
        let a = boottime_now();
        CLOCK_FAULT.with(|cell| cell.set(Some(ClockFault::Boot)));
        let b = boottime_now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let c = boottime_now();
        CLOCK_FAULT.with(|cell| cell.set(Some(ClockFault::Both)));
        let d = boottime_now();
        let e = boottime_now();
        CLOCK_FAULT.with(|cell| cell.set(None));
        let f = boottime_now();
        report.push_str(&format!("{a:?} {b:?} {c:?} {d:?} {e:?} {f:?}"));
        let forward = a <= b && b <= c && c <= d && d <= e && e <= f;
        let advanced = c >= b + std::time::Duration::from_millis(20);
        i32::from(!(forward && advanced && d == e))
    });
    assert_eq!(outcome, Outcome::Exited(0), "{report}");
}

/// The length every locked allocation is sized by (the key slab, the
/// scratch buffers of `with`): whole pages less the canary, on any page
/// size, and never shorter than asked.
#[test]
fn page_filling_lengths_fill_whole_pages_of_any_size() {
    // 4 KiB pages: at least one page less the canary.
    assert_eq!(page_filling_len(0, 4096), 4080);
    assert_eq!(page_filling_len(100, 4096), 4080);
    assert_eq!(page_filling_len(4080, 4096), 4080);
    assert_eq!(page_filling_len(4081, 4096), 2 * 4096 - 16);
    // 16 and 64 KiB pages: no slack before the canary.
    for page in [16 * 1024, 64 * 1024] {
        for len in [
            0,
            1,
            4080,
            page - 16,
            page - 15,
            3 * page,
            crate::MAX_VALUE_LEN,
        ] {
            let capacity = page_filling_len(len, page);
            assert_eq!(
                (capacity + CANARY_LEN) % page,
                0,
                "{len} bytes, page {page}"
            );
            assert!(
                capacity >= len && capacity - len < page,
                "{len} bytes, page {page}"
            );
        }
    }
}
