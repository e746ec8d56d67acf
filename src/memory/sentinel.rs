//! The fork sentinel: one private anonymous page advised `MADV_WIPEONFORK`
//! holding a nonzero marker. In a child created by `fork(2)` the kernel hands
//! the child a zero page instead, so the marker reads as zero. Where the
//! advice is unsupported (Linux < 4.14) or the page cannot be mapped, the
//! sentinel compares `getpid()` with the process id recorded at creation.
//!
//! The page is the primary detector because process ids are only unique
//! within a PID namespace: the init (PID 1) of a namespace that unshares
//! `CLONE_NEWPID` and then forks has a child that is PID 1 in the new
//! namespace, so the fallback does not see that fork. Only the fallback has
//! this limit (and on kernels without `MADV_WIPEONFORK` the anonymous slab
//! is not wiped in a child either: `fork_wipe` is reported off).

use core::ptr::NonNull;

use super::sys;

/// Nonzero marker stored in the sentinel page.
const MARKER: u64 = 0x5EA1_CAC4_E5E1_1F0B;

pub(super) struct ForkSentinel {
    /// The sentinel page, when it is mapped *and* advised `MADV_WIPEONFORK`.
    page: Option<NonNull<u64>>,
    /// The sentinel mapping to unmap on drop (may exist without the advice).
    mapping: Option<(NonNull<u8>, usize)>,
    /// The process id at creation (the fallback detector).
    pid: libc::pid_t,
}

impl ForkSentinel {
    /// Creates the sentinel; never fails (falls back to the pid check).
    pub(super) fn new(page_size: usize) -> Self {
        let pid = sys::getpid();
        // SAFETY: an anonymous private mapping at a kernel-chosen address
        // touches no existing memory; the result is checked below.
        let raw = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Self {
                page: None,
                mapping: None,
                pid,
            };
        }
        let Some(base) = NonNull::new(raw.cast::<u8>()) else {
            return Self {
                page: None,
                mapping: None,
                pid,
            };
        };
        let marker = base.cast::<u64>();
        // SAFETY: `base` is a fresh, page-aligned (hence u64-aligned),
        // writable mapping of `page_size >= 8` bytes owned by us.
        unsafe { core::ptr::write_volatile(marker.as_ptr(), MARKER) };
        // SAFETY: the range is the mapping just created and owned by us;
        // WIPEONFORK changes nothing in this process.
        let advised = unsafe { sys::madvise(base.as_ptr(), page_size, libc::MADV_WIPEONFORK) };
        Self {
            page: advised.is_ok().then_some(marker),
            mapping: Some((base, page_size)),
            pid,
        }
    }

    /// Whether the current process is a fork of the one that created the
    /// sentinel.
    pub(super) fn forked(&self) -> bool {
        match self.page {
            // SAFETY: the sentinel page stays mapped (readable and aligned)
            // until `self` is dropped; a wiped page reads as zero.
            Some(marker) => (unsafe { core::ptr::read_volatile(marker.as_ptr()) }) != MARKER,
            None => sys::getpid() != self.pid,
        }
    }

    #[cfg(test)]
    /// Whether the sentinel page works (`false`: the pid fallback is used).
    pub(super) fn uses_wipe_on_fork(&self) -> bool {
        self.page.is_some()
    }
}

impl Drop for ForkSentinel {
    fn drop(&mut self) {
        if let Some((base, len)) = self.mapping {
            // SAFETY: the mapping is ours (a child inherits it, wiped or
            // not, so unmapping there is also fine) and no reference into it
            // outlives this call. A failure leaves one page mapped: there is
            // nothing safer to do in `drop`.
            let _unmapped = unsafe { sys::munmap(base.as_ptr(), len) };
        }
    }
}
