//! What the key slab obtained from the platform: the requested and the actual
//! backend, each protection as on/off, and every protection that was tried and
//! refused, with the operating system's error number and what an operator can
//! do about it.

use core::fmt;

/// The memory backend requested for the key slab. The default is
/// [`Backend::Auto`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// Use `memfd_secret(2)` memory when the kernel offers it, otherwise
    /// locked anonymous memory. The attempt and its failure are reported in
    /// [`Protections::failures`]. A `memfd_secret` region that misses a
    /// baseline protection (in practice: its lock cannot be verified
    /// because `/proc/self/smaps` is unreadable) is also given up for
    /// locked anonymous memory when that obtains more of the baseline; the
    /// failures then hold one [`ProtectionKind::MemfdSecret`] entry for it.
    #[default]
    Auto,
    /// Require `memfd_secret(2)` memory (Linux >= 5.14 with
    /// `CONFIG_SECRETMEM=y`); allocation fails when it is unavailable.
    MemfdSecret,
    /// Use locked anonymous memory (guard pages, canary, `mlock`) and never
    /// try `memfd_secret(2)`.
    LockedAnonymous,
}

/// The memory backend actually in use by the key slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SlabBackend {
    /// Pages from `memfd_secret(2)`: removed from the kernel's direct map, so
    /// not readable through `/proc/PID/mem`, `ptrace` or kernel core dumps.
    MemfdSecret,
    /// Anonymous pages locked with `mlock(2)`, between guard pages.
    LockedAnonymous,
}

impl fmt::Display for SlabBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MemfdSecret => "memfd_secret",
            Self::LockedAnonymous => "locked_anonymous",
        })
    }
}

/// One protection of the key slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProtectionKind {
    /// The pages are locked in RAM (`mlock(2)`), so they are never written
    /// to swap.
    Mlock,
    /// The pages are excluded from core dumps (`MADV_DONTDUMP`).
    NoDump,
    /// An inaccessible page sits on each side of the keys, so a linear
    /// overflow or underflow faults instead of reading or writing them.
    GuardPages,
    /// A random 16-byte canary precedes the keys and is checked when the slab
    /// is freed; a corrupted canary aborts the process.
    Canary,
    /// A forked child cannot read the keys (`MADV_WIPEONFORK` on anonymous
    /// pages, `MADV_DONTFORK` on the `memfd_secret` mapping).
    ForkWipe,
    /// The keys live in `memfd_secret(2)` memory. Not part of the baseline
    /// reported by [`Protections::missing`].
    MemfdSecret,
    /// The memory itself. A failure of this kind means no memory could be
    /// had at all.
    Allocation,
}

impl ProtectionKind {
    /// What an operator can do to obtain this protection.
    #[must_use]
    pub fn remedy(&self) -> &'static str {
        match self {
            Self::Mlock => {
                "raise RLIMIT_MEMLOCK (ulimit -l, LimitMEMLOCK= in systemd) or grant CAP_IPC_LOCK"
            }
            Self::NoDump => "run on Linux >= 3.4, where madvise(MADV_DONTDUMP) is available",
            Self::GuardPages => {
                "raise vm.max_map_count (each guard page splits a memory mapping) or free memory"
            }
            Self::Canary => "make getrandom(2) available (Linux >= 3.17) to the process",
            Self::ForkWipe => {
                "run on Linux >= 4.14 (MADV_WIPEONFORK); on failure do not fork while keys are cached"
            }
            Self::MemfdSecret => {
                "boot with a kernel that has CONFIG_SECRETMEM=y (Linux >= 5.14; on 6.5+ it may need \
                 secretmem.enable=1) and enough RLIMIT_MEMLOCK or CAP_IPC_LOCK"
            }
            Self::Allocation => "lower the requested size or make more memory available",
        }
    }
}

impl fmt::Display for ProtectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mlock => "mlock",
            Self::NoDump => "no_dump",
            Self::GuardPages => "guard_pages",
            Self::Canary => "canary",
            Self::ForkWipe => "fork_wipe",
            Self::MemfdSecret => "memfd_secret",
            Self::Allocation => "allocation",
        })
    }
}

