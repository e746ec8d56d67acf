//! Clearing the vector registers after an AEAD call.
//!
//! ring's ChaCha20-Poly1305 assembly keeps the key in vector registers and
//! does not clear them when it returns. Whatever a thread leaves there
//! stays until other vector code overwrites it, and a core dump or `gcore`
//! writes every thread's registers into the file: the forensics tests found
//! the last 16 bytes of the last per-entry subkey there, in the `ymm0`–
//! `ymm15` that `vzeroall` clears (without it, `tests/forensics.rs` C5 and
//! C6 fail). glibc's EVEX `memcpy` (AVX-512 CPUs; ring copies its key
//! structure with it) moves data through `ymm16`–`ymm31`, which `vzeroall`
//! does not reach; no test has found residue there, and they are zeroed as
//! a precaution. [`wipe_vector_registers`] zeroes both sets.

/// Zeroes the vector registers that can hold AEAD residue on this CPU:
/// `ymm0`–`ymm15` (`vzeroall`; `xmm0`–`xmm15` without AVX) and, with
/// AVX-512VL, `zmm16`–`zmm31` (every AVX-512 CPU but the Xeon Phi has VL).
/// A no-op on other architectures (not claimed there: see THREAT_MODEL.md).
#[inline(never)]
pub(crate) fn wipe_vector_registers() {
    #[cfg(target_arch = "x86_64")]
    x86_64::wipe();
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use core::arch::asm;

    pub(super) fn wipe() {
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: AVX is present (checked above). `vzeroall` only writes
            // ymm0-15, which `clobber_abi("C")` declares clobbered; it reads
            // and writes no memory and leaves the flags alone.
            unsafe {
                asm!(
                    "vzeroall",
                    clobber_abi("C"),
                    options(nomem, nostack, preserves_flags)
                );
            }
        } else {
            // SAFETY: SSE2 is part of x86_64. Each `xorps` only writes its
            // own xmm register, all declared clobbered by `clobber_abi("C")`;
            // no memory or flags are touched.
            unsafe {
                asm!(
                    "xorps xmm0, xmm0",
                    "xorps xmm1, xmm1",
                    "xorps xmm2, xmm2",
                    "xorps xmm3, xmm3",
                    "xorps xmm4, xmm4",
                    "xorps xmm5, xmm5",
                    "xorps xmm6, xmm6",
                    "xorps xmm7, xmm7",
                    "xorps xmm8, xmm8",
                    "xorps xmm9, xmm9",
                    "xorps xmm10, xmm10",
                    "xorps xmm11, xmm11",
                    "xorps xmm12, xmm12",
                    "xorps xmm13, xmm13",
                    "xorps xmm14, xmm14",
                    "xorps xmm15, xmm15",
                    clobber_abi("C"),
                    options(nomem, nostack, preserves_flags)
                );
            }
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: AVX-512F and VL are present (checked above), the only
            // requirement of `wipe_upper_vector_registers`.
            unsafe { wipe_upper_vector_registers() }
        }
    }

    /// Zeroes `zmm16`–`zmm31`, which `vzeroall` does not touch, with 256-bit
    /// instructions: writing a `ymm` register clears the rest of its `zmm`,
    /// and no 512-bit instruction runs (which on some CPUs lowers the clock).
    ///
    /// No `#[target_feature]`: the assembler takes the instructions without
    /// it, and AVX-512 target features are only stable from Rust 1.89 (this
    /// crate supports 1.88).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F and AVX-512VL.
    unsafe fn wipe_upper_vector_registers() {
        // SAFETY: the CPU supports AVX-512F and VL (the caller's contract).
        // Each `vpxord` only writes its own register and touches no memory
        // or flags. The registers written are caller-saved in the C ABI:
        // where this crate is compiled with AVX-512, `clobber_abi("C")`
        // declares them clobbered; where it is not, the compiler cannot
        // allocate them, so no value of this program lives there.
        unsafe {
            asm!(
                "vpxord ymm16, ymm16, ymm16",
                "vpxord ymm17, ymm17, ymm17",
                "vpxord ymm18, ymm18, ymm18",
                "vpxord ymm19, ymm19, ymm19",
                "vpxord ymm20, ymm20, ymm20",
                "vpxord ymm21, ymm21, ymm21",
                "vpxord ymm22, ymm22, ymm22",
                "vpxord ymm23, ymm23, ymm23",
                "vpxord ymm24, ymm24, ymm24",
                "vpxord ymm25, ymm25, ymm25",
                "vpxord ymm26, ymm26, ymm26",
                "vpxord ymm27, ymm27, ymm27",
                "vpxord ymm28, ymm28, ymm28",
                "vpxord ymm29, ymm29, ymm29",
                "vpxord ymm30, ymm30, ymm30",
                "vpxord ymm31, ymm31, ymm31",
                clobber_abi("C"),
                options(nomem, nostack, preserves_flags)
            );
        }
    }
}
