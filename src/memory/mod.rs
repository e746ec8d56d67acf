//! The locked key slab and everything that touches raw memory.
//!
//! This is the only module of the crate allowed to use `unsafe`. It owns
//! one allocation for all epoch keys ([`LockedSlab`]), preferably
//! `memfd_secret(2)` memory, otherwise locked anonymous memory from memsec
//! with guard pages and a canary; the striped lock that shares it between
//! threads ([`SharedSlab`]); the locked scratch buffer keys are decrypted
//! into ([`LockedBuf`]); and the boot-time clock. Every system call's result
//! is checked, and each protection that the platform refuses is reported in
//! [`Protections`] rather than assumed or turned into a panic.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod anon;
mod buf;
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) mod environment;
mod process;
mod registers;
mod report;
mod secret_mem;
mod sentinel;
mod shared;
mod slab;
mod sys;
mod time;

#[cfg(test)]
mod tests;

pub use process::{HardeningError, HardeningStep, ProcessHardening, harden_process};
pub use report::{
    Backend, ProtectedMemory, ProtectionFailure, ProtectionKind, Protections, SlabBackend,
};

pub(crate) use buf::LockedBuf;
pub(crate) use registers::wipe_vector_registers;
pub(crate) use shared::{SharedSlab, SlabWrite};
pub(crate) use slab::LockedSlab;
#[cfg(test)]
pub(crate) use sys::CANARY_LEN;
pub(crate) use sys::{page_filling_len, page_size};
pub(crate) use time::boottime_now;
