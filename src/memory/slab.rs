//! [`LockedSlab`]: the one allocation that holds every epoch key, on the best
//! backend available, with a fork sentinel and a verified protection report.

use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::Range;

use super::anon::AnonRegion;
use super::report::{Backend, ProtectionFailure, ProtectionKind, Protections, SlabBackend};
use super::secret_mem::{SecretProtections, SecretRegion};
use super::sentinel::ForkSentinel;
use super::sys;

enum Region {
    Secret(SecretRegion),
    Anon(AnonRegion),
}

/// `len` usable bytes of locked memory for keys.
///
/// The bytes start zeroed. They are wiped when the slab is dropped; in a
/// forked child the slab leaks its memory instead of touching it (the child
/// cannot read it: it is unmapped or wiped there). Callers must check
/// [`forked`](Self::forked) before reading keys in a process that may fork.
pub(crate) struct LockedSlab {
    region: ManuallyDrop<Region>,
    sentinel: ForkSentinel,
}

// SAFETY: the slab exclusively owns its mapping (no other handle to it
// exists), so moving it to another thread moves that ownership; the fork
// sentinel is likewise exclusively owned and only read.
unsafe impl Send for LockedSlab {}
// SAFETY: `&LockedSlab` only gives shared reads of the bytes (`bytes`,
// `len`, `address_range`, `forked`); every mutation requires `&mut`.
unsafe impl Sync for LockedSlab {}

/// The report for a `memfd_secret` region (failures filled in later).
fn secret((region, got): (SecretRegion, SecretProtections)) -> (Region, Protections) {
    (
        Region::Secret(region),
        Protections {
            backend: SlabBackend::MemfdSecret,
            mlock: got.mlock,
            no_dump: got.no_dump,
            guard_pages: true,
            canary: got.canary,
            fork_wipe: got.fork_wipe,
            fork_detection: true,
            memfd_secret: true,
            failures: Vec::new(),
        },
    )
}

/// Allocates an anonymous region; its report's failures are pushed to
/// `failures` (and filled in later).
fn anonymous(
    len: usize,
    failures: &mut Vec<ProtectionFailure>,
) -> Result<(Region, Protections), ProtectionFailure> {
    let (region, got) = AnonRegion::allocate(len, failures)?;
    Ok((
        Region::Anon(region),
        Protections {
            backend: SlabBackend::LockedAnonymous,
            mlock: got.mlock,
            no_dump: got.no_dump,
            guard_pages: got.guard_pages,
            canary: true,
            fork_wipe: got.fork_wipe,
            fork_detection: true,
            memfd_secret: false,
            failures: Vec::new(),
        },
    ))
}

/// [`Backend::Auto`] got a `memfd_secret` region that misses a baseline
/// protection the anonymous backend verifies itself (mlock, no-dump, fork
/// wipe; in practice a lock that cannot be verified because
/// `/proc/self/smaps` is unreadable). Tries the anonymous backend and keeps
/// whichever region misses fewer baseline protections (the secret one on a
/// tie, or if no anonymous memory can be had). On a switch, the secret
/// attempt's failures (all of `failures` so far) are replaced by one
/// [`ProtectionKind::MemfdSecret`] failure carrying the `errno` of the
/// first, so that every other failure describes the memory in use. Both
/// regions exist while they are compared, so under a memlock limit that fits
/// only one, the anonymous region misses its lock and the secret one stays.
///
/// Not tried when the secret region lacks its canary: `getrandom(2)` failed
/// then, and memsec's one-time initialisation unwraps its own random read
/// (`getrandom(2)`, else `/dev/urandom`), so trying it could panic instead
/// of reporting.
fn auto_fallback(
    len: usize,
    found: (SecretRegion, SecretProtections),
    failures: &mut Vec<ProtectionFailure>,
) -> (Region, Protections) {
    let secret_report = secret(found);
    if !secret_report.1.canary {
        return secret_report;
    }
    let mut anon_failures = Vec::new();
    let Ok(anon_report) = anonymous(len, &mut anon_failures) else {
        return secret_report;
    };
    if anon_report.1.missing().len() >= secret_report.1.missing().len() {
        // Dropping the unused anonymous region (just made, so not in a
        // forked child) wipes and frees it.
        return secret_report;
    }
    let errno = failures.first().and_then(|failure| failure.errno);
    failures.clear();
    failures.push(ProtectionFailure::new(ProtectionKind::MemfdSecret, errno));
    failures.append(&mut anon_failures);
    // Dropping the unused secret region (just made, so not in a forked
    // child) wipes, checks its canary and unmaps it.
    drop(secret_report);
    anon_report
}