/// Which locked memory a [`ProtectionFailure`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProtectedMemory {
    /// The slab of epoch keys, allocated once when the cache is built.
    KeySlab,
    /// A scratch buffer that [`SealCache::with`](crate::SealCache::with)
    /// opens secrets into, allocated the first time a secret of its size
    /// finds no pooled buffer big enough.
    ScratchBuffer,
}

/// A protection that was tried and not obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ProtectionFailure {
    /// Which protection.
    pub kind: ProtectionKind,
    /// The operating system's error number (`errno`), when a system call
    /// reported one.
    pub errno: Option<i32>,
    /// The memory that did not get it.
    pub memory: ProtectedMemory,
}

impl ProtectionFailure {
    pub(crate) const fn new(kind: ProtectionKind, errno: Option<i32>) -> Self {
        Self {
            kind,
            errno,
            memory: ProtectedMemory::KeySlab,
        }
    }

    /// The same failure, of a `with` scratch buffer.
    pub(crate) const fn in_scratch_buffer(self) -> Self {
        Self {
            memory: ProtectedMemory::ScratchBuffer,
            ..self
        }
    }

    /// What an operator can do about this failure: the kind's
    /// [`remedy`](ProtectionKind::remedy), narrowed by the `errno` where it
    /// tells the causes apart (`memfd_secret` refused for want of locked
    /// memory, rather than missing from the kernel).
    #[must_use]
    pub fn remedy(&self) -> &'static str {
        match (self.kind, self.errno) {
            (ProtectionKind::MemfdSecret, Some(libc::ENOSYS)) => {
                "boot with a kernel that has CONFIG_SECRETMEM=y (Linux >= 5.14; on 6.5+ it may \
                 need secretmem.enable=1)"
            }
            (ProtectionKind::MemfdSecret, Some(libc::EPERM)) => {
                "the memfd_secret system call was refused, most likely by a seccomp profile (as \
                 container runtimes install) or a security module: allow it there, or choose \
                 Backend::LockedAnonymous"
            }
            (ProtectionKind::MemfdSecret, Some(libc::EAGAIN | libc::ENOMEM)) => {
                "the kernel has memfd_secret, but its pages count as locked memory: raise \
                 RLIMIT_MEMLOCK (ulimit -l, LimitMEMLOCK= in systemd) or grant CAP_IPC_LOCK \
                 (ENOMEM can also mean the address space or vm.max_map_count ran out)"
            }
            (kind, _) => kind.remedy(),
        }
    }
}

/// The symbolic name of the error numbers that the slab's system calls
/// return.
fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSYS => "ENOSYS",
        libc::EOVERFLOW => "EOVERFLOW",
        _ => return None,
    })
}

impl fmt::Display for ProtectionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = match self.memory {
            ProtectedMemory::KeySlab => "",
            ProtectedMemory::ScratchBuffer => " for a with() scratch buffer",
        };
        write!(f, "{} was not obtained{whose}", self.kind)?;
        if let Some(errno) = self.errno {
            let text = std::io::Error::from_raw_os_error(errno).to_string();
            let suffix = format!(" (os error {errno})");
            let text = text.strip_suffix(&suffix).unwrap_or(&text);
            match errno_name(errno) {
                Some(name) => write!(f, " ({name}: {text})")?,
                None => write!(f, " (errno {errno}: {text})")?,
            }
        }
        write!(f, "; {}", self.remedy())
    }
}

impl std::error::Error for ProtectionFailure {}

