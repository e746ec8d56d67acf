//! Locked anonymous memory from memsec, with every protection verified.
//!
//! memsec 0.7.0 (pinned exactly in `Cargo.toml`, since this module relies on
//! its internal layout) lays an allocation out as `[size page (read-only) |
//! guard page | unprotected pages: slack, 16-byte canary, data right-aligned
//! | guard page]`, obtained from `std::alloc` with page alignment (so
//! possibly from the glibc heap). It ignores the results of its `mlock`,
//! `madvise` and `mprotect` calls; this module repeats each call and checks
//! it, adds `MADV_WIPEONFORK` on the whole allocation (so that in a forked
//! child the size word, too, reads as zero: the proof of a wiped copy), and
//! undoes its advice before the memory goes back to the heap.

use core::ptr::NonNull;

use super::report::{ProtectionFailure, ProtectionKind};
use super::sys::{self, CANARY_LEN};

/// The protections obtained for an [`AnonRegion`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct AnonProtections {
    pub(super) mlock: bool,
    pub(super) no_dump: bool,
    pub(super) guard_pages: bool,
    pub(super) fork_wipe: bool,
}

/// One memsec allocation of `len` usable bytes.
pub(super) struct AnonRegion {
    /// First usable byte (memsec's user pointer).
    user: NonNull<u8>,
    /// Usable length.
    len: usize,
    /// Start of memsec's allocation (the size page).
    base: *mut u8,
    /// Whole allocation length: size page, two guard pages, unprotected pages.
    total_len: usize,
    /// Start and length of the unprotected pages (canary and data).
    unprotected: *mut u8,
    unprotected_len: usize,
    page: usize,
    /// Which advice/lock we applied and must undo (`wipe_on_fork`: on the
    /// whole allocation).
    locked: bool,
    dont_dump: bool,
    wipe_on_fork: bool,
}

impl AnonRegion {
    /// Allocates `len` usable bytes, zeroed, and verifies each protection.
    /// Protections not obtained are pushed to `failures`.
    ///
    /// # Errors
    ///
    /// [`ProtectionKind::Allocation`] when no memory could be had.
    pub(super) fn allocate(
        len: usize,
        failures: &mut Vec<ProtectionFailure>,
    ) -> Result<(Self, AnonProtections), ProtectionFailure> {
        let too_big = ProtectionFailure::new(ProtectionKind::Allocation, Some(libc::ENOMEM));
        let page = sys::page_size()?;
        let unprotected_len = len
            .checked_add(CANARY_LEN)
            .and_then(|n| sys::page_round(n, page))
            .ok_or(too_big)?;
        let total_len = unprotected_len.checked_add(3 * page).ok_or(too_big)?;
        // memsec builds a `Layout` unchecked: its size must not exceed
        // isize::MAX once rounded to the page alignment.
        if total_len > (isize::MAX as usize) - page {
            return Err(too_big);
        }
        // SAFETY: malloc_sized has no caller preconditions beyond a size it
        // can lay out, checked just above; its result is checked.
        let Some(slice) = (unsafe { memsec::malloc_sized(len) }) else {
            return Err(too_big);
        };
        let user = slice.cast::<u8>();
        let canary = (user.as_ptr() as usize) - CANARY_LEN;
        let unprotected_addr = canary & !(page - 1);
        let unprotected = user
            .as_ptr()
            .wrapping_sub(user.as_ptr() as usize - unprotected_addr);
        let base = unprotected.wrapping_sub(2 * page);
        // SAFETY: memsec wrote the unprotected size at `base` (its size page,
        // readable) when its layout is the one described above; we verify
        // that before relying on any other derived address.
        let recorded = unsafe { core::ptr::read_unaligned(base.cast::<usize>()) };
        if recorded != unprotected_len
            || unprotected_addr + unprotected_len - len != user.as_ptr() as usize
        {
            // Not the layout we know: do not touch it beyond freeing.
            // SAFETY: `user` came from memsec::malloc_sized and is freed once.
            unsafe { memsec::free(user) };
            return Err(ProtectionFailure::new(ProtectionKind::Allocation, None));
        }
        let mut region = Self {
            user,
            len,
            base,
            total_len,
            unprotected,
            unprotected_len,
            page,
            locked: false,
            dont_dump: false,
            wipe_on_fork: false,
        };
        let protections = region.protect(failures);
        region.wipe();
        Ok((region, protections))
    }

