//! The `memfd_secret(2)` backend (Linux >= 5.14, `CONFIG_SECRETMEM`).
//!
//! Layout: one anonymous `PROT_NONE` reservation `[guard | data pages |
//! guard]`, with the secret memory file mapped `MAP_SHARED | MAP_FIXED` over
//! the data pages. The data pages hold some slack, then a 16-byte random
//! canary, then the usable bytes right-aligned against the trailing guard
//! page. The file descriptor is closed as soon as the mapping exists (the
//! mapping keeps the memory alive) and on every failure path.
//!
//! Secret memory is removed from the kernel's direct map: root reading
//! `/proc/PID/mem` gets `EIO`, and core dumps skip it.

use core::ptr::NonNull;

use super::report::{ProtectionFailure, ProtectionKind};
use super::sys::{self, CANARY_LEN};

/// The protections obtained for a [`SecretRegion`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SecretProtections {
    pub(super) mlock: bool,
    pub(super) no_dump: bool,
    pub(super) canary: bool,
    pub(super) fork_wipe: bool,
}

/// Steps of [`SecretRegion::allocate`] at which tests inject a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Ftruncate,
    Reserve,
    MapFixed,
    Close,
    /// Not a failed allocation: the mapping's lock cannot be verified
    /// (as when `/proc/self/smaps` is unreadable).
    Lock,
}

#[cfg(test)]
thread_local! {
    /// The step at which allocations on this thread fail (test hook).
    pub(super) static FAIL_AT: core::cell::Cell<Option<Step>> =
        const { core::cell::Cell::new(None) };
}

/// Whether the test hook asks `step` to fail (always `false` outside tests).
#[inline(always)]
fn injected(step: Step) -> bool {
    #[cfg(test)]
    {
        FAIL_AT.with(|cell| cell.get() == Some(step))
    }
    #[cfg(not(test))]
    {
        let _ = step;
        false
    }
}

/// An owned secret memory file descriptor, closed on drop.
struct SecretFd(libc::c_int);

impl SecretFd {
    /// Closes the descriptor and reports the result.
    fn close(self) -> Result<(), i32> {
        let fd = self.0;
        core::mem::forget(self);
        // SAFETY: `fd` is a descriptor we opened and own; it is closed once
        // (`forget` prevents the second close in `Drop`).
        let rc = unsafe { libc::close(fd) };
        // On Linux the descriptor is released even when close fails.
        if rc != 0 {
            return Err(sys::last_errno());
        }
        if injected(Step::Close) {
            return Err(libc::EIO);
        }
        Ok(())
    }
}

impl Drop for SecretFd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it exactly once. On Linux
        // it is released even if close reports an error, so there is no
        // better action than ignoring that error in a drop.
        let _closed = unsafe { libc::close(self.0) };
    }
}

/// A reserved address range, unmapped on drop unless released.
struct Reservation {
    base: NonNull<u8>,
    len: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: the range is our own reservation (the `MAP_FIXED` mapping,
        // if any, replaced part of it and is ours too); nothing references
        // it. A failure leaves address space mapped `PROT_NONE`, which is
        // harmless.
        let _unmapped = unsafe { sys::munmap(self.base.as_ptr(), self.len) };
    }
}