/// The protections the key slab obtained.
///
/// A protection the platform refused is `false` here and listed, with its
/// error number, in [`failures`](Self::failures); it is never silently
/// claimed. Under [`Protection::BestEffort`](crate::Protection::BestEffort)
/// a `with` scratch buffer that missed a protection turns it off here too
/// (plaintext sits in those buffers): its failure says so in
/// [`ProtectionFailure::memory`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Protections {
    /// The backend in use.
    pub backend: SlabBackend,
    /// The key pages are locked in RAM (verified by a checked `mlock(2)`, or
    /// for `memfd_secret` memory by the `lo` flag in `/proc/self/smaps`).
    pub mlock: bool,
    /// The key pages are excluded from core dumps (checked
    /// `madvise(MADV_DONTDUMP)`).
    pub no_dump: bool,
    /// Both guard pages are inaccessible (checked `mprotect(PROT_NONE)`, or
    /// a `PROT_NONE` reservation around the `memfd_secret` mapping).
    pub guard_pages: bool,
    /// A random canary precedes the keys and is checked when they are freed.
    pub canary: bool,
    /// A forked child cannot read the keys: `MADV_WIPEONFORK` on anonymous
    /// slab pages, `MADV_DONTFORK` on the `memfd_secret` mapping.
    pub fork_wipe: bool,
    /// The slab notices when it is used in a forked child (a
    /// `MADV_WIPEONFORK` sentinel page, or a process-id comparison where
    /// that advice is unsupported; process ids can repeat across PID
    /// namespaces, so that fallback misses a fork by a namespace's init
    /// after `unshare(CLONE_NEWPID)`).
    pub fork_detection: bool,
    /// The keys live in `memfd_secret(2)` memory.
    pub memfd_secret: bool,
    /// Every protection that was tried and not obtained, with its `errno`
    /// and the memory it was for (one entry per kind and memory).
    /// Includes a [`ProtectionKind::MemfdSecret`] entry when
    /// [`Backend::Auto`] fell back to locked anonymous memory.
    pub failures: Vec<ProtectionFailure>,
}

impl Protections {
    /// The baseline protections (mlock, no-dump, guard pages, canary, fork
    /// wipe) that are not active. `memfd_secret` is not part of the baseline.
    #[must_use]
    pub fn missing(&self) -> Vec<ProtectionKind> {
        [
            ProtectionKind::Mlock,
            ProtectionKind::NoDump,
            ProtectionKind::GuardPages,
            ProtectionKind::Canary,
            ProtectionKind::ForkWipe,
        ]
        .into_iter()
        .filter(|kind| !self.is_active(*kind))
        .collect()
    }

    /// Whether the protection `kind` is active.
    /// [`ProtectionKind::Allocation`] is always active: a report exists only
    /// for memory that was allocated.
    #[must_use]
    pub fn is_active(&self, kind: ProtectionKind) -> bool {
        match kind {
            ProtectionKind::Mlock => self.mlock,
            ProtectionKind::NoDump => self.no_dump,
            ProtectionKind::GuardPages => self.guard_pages,
            ProtectionKind::Canary => self.canary,
            ProtectionKind::ForkWipe => self.fork_wipe,
            ProtectionKind::MemfdSecret => self.memfd_secret,
            ProtectionKind::Allocation => true,
        }
    }

    /// Turns `failure.kind` off (the inverse of [`is_active`](Self::is_active))
    /// and records the failure: for protections lost after allocation, such
    /// as a scratch buffer that could not be locked.
    pub(crate) fn mark_missing(&mut self, failure: ProtectionFailure) {
        match failure.kind {
            ProtectionKind::Mlock => self.mlock = false,
            ProtectionKind::NoDump => self.no_dump = false,
            ProtectionKind::GuardPages => self.guard_pages = false,
            ProtectionKind::Canary => self.canary = false,
            ProtectionKind::ForkWipe => self.fork_wipe = false,
            ProtectionKind::MemfdSecret => self.memfd_secret = false,
            ProtectionKind::Allocation => {}
        }
        if !self.failures.contains(&failure) {
            self.failures.push(failure);
        }
    }

    /// The recorded failure of `kind`, or one without an `errno` if none
    /// was recorded.
    pub(crate) fn failure_of(&self, kind: ProtectionKind) -> ProtectionFailure {
        failure_of(&self.failures, kind)
    }
}

/// The failure of `kind` in `failures`, or one without an `errno` if the
/// protection was found off without a failing call to blame.
pub(crate) fn failure_of(
    failures: &[ProtectionFailure],
    kind: ProtectionKind,
) -> ProtectionFailure {
    failures
        .iter()
        .find(|failure| failure.kind == kind)
        .copied()
        .unwrap_or(ProtectionFailure::new(kind, None))
}

impl fmt::Display for Protections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        write!(
            f,
            "backend={} mlock={} no_dump={} guard_pages={} canary={} fork_wipe={} fork_detection={}",
            self.backend,
            on(self.mlock),
            on(self.no_dump),
            on(self.guard_pages),
            on(self.canary),
            on(self.fork_wipe),
            on(self.fork_detection),
        )?;
        for (i, failure) in self.failures.iter().enumerate() {
            let lead = if i == 0 { "; failed: " } else { "; " };
            write!(f, "{lead}{failure}")?;
        }
        Ok(())
    }
}
