//! [`SharedSlab`]: a big-reader lock around the key slab and its metadata.
//! Readers take the read lock of their thread's cache-padded stripe (so
//! threads reading keys do not bounce one lock's cache line); a writer takes every
//! stripe's write lock, in index order.

use core::cell::UnsafeCell;
use core::fmt;
use core::ops::Range;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crossbeam_utils::CachePadded;

use super::sentinel::ForkSentinel;
use super::slab::LockedSlab;
use super::sys;

/// A [`LockedSlab`] plus metadata `M` behind a striped reader-writer lock.
pub(crate) struct SharedSlab<M> {
    stripes: Box<[CachePadded<RwLock<()>>]>,
    inner: UnsafeCell<(M, LockedSlab)>,
    /// Fork detection readable without a lock (the slab's own sentinel sits
    /// inside `inner`, which a writer may be mutating).
    sentinel: ForkSentinel,
    /// Whether the slab was already in a forked child when wrapped.
    forked_at_new: bool,
    /// The usable bytes' addresses, recorded when the slab was wrapped.
    range: Range<usize>,
}

// SAFETY: `SharedSlab` owns `M` and the slab; sending it sends them, which
// needs `M: Send` (the slab is `Send`). This is what the auto trait would
// derive; it is spelled out next to `Sync` for clarity.
unsafe impl<M: Send> Send for SharedSlab<M> {}
// SAFETY: through `&SharedSlab`, threads get `&M` and `&[u8]` concurrently
// under read locks (needs `M: Sync`; the slab is `Sync`), and `&mut M` under
// all write locks, which can be taken from any thread (needs `M: Send`).
// A reader holds one stripe's read lock and a writer holds every stripe's
// write lock, so `&mut` never coexists with another reference.
unsafe impl<M: Send + Sync> Sync for SharedSlab<M> {}

impl<M> SharedSlab<M> {
    /// Wraps `slab` and `meta` with `stripes` lock stripes (at least one).
    pub(crate) fn new(slab: LockedSlab, meta: M, stripes: usize) -> Self {
        let stripes = (0..stripes.max(1))
            .map(|_| CachePadded::new(RwLock::new(())))
            .collect();
        // The page size was obtained when the slab was allocated; should it
        // fail now, a zero-length sentinel mapping fails and the sentinel
        // falls back to comparing process ids.
        let page = sys::page_size().unwrap_or(0);
        Self {
            stripes,
            sentinel: ForkSentinel::new(page),
            forked_at_new: slab.forked(),
            range: slab.address_range(),
            inner: UnsafeCell::new((meta, slab)),
        }
    }

    #[cfg(test)]
    /// Number of lock stripes.
    pub(crate) fn stripes(&self) -> usize {
        self.stripes.len()
    }

    /// Read access through the calling thread's home stripe: a thread keeps
    /// reading through the same stripe, so on a hit path its lock's cache
    /// line stays in that thread's core instead of moving between cores.
    ///
    /// A poisoned lock is recovered: the lock protects `()` and the data is
    /// only mutated through [`SlabWrite`], whose users must leave it
    /// consistent at every point where they could panic; a panicking reader
    /// cannot have changed anything.
    pub(crate) fn read(&self) -> SlabRead<'_, M> {
        let lock = &self.stripes[crate::home_stripe::home_stripe(self.stripes.len())];
        SlabRead {
            _guard: lock.read().unwrap_or_else(PoisonError::into_inner),
            shared: self,
        }
    }

    /// Exclusive access: takes every stripe's write lock in index order (the
    /// single order all writers use, so writers cannot deadlock).
    /// Poisoned locks are recovered as in [`read`](Self::read).
    pub(crate) fn write(&self) -> SlabWrite<'_, M> {
        let guards = self
            .stripes
            .iter()
            .map(|lock| lock.write().unwrap_or_else(PoisonError::into_inner))
            .collect();
        SlabWrite {
            _guards: guards,
            shared: self,
        }
    }

    /// Whether this process is a fork of the one that allocated the slab.
    /// Needs no lock: it reads a sentinel page owned by `SharedSlab` itself.
    pub(crate) fn forked(&self) -> bool {
        self.forked_at_new || self.sentinel.forked()
    }

    /// Addresses of the slab's usable bytes, as recorded by [`new`](Self::new)
    /// (no lock needed; the mapping never moves unless a writer replaces
    /// the slab through [`SlabWrite::slab_mut`], which callers must not do).
    pub(crate) fn address_range(&self) -> Range<usize> {
        self.range.clone()
    }
}

/// Shared access to the slab and metadata under one stripe's read lock.
pub(crate) struct SlabRead<'a, M> {
    _guard: RwLockReadGuard<'a, ()>,
    shared: &'a SharedSlab<M>,
}

impl<M> SlabRead<'_, M> {
    fn inner(&self) -> &(M, LockedSlab) {
        // SAFETY: we hold a read lock on a stripe, and writers (the only
        // source of `&mut`) hold every stripe's write lock, so no `&mut`
        // exists while this guard lives.
        unsafe { &*self.shared.inner.get() }
    }

    /// The metadata.
    pub(crate) fn meta(&self) -> &M {
        &self.inner().0
    }

    /// The slab's usable bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.inner().1.bytes()
    }
}

/// Exclusive access to the slab and metadata under every write lock.
pub(crate) struct SlabWrite<'a, M> {
    _guards: Vec<RwLockWriteGuard<'a, ()>>,
    shared: &'a SharedSlab<M>,
}

impl<M> SlabWrite<'_, M> {
    fn inner(&self) -> &(M, LockedSlab) {
        // SAFETY: we hold every stripe's write lock, so no other guard
        // exists; `&self` only hands out shared references.
        unsafe { &*self.shared.inner.get() }
    }

    fn inner_mut(&mut self) -> &mut (M, LockedSlab) {
        // SAFETY: we hold every stripe's write lock, so no reader or other
        // writer exists, and `&mut self` makes this the only reference
        // derived from this guard.
        unsafe { &mut *self.shared.inner.get() }
    }

    /// The metadata.
    pub(crate) fn meta(&self) -> &M {
        &self.inner().0
    }

    /// The metadata, mutably.
    pub(crate) fn meta_mut(&mut self) -> &mut M {
        &mut self.inner_mut().0
    }

    /// The slab's usable bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.inner().1.bytes()
    }

    /// The slab's usable bytes, mutably.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        self.inner_mut().1.bytes_mut()
    }

    /// The slab itself (to wipe it, for example). Do not replace it (for
    /// example with `core::mem::swap`): [`SharedSlab::address_range`] keeps
    /// the original addresses.
    pub(crate) fn slab_mut(&mut self) -> &mut LockedSlab {
        &mut self.inner_mut().1
    }
}

impl<M> fmt::Debug for SharedSlab<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSlab")
            .field("stripes", &self.stripes.len())
            .finish_non_exhaustive()
    }
}
