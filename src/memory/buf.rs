//! [`LockedBuf`]: a locked scratch buffer to decrypt into, with the same
//! verified protections as the anonymous slab backend.

use core::fmt;

use super::anon::AnonRegion;
use super::report::{ProtectionFailure, ProtectionKind, failure_of};

/// `capacity` bytes of locked, no-dump, wipe-on-fork memory between guard
/// pages. Wiped when dropped.
pub(crate) struct LockedBuf {
    region: AnonRegion,
}

// SAFETY: the buffer exclusively owns its memsec allocation; moving it to
// another thread moves that ownership, and memsec's free is thread-safe
// (it goes through the global allocator).
unsafe impl Send for LockedBuf {}

impl LockedBuf {
    /// Allocates `capacity` zeroed bytes. Also returns each baseline
    /// protection that could not be verified (mlock, no-dump, guard pages,
    /// wipe-on-fork), with its `errno` where one was reported; empty when the
    /// buffer is fully protected.
    ///
    /// # Errors
    ///
    /// [`super::ProtectionKind::Allocation`]
    /// when no memory could be had.
    pub(crate) fn new(
        capacity: usize,
    ) -> Result<(Self, Vec<ProtectionFailure>), ProtectionFailure> {
        let mut failures = Vec::new();
        let (region, got) = AnonRegion::allocate(capacity, &mut failures)?;
        let mut missing = Vec::new();
        for (kind, active) in [
            (ProtectionKind::Mlock, got.mlock),
            (ProtectionKind::NoDump, got.no_dump),
            (ProtectionKind::GuardPages, got.guard_pages),
            (ProtectionKind::ForkWipe, got.fork_wipe),
        ] {
            if !active {
                missing.push(failure_of(&failures, kind));
            }
        }
        Ok((Self { region }, missing))
    }

    /// Usable bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.region.len()
    }

    /// The first `len` bytes (`len` is clamped to the capacity).
    pub(crate) fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        let len = len.min(self.region.len());
        // SAFETY: the region is valid for reads and writes of its length,
        // `len` does not exceed it, and `&mut self` makes this the only
        // reference.
        unsafe { core::slice::from_raw_parts_mut(self.region.as_ptr(), len) }
    }

    /// Zeroes every byte (`zeroize`: a fill the optimiser cannot remove).
    #[cfg(test)]
    pub(crate) fn wipe(&mut self) {
        self.region.wipe();
    }

    /// Zeroes the first `len` bytes (`zeroize`): what a use of the
    /// buffer wrote, without paying for the whole capacity each time.
    pub(crate) fn wipe_prefix(&mut self, len: usize) {
        zeroize::Zeroize::zeroize(self.slice_mut(len));
    }
}

impl fmt::Debug for LockedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedBuf")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}
