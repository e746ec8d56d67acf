//! Clearing the vector registers after an AEAD call.
//!
//! ring's ChaCha20-Poly1305 assembly keeps the key in vector registers and
//! does not clear them when it returns; glibc's `memcpy` moves buffers (ring
//! copies its key structure with it) through `ymm16`–`ymm31`. Whatever a
//! thread leaves there stays until other vector code overwrites it, and a
//! core dump or `gcore` writes every thread's registers into the file: the
//! forensics tests found the last 16 bytes of the last per-entry subkey
//! there. [`wipe_vector_registers`] zeroes them.

/// Zeroes the vector registers that can hold AEAD residue on this CPU:
/// `ymm0`–`ymm15` (`vzeroall`; `xmm0`–`xmm15` without AVX) and, with
/// AVX-512, `zmm16`–`zmm31`. A no-op on other architectures (not claimed
/// there: see THREAT_MODEL.md).
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
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present (checked above), which is the
            // only requirement of `wipe_upper_zmm`.
            unsafe { wipe_upper_zmm() }
        }
    }

    /// Zeroes `zmm16`–`zmm31`, which `vzeroall` does not touch.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn wipe_upper_zmm() {
        // SAFETY: AVX-512F is enabled for this function (the caller's
        // contract). Each `vpxord` only writes its own register, all of them
        // declared clobbered by `clobber_abi("C")`; no memory or flags are
        // touched.
        unsafe {
            asm!(
                "vpxord zmm16, zmm16, zmm16",
                "vpxord zmm17, zmm17, zmm17",
                "vpxord zmm18, zmm18, zmm18",
                "vpxord zmm19, zmm19, zmm19",
                "vpxord zmm20, zmm20, zmm20",
                "vpxord zmm21, zmm21, zmm21",
                "vpxord zmm22, zmm22, zmm22",
                "vpxord zmm23, zmm23, zmm23",
                "vpxord zmm24, zmm24, zmm24",
                "vpxord zmm25, zmm25, zmm25",
                "vpxord zmm26, zmm26, zmm26",
                "vpxord zmm27, zmm27, zmm27",
                "vpxord zmm28, zmm28, zmm28",
                "vpxord zmm29, zmm29, zmm29",
                "vpxord zmm30, zmm30, zmm30",
                "vpxord zmm31, zmm31, zmm31",
                clobber_abi("C"),
                options(nomem, nostack, preserves_flags)
            );
        }
    }
}