    /// Applies and verifies every protection.
    fn protect(&mut self, failures: &mut Vec<ProtectionFailure>) -> AnonProtections {
        let page = self.page;
        let mut record = |kind, result: Result<(), i32>| match result {
            Ok(()) => true,
            Err(errno) => {
                failures.push(ProtectionFailure::new(kind, Some(errno)));
                false
            }
        };
        let leading_guard = self.base.wrapping_add(page);
        let trailing_guard = self.unprotected.wrapping_add(self.unprotected_len);
        // SAFETY: both guard pages are whole pages of our memsec allocation
        // that no reference points into.
        let guard_pages =
            unsafe { sys::mprotect(leading_guard, page, libc::PROT_NONE) }.and_then(|()| {
                // SAFETY: as above, for the trailing guard page.
                unsafe { sys::mprotect(trailing_guard, page, libc::PROT_NONE) }
            });
        let guard_pages = record(ProtectionKind::GuardPages, guard_pages);
        // SAFETY: the unprotected pages are whole pages owned by this
        // allocation (page-aligned start and length).
        let mlock = unsafe { sys::mlock(self.unprotected, self.unprotected_len) };
        self.locked = record(ProtectionKind::Mlock, mlock);
        // SAFETY: as above; DONTDUMP changes nothing in this process.
        let no_dump =
            unsafe { sys::madvise(self.unprotected, self.unprotected_len, libc::MADV_DONTDUMP) };
        self.dont_dump = record(ProtectionKind::NoDump, no_dump);
        // The whole allocation, size page included: in a forked child the
        // size word then reads as zero (see `is_wiped_fork_copy`). Its
        // bounds are already mapping boundaries (the pages on either side
        // hold the heap's read-write chunk headers; its first page is
        // read-only and its last PROT_NONE), so the call splits no mapping.
        // SAFETY: `[base, base + total_len)` is our whole page-aligned
        // memsec allocation; WIPEONFORK changes nothing in this process.
        let wipe = unsafe { sys::madvise(self.base, self.total_len, libc::MADV_WIPEONFORK) };
        self.wipe_on_fork = record(ProtectionKind::ForkWipe, wipe);
        AnonProtections {
            mlock: self.locked,
            no_dump: self.dont_dump,
            guard_pages,
            fork_wipe: self.wipe_on_fork,
        }
    }

    pub(super) fn as_ptr(&self) -> *mut u8 {
        self.user.as_ptr()
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Zeroes the usable bytes (`zeroize`: a fill the optimiser cannot remove).
    pub(super) fn wipe(&mut self) {
        // SAFETY: `user` is valid for reads and writes of `len` bytes and
        // `&mut self` guarantees no other reference to them exists.
        let bytes = unsafe { core::slice::from_raw_parts_mut(self.user.as_ptr(), self.len) };
        zeroize::Zeroize::zeroize(bytes);
    }

    /// Whether this is a forked child's copy of the region that the kernel
    /// wiped (`MADV_WIPEONFORK` on the whole allocation): memsec's size word
    /// reads as zero. memsec::free must not see such a copy: it would abort
    /// on the zeroed canary (and size the allocation from the zero word).
    ///
    /// In the process that made the region the word holds the nonzero
    /// unprotected length (checked at allocation) on a read-only page, so
    /// no stray write can zero it (it faults): only the kernel's fork wipe
    /// does. This needs no process id, which PID namespaces can make equal
    /// in parent and child (the init of a namespace that unshares
    /// `CLONE_NEWPID` and forks has a child that is PID 1 too). A zeroed
    /// canary alone would not be proof: an underflow that zeroes the canary
    /// in the allocating process must still make memsec abort. One read, no
    /// system call.
    fn is_wiped_fork_copy(&self) -> bool {
        // SAFETY: `base` is memsec's size page: page-aligned (so aligned for
        // `usize`) and readable for the region's life, here and in a forked
        // child (a wiped copy reads as zeros).
        let size = unsafe { core::ptr::read_volatile(self.base.cast::<usize>()) };
        size == 0
    }
}

impl Drop for AnonRegion {
    fn drop(&mut self) {
        if self.is_wiped_fork_copy() {
            // Leak: the child's copy holds no secret (it was wiped) and its
            // zeroed canary would abort memsec::free.
            return;
        }
        self.wipe();
        let mut restored = true;
        if self.wipe_on_fork {
            // SAFETY: our own whole allocation; undoing the advice before it
            // returns to the heap.
            restored &=
                unsafe { sys::madvise(self.base, self.total_len, libc::MADV_KEEPONFORK) }.is_ok();
        }
        if self.dont_dump {
            // SAFETY: as above.
            restored &=
                unsafe { sys::madvise(self.unprotected, self.unprotected_len, libc::MADV_DODUMP) }
                    .is_ok();
        }
        if self.locked {
            // SAFETY: our own unprotected pages.
            restored &= unsafe { sys::munlock(self.unprotected, self.unprotected_len) }.is_ok();
        }
        // memsec::free makes the whole allocation read-write again but
        // ignores the result; check it here so that no PROT_NONE page ever
        // goes back to the heap.
        // SAFETY: the whole allocation is ours; no reference points into it
        // and we only widen access.
        restored &= unsafe {
            sys::mprotect(
                self.base,
                self.total_len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        }
        .is_ok();
        if !restored {
            // The memory's state is unknown: leaking is safer than handing
            // pages with odd advice or protection to other heap users.
            return;
        }
        // SAFETY: `user` came from memsec::malloc_sized, is freed exactly
        // once, and no reference into it survives. memsec checks the canary
        // and aborts the process if an overflow corrupted it.
        unsafe { memsec::free(self.user) };
    }
}
