//! SIMD kernels, chosen at run time from what the CPU supports, with the
//! scalar reference (`crate::quant`) as the fallback.

use half::f16;

use crate::quant::BlockFormat;

#[cfg(target_arch = "x86_64")]
mod x86;

/// The instruction sets the kernels use on this CPU.
pub fn describe() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        return "AVX2";
    }
    "scalar"
}

/// A dot product of weight blocks with activation blocks.
pub type DotKernel<W> = fn(&[W], &[<W as BlockFormat>::Act]) -> f32;

/// The fastest dot-product kernel for weight blocks `W` on this CPU.
pub fn dot_kernel<W: BlockFormat>() -> DotKernel<W> {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86::dot_kernel::<W>() {
        return k;
    }
    W::vec_dot
}

/// `Σ a[i]·b[i]` in f32.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { x86::dot_f32(a, b) };
    }
    // Eight partial sums, as the vector version, so that the compiler can vectorise.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `Σ k[i]·q[i]` with f16 keys.
pub fn dot_f16_f32(k: &[f16], q: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present.
        return unsafe { x86::dot_f16_f32(k, q) };
    }
    k.iter().zip(q).map(|(k, q)| k.to_f32() * q).sum()
}

/// `acc[i] += p·v[i]` with f16 values.
pub fn axpy_f16(acc: &mut [f32], v: &[f16], p: f32) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present.
        return unsafe { x86::axpy_f16(acc, v, p) };
    }
    for (a, v) in acc.iter_mut().zip(v) {
        *a += p * v.to_f32();
    }
}