/// Releases a reservation `[guard | middle | guard]` after a failed
/// `MAP_FIXED` over its middle.
///
/// A failed `MAP_FIXED` may leave a hole where the middle was (Linux 6.18
/// does when the memlock check refuses a secret mapping), and another thread
/// may map something into that hole at any moment, so unmapping the whole
/// range could destroy a stranger's mapping. Instead, reclaim the middle
/// with `MAP_FIXED_NOREPLACE`: if that lands exactly there, the whole range
/// is ours again and is unmapped; otherwise (something is mapped there: our
/// reservation on kernels that restore it, or a stranger's mapping) only the
/// two guard pages, which are certainly ours, are unmapped and the middle is
/// left alone (at worst a leaked `PROT_NONE` reservation).
fn release_after_failed_fixed(base: NonNull<u8>, page: usize, middle_len: usize) {
    let middle = base.as_ptr().wrapping_add(page);
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; a new
    // mapping touches no existing memory. The result is checked.
    let probe = unsafe {
        libc::mmap(
            middle.cast(),
            middle_len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_NORESERVE
                | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    let total = middle_len + 2 * page;
    if probe.cast::<u8>() == middle {
        // SAFETY: the whole range is our reservation again; unreferenced.
        let _unmapped = unsafe { sys::munmap(base.as_ptr(), total) };
        return;
    }
    if probe != libc::MAP_FAILED {
        // A kernel without MAP_FIXED_NOREPLACE (< 4.17) took the address as
        // a hint and mapped elsewhere: that new mapping is ours to undo.
        // SAFETY: the mapping just created by us, unreferenced.
        let _unmapped = unsafe { sys::munmap(probe.cast(), middle_len) };
    }
    // SAFETY: the guard pages were not part of the failed MAP_FIXED range,
    // so they are still our reservation; unreferenced. Failures leave
    // PROT_NONE address space mapped, which is harmless.
    unsafe {
        let _leading = sys::munmap(base.as_ptr(), page);
        let _trailing = sys::munmap(middle.wrapping_add(middle_len), page);
    }
}

/// One `memfd_secret` mapping of `len` usable bytes.
pub(super) struct SecretRegion {
    /// The whole reservation: guard, data pages, guard.
    reservation: NonNull<u8>,
    total_len: usize,
    /// The data pages (canary and usable bytes).
    data_pages: *mut u8,
    data_len: usize,
    /// First usable byte.
    user: NonNull<u8>,
    len: usize,
    /// The canary written before the usable bytes, when getrandom worked.
    canary: Option<[u8; CANARY_LEN]>,
    /// Whether our mlock succeeded (undone on drop).
    locked: bool,
}

impl SecretRegion {
    /// Maps `len` usable (zeroed) bytes of secret memory. Protections not
    /// obtained are pushed to `failures`.
    ///
    /// # Errors
    ///
    /// [`ProtectionKind::MemfdSecret`] with the `errno` of the step that
    /// failed (`ENOSYS` when the kernel lacks the call, `EAGAIN`/`ENOMEM`
    /// for memlock limits, ...). No descriptor or mapping survives an error.
    pub(super) fn allocate(
        len: usize,
        failures: &mut Vec<ProtectionFailure>,
    ) -> Result<(Self, SecretProtections), ProtectionFailure> {
        let fail = |errno| ProtectionFailure::new(ProtectionKind::MemfdSecret, Some(errno));
        let page = sys::page_size()?;
        let data_len = len
            .checked_add(CANARY_LEN)
            .and_then(|n| sys::page_round(n, page))
            .ok_or(fail(libc::ENOMEM))?;
        let total_len = data_len.checked_add(2 * page).ok_or(fail(libc::ENOMEM))?;
        let file_len = libc::off_t::try_from(data_len).map_err(|_| fail(libc::EFBIG))?;

        // SAFETY: memfd_secret takes only a flags argument and returns a new
        // descriptor or -1; the result is checked.
        let raw = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) };
        let fd = match libc::c_int::try_from(raw) {
            Ok(fd) if fd >= 0 => SecretFd(fd),
            _ => return Err(fail(sys::last_errno())),
        };

        if injected(Step::Ftruncate) {
            return Err(fail(libc::EIO));
        }
        // SAFETY: `fd` is our open descriptor; ftruncate has no memory
        // effects.
        if unsafe { libc::ftruncate(fd.0, file_len) } != 0 {
            return Err(fail(sys::last_errno()));
        }

        if injected(Step::Reserve) {
            return Err(fail(libc::ENOMEM));
        }
        // SAFETY: a new anonymous PROT_NONE mapping at a kernel-chosen
        // address touches no existing memory; the result is checked.
        let raw = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                total_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(fail(sys::last_errno()));
        }
        let Some(base) = NonNull::new(raw.cast::<u8>()) else {
            return Err(fail(libc::ENOMEM));
        };
        let reservation = Reservation {
            base,
            len: total_len,
        };
        let data_pages = base.as_ptr().wrapping_add(page);

        if injected(Step::MapFixed) {
            // Mimic what Linux 6.18 does when the secret mapping is refused:
            // the replaced part of the reservation is already gone.
            // SAFETY: the middle of our own reservation, unreferenced.
            let _hole = unsafe { sys::munmap(data_pages, data_len) };
            core::mem::forget(reservation);
            release_after_failed_fixed(base, page, data_len);
            return Err(fail(libc::EAGAIN));
        }
        // SAFETY: `MAP_FIXED` replaces only the middle of our own
        // reservation, which nothing references.
        let mapped = unsafe {
            libc::mmap(
                data_pages.cast(),
                data_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.0,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            let errno = sys::last_errno();
            core::mem::forget(reservation);
            release_after_failed_fixed(base, page, data_len);
            return Err(fail(errno));
        }
        if mapped.cast::<u8>() != data_pages {
            return Err(fail(libc::EINVAL));
        }
        // The mapping keeps the memory alive; the descriptor is not needed.
        fd.close().map_err(fail)?;

        // Everything is mapped: from here on failures are reported, not
        // fatal, and the region's drop cleans up.
        core::mem::forget(reservation);
        let user_addr = data_pages.wrapping_add(data_len - len);
        let Some(user) = NonNull::new(user_addr) else {
            return Err(fail(libc::EINVAL));
        };
        // Fault every page in now, so the memory is really obtained (and
        // charged) at allocation rather than on first use: secret pages
        // cannot be pinned by MAP_POPULATE or mlock, so read one byte of
        // each page (a read fault allocates the page).
        for offset in (0..data_len).step_by(page) {
            // SAFETY: `offset < data_len`, so the byte lies inside our
            // readable data pages.
            let _byte = unsafe { core::ptr::read_volatile(data_pages.wrapping_add(offset)) };
        }
        let mut region = Self {
            reservation: base,
            total_len,
            data_pages,
            data_len,
            user,
            len,
            canary: None,
            locked: false,
        };
        let protections = region.protect(failures);
        Ok((region, protections))
    }

    /// Writes the canary and applies and verifies the other protections.
    fn protect(&mut self, failures: &mut Vec<ProtectionFailure>) -> SecretProtections {
        let mut record = |kind, result: Result<(), i32>| match result {
            Ok(()) => true,
            Err(errno) => {
                failures.push(ProtectionFailure::new(kind, Some(errno)));
                false
            }
        };
        let mut canary = [0u8; CANARY_LEN];
        let canary_ok = record(ProtectionKind::Canary, sys::fill_random(&mut canary));
        if canary_ok {
            let at = self.user.as_ptr().wrapping_sub(CANARY_LEN);
            // SAFETY: the canary slot is the 16 bytes before the usable bytes
            // inside our writable data pages; `canary` is a distinct local.
            unsafe { core::ptr::copy_nonoverlapping(canary.as_ptr(), at, CANARY_LEN) };
            self.canary = Some(canary);
        }
        // SAFETY: the data pages are our own mapping; DONTFORK only affects
        // future children.
        let fork_wipe =
            unsafe { sys::madvise(self.data_pages, self.data_len, libc::MADV_DONTFORK) };
        let fork_wipe = record(ProtectionKind::ForkWipe, fork_wipe);
        // SAFETY: as above; DONTDUMP changes nothing in this process.
        let no_dump = unsafe { sys::madvise(self.data_pages, self.data_len, libc::MADV_DONTDUMP) };
        let no_dump = record(ProtectionKind::NoDump, no_dump);
        // Secret memory is locked by the kernel itself (the mapping is
        // VM_LOCKED and its pages unevictable). mlock(2) on it is refused
        // with ENOMEM on current kernels (mlock skips secretmem mappings and
        // the populate step cannot pin secret pages), so on failure verify
        // the lock through the kernel's own report of the mapping's flags.
        // SAFETY: our own mapping.
        let mlock = match unsafe { sys::mlock(self.data_pages, self.data_len) } {
            _ if injected(Step::Lock) => Err(libc::ENOMEM),
            Ok(()) => {
                self.locked = true;
                Ok(())
            }
            Err(errno) => match sys::vma_flags(self.data_pages as usize) {
                Some(flags) if flags.iter().any(|flag| flag == "lo") => Ok(()),
                _ => Err(errno),
            },
        };
        let mlock = record(ProtectionKind::Mlock, mlock);
        SecretProtections {
            mlock,
            no_dump,
            canary: canary_ok,
            fork_wipe,
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
}

impl Drop for SecretRegion {
    /// Wipes, checks the canary (aborting the process if an overflow
    /// corrupted it, as memsec does), and unmaps. Must not run in a forked
    /// child: the owner checks that first.
    fn drop(&mut self) {
        self.wipe();
        if let Some(expected) = self.canary {
            let at = self.user.as_ptr().wrapping_sub(CANARY_LEN);
            // SAFETY: the canary slot lies inside our readable data pages.
            if !unsafe { sys::volatile_eq(at, &expected) } {
                std::process::abort();
            }
        }
        if self.locked {
            // SAFETY: our own mapping. A failure is harmless: munmap below
            // drops the lock with the mapping.
            let _unlocked = unsafe { sys::munlock(self.data_pages, self.data_len) };
        }
        // SAFETY: the whole reservation (guards and the secret mapping) is
        // ours and nothing references it any more. If munmap fails the
        // memory stays mapped (leaked), which is the safest outcome.
        let _unmapped = unsafe { sys::munmap(self.reservation.as_ptr(), self.total_len) };
    }
}