impl LockedSlab {
    /// Allocates `len` usable bytes on `backend`.
    ///
    /// Protections that could not be had are reported in the returned
    /// [`Protections`] (flag `false` and an entry in `failures`), not as an
    /// error: the caller applies its policy.
    ///
    /// # Errors
    ///
    /// Only when no memory could be had at all
    /// ([`ProtectionKind::Allocation`]), or when [`Backend::MemfdSecret`] was
    /// required and failed ([`ProtectionKind::MemfdSecret`] with the
    /// `errno`).
    pub(crate) fn allocate(
        len: usize,
        backend: Backend,
    ) -> Result<(Self, Protections), ProtectionFailure> {
        let page = sys::page_size()?;
        let mut failures = Vec::new();
        let (region, mut protections) = match backend {
            Backend::LockedAnonymous => anonymous(len, &mut failures)?,
            Backend::MemfdSecret => secret(SecretRegion::allocate(len, &mut failures)?),
            Backend::Auto => match SecretRegion::allocate(len, &mut failures) {
                Ok((region, got)) if !got.mlock || !got.no_dump || !got.fork_wipe => {
                    auto_fallback(len, (region, got), &mut failures)
                }
                Ok(found) => secret(found),
                Err(failure) => {
                    failures.push(failure);
                    anonymous(len, &mut failures)?
                }
            },
        };
        protections.failures = failures;
        let slab = Self {
            region: ManuallyDrop::new(region),
            sentinel: ForkSentinel::new(page),
        };
        Ok((slab, protections))
    }

    fn ptr(&self) -> *mut u8 {
        match &*self.region {
            Region::Secret(region) => region.as_ptr(),
            Region::Anon(region) => region.as_ptr(),
        }
    }

    /// Number of usable bytes.
    pub(crate) fn len(&self) -> usize {
        match &*self.region {
            Region::Secret(region) => region.len(),
            Region::Anon(region) => region.len(),
        }
    }

    /// The backend in use.
    pub(crate) fn backend(&self) -> SlabBackend {
        match &*self.region {
            Region::Secret(_) => SlabBackend::MemfdSecret,
            Region::Anon(_) => SlabBackend::LockedAnonymous,
        }
    }

    /// The usable bytes. Must not be called in a forked child (see
    /// [`forked`](Self::forked)): there the memory is unmapped or wiped.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the region is valid for reads of `len` bytes for as long as
        // `self` lives, and mutation requires `&mut self`, so no `&mut`
        // alias exists while this shared slice lives.
        unsafe { core::slice::from_raw_parts(self.ptr(), self.len()) }
    }

    /// The usable bytes, mutably.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: valid for reads and writes of `len` bytes while `self`
        // lives; `&mut self` makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.ptr(), self.len()) }
    }

    /// Zeroes every usable byte (`zeroize`: a fill the optimiser cannot remove).
    pub(crate) fn wipe(&mut self) {
        match &mut *self.region {
            Region::Secret(region) => region.wipe(),
            Region::Anon(region) => region.wipe(),
        }
    }

    /// Addresses of the usable bytes (for test hooks and forensics tests).
    pub(crate) fn address_range(&self) -> Range<usize> {
        let start = self.ptr() as usize;
        start..start + self.len()
    }

    /// Whether this process is a fork of the one that allocated the slab.
    pub(crate) fn forked(&self) -> bool {
        self.sentinel.forked()
    }

    #[cfg(test)]
    /// Whether fork detection uses the `MADV_WIPEONFORK` sentinel page
    /// (`false`: it compares process ids).
    pub(crate) fn fork_sentinel_page(&self) -> bool {
        self.sentinel.uses_wipe_on_fork()
    }
}

impl Drop for LockedSlab {
    fn drop(&mut self) {
        if self.forked() {
            // A forked child: the memory is unmapped (memfd_secret) or wiped
            // (anonymous, canary included) here. Leave it alone.
            return;
        }
        // SAFETY: `region` is dropped exactly once, here, and never used
        // afterwards.
        unsafe { ManuallyDrop::drop(&mut self.region) };
    }
}

impl fmt::Debug for LockedSlab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedSlab")
            .field("backend", &self.backend())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}
