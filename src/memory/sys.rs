//! Checked wrappers around the system calls the slab makes. Each returns the
//! `errno` of a failed call; none ignores a result.

use super::report::{ProtectionFailure, ProtectionKind};

/// Length of the canary that precedes the usable bytes (memsec's layout).
pub(crate) const CANARY_LEN: usize = 16;

/// The usable length of the fewest whole pages of `page` bytes that hold
/// `len` bytes after the canary: whole pages less the canary, so that no gap
/// lies between the leading guard page and the canary (a write one byte
/// before the canary faults) and the last usable byte touches the trailing
/// guard page. At least one page (4,080 bytes on 4 KiB pages).
pub(crate) fn page_filling_len(len: usize, page: usize) -> usize {
    len.saturating_add(CANARY_LEN)
        .div_ceil(page)
        .saturating_mul(page)
        - CANARY_LEN
}

/// The `errno` of the last failed call on this thread.
pub(super) fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The page size, checked to be a power of two large enough for the canary.
///
/// # Errors
///
/// [`ProtectionKind::Allocation`], with the `errno` if `sysconf` set one.
pub(crate) fn page_size() -> Result<usize, ProtectionFailure> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let raw = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    match usize::try_from(raw) {
        Ok(page) if page.is_power_of_two() && page >= 2 * CANARY_LEN => Ok(page),
        _ => Err(ProtectionFailure::new(
            ProtectionKind::Allocation,
            (raw < 0).then(last_errno),
        )),
    }
}

/// `value` rounded up to a multiple of `page` (a power of two), or `None` on
/// overflow.
pub(super) fn page_round(value: usize, page: usize) -> Option<usize> {
    Some(value.checked_add(page - 1)? & !(page - 1))
}

/// Checked `madvise(2)`.
///
/// # Safety
///
/// `[addr, addr + len)` must be page-aligned and belong to mappings owned by
/// the caller, so that changing their advice affects no memory anyone else
/// relies on (in particular, `MADV_DONTNEED`-like advice is not allowed here).
pub(super) unsafe fn madvise(addr: *mut u8, len: usize, advice: libc::c_int) -> Result<(), i32> {
    // SAFETY: the caller guarantees the range is its own; the advice values
    // used by this module (DONTDUMP/DODUMP, WIPEONFORK/KEEPONFORK,
    // DONTFORK) never change the contents seen by this process.
    let rc = unsafe { libc::madvise(addr.cast(), len, advice) };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// Checked `mprotect(2)`.
///
/// # Safety
///
/// `[addr, addr + len)` must be page-aligned and owned by the caller, and no
/// live Rust reference may point into a range made less accessible.
pub(super) unsafe fn mprotect(addr: *mut u8, len: usize, prot: libc::c_int) -> Result<(), i32> {
    // SAFETY: the caller guarantees ownership and that no reference covers a
    // range whose access is reduced.
    let rc = unsafe { libc::mprotect(addr.cast(), len, prot) };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// Checked `mlock(2)`.
///
/// # Safety
///
/// `[addr, addr + len)` must be owned by the caller.
pub(super) unsafe fn mlock(addr: *mut u8, len: usize) -> Result<(), i32> {
    // SAFETY: locking pages never changes their contents; the caller owns
    // the range.
    let rc = unsafe { libc::mlock(addr.cast(), len) };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// Checked `munlock(2)`.
///
/// # Safety
///
/// `[addr, addr + len)` must be owned by the caller (unlocking someone
/// else's pages would silently weaken their protection).
pub(super) unsafe fn munlock(addr: *mut u8, len: usize) -> Result<(), i32> {
    // SAFETY: unlocking pages never changes their contents; the caller owns
    // the range.
    let rc = unsafe { libc::munlock(addr.cast(), len) };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// Checked `munmap(2)`.
///
/// # Safety
///
/// `[addr, addr + len)` must be a mapping owned by the caller, and no live
/// reference may point into it.
pub(super) unsafe fn munmap(addr: *mut u8, len: usize) -> Result<(), i32> {
    // SAFETY: the caller owns the mapping and holds no reference into it.
    let rc = unsafe { libc::munmap(addr.cast(), len) };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// Fills `buf` from the kernel's random number generator (`getrandom(2)`),
/// retrying on `EINTR` and short reads.
pub(super) fn fill_random(buf: &mut [u8]) -> Result<(), i32> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) => {
                let errno = last_errno();
                if errno != libc::EINTR {
                    return Err(errno);
                }
            }
        }
    }
    Ok(())
}

/// Constant-time comparison with volatile reads of `len` bytes at `a` with
/// `b`.
///
/// # Safety
///
/// `a` must be valid for reads of `b.len()` bytes.
pub(super) unsafe fn volatile_eq(a: *const u8, b: &[u8]) -> bool {
    let mut diff = 0u8;
    for (i, expected) in b.iter().enumerate() {
        // SAFETY: `a + i` is within the `b.len()` readable bytes at `a`.
        diff |= unsafe { core::ptr::read_volatile(a.add(i)) } ^ expected;
    }
    diff == 0
}

/// The current process id.
pub(super) fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// The kernel's `VmFlags` for the mapping starting at `start`, read from
/// `/proc/self/smaps` (`None` if `/proc` is unavailable or no mapping
/// starts there). Two-letter codes: `lo` locked, `dd` no-dump, `dc` do not
/// copy on fork, `wf` wipe on fork.
pub(super) fn vma_flags(start: usize) -> Option<Vec<String>> {
    use std::io::BufRead as _;
    let file = std::fs::File::open("/proc/self/smaps").ok()?;
    // A read error ends the lines: the flags are then unknown (`None`).
    let lines = std::io::BufReader::new(file)
        .split(b'\n')
        .map_while(Result::ok);
    parse_vma_flags(lines, start)
}

/// The `VmFlags` of the mapping starting at `start`, given the lines of an
/// `smaps` file. Lines are bytes, not text: a header line ends with the
/// mapping's path, which is raw bytes (a program run from a directory named
/// `caf\xe9` has a non-UTF-8 one), so only the fields read here (the
/// address range and the flags, both ASCII) are decoded.
pub(super) fn parse_vma_flags<L: AsRef<[u8]>>(
    lines: impl IntoIterator<Item = L>,
    start: usize,
) -> Option<Vec<String>> {
    let mut in_vma = false;
    for line in lines {
        let line = line.as_ref();
        if let Some(lo) = header_start(line) {
            in_vma = lo == start;
            continue;
        }
        if !in_vma {
            continue;
        }
        if let Some(flags) = line.strip_prefix(b"VmFlags:") {
            return Some(
                flags
                    .split(u8::is_ascii_whitespace)
                    .filter(|flag| !flag.is_empty())
                    .map(|flag| String::from_utf8_lossy(flag).into_owned())
                    .collect(),
            );
        }
    }
    None
}

/// The start address of a mapping header line (`lo-hi perms offset dev
/// inode [path]`, both addresses in hex), or `None` for any other line.
fn header_start(line: &[u8]) -> Option<usize> {
    let first = line.split(u8::is_ascii_whitespace).next()?;
    let dash = first.iter().position(|byte| *byte == b'-')?;
    let hex = |digits: &[u8]| {
        let digits = core::str::from_utf8(digits).ok()?;
        usize::from_str_radix(digits, 16).ok()
    };
    let lo = hex(&first[..dash])?;
    hex(&first[dash + 1..])?;
    Some(lo)
}
