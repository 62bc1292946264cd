//! Arithmetic in the exact form llama.cpp's CPU backend uses (x86, AVX-512
//! build), where results depend on more than the mathematical value: its
//! vector `exp` (a degree-5 polynomial after a Cody–Waite reduction, used by
//! the softmax and SiLU), the lane order of its 16-wide vector sums, and the
//! accumulation order of its f16 matrix products. With them ferry's CPU
//! attention and SwiGLU produce the reference's bits, so the 8-bit activation
//! quantization downstream sees the same inputs (one flipped rounding there
//! otherwise grows to the size of quantization noise within a few layers).
//!
//! The constants are those of the published algorithm the reference uses
//! (log2 e, ln 2 split in two parts, the polynomial's coefficients), written
//! as bit patterns because Rust has no hexadecimal float literals.

/// 1.5 · 2^23: adding it rounds a float of magnitude < 2^22 to an integer.
const ROUND: f32 = f32::from_bits(0x4b40_0000);
const LOG2_E: f32 = f32::from_bits(0x3fb8_aa3b);
const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
const C5: f32 = f32::from_bits(0x3c07_2010);
const C4: f32 = f32::from_bits(0x3d2b_9f17);
const C3: f32 = f32::from_bits(0x3e2a_af33);
const C2: f32 = f32::from_bits(0x3eff_fedb);
const C1: f32 = f32::from_bits(0x3f7f_fff6);

/// `j · 2^n` for an integral `n` with |n| ≤ 192, rounded once (as a scale
/// instruction does): the first factor keeps the product normal and exact.
#[inline(always)]
fn scale_pow2(j: f32, n: f32) -> f32 {
    let pow2 = |e: i32| f32::from_bits((e.wrapping_add(127) as u32) << 23);
    // Saturating conversion; |n| > 192 is selected away by the caller.
    let n = n as i32;
    let half = n / 2;
    j * pow2(half) * pow2(n - half)
}

/// e^x as the reference's vector exp computes it: x = n·ln 2 + b with n an
/// integer, e^b by a polynomial, then scaled by 2^n. Below −103.97 it gives
/// 0, above 88.38 infinity.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let z = x.mul_add(LOG2_E, ROUND);
    let n = z - ROUND;
    let b = (-n).mul_add(LN2_HI, x);
    let b = (-n).mul_add(LN2_LO, b);
    let u = b * b;
    let j = C5
        .mul_add(b, C4)
        .mul_add(u, C3.mul_add(b, C2))
        .mul_add(u, C1.mul_add(b, 1.0));
    // Selects rather than branches, so that loops over it vectorise.
    let far = if n <= 0.0 { 0.0 } else { f32::INFINITY };
    if n.abs() > 192.0 {
        far
    } else {
        scale_pow2(j, n)
    }
}

/// The sum of 16 lanes in the order of a 512-bit horizontal add: upper half
/// onto lower half, then again within 256 and 128 bits, then the last pair.
#[inline(always)]
pub fn reduce16(v: &[f32; 16]) -> f32 {
    let a: [f32; 8] = std::array::from_fn(|i| v[i + 8] + v[i]);
    let b: [f32; 4] = std::array::from_fn(|i| a[i + 4] + a[i]);
    (b[0] + b[2]) + (b[1] + b[3])
}

/// SwiGLU of one row as the reference computes it: whole groups of 16 with
/// the vector exp, the rest with the C library's.
#[inline(always)]
fn swiglu_row_inline(gate: &mut [f32], up: &[f32]) {
    let whole = gate.len() & !15;
    for (g, &u) in gate[..whole].iter_mut().zip(&up[..whole]) {
        *g = *g / (1.0 + exp(0.0 - *g)) * u;
    }
    for (g, &u) in gate[whole..].iter_mut().zip(&up[whole..]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_row_avx2(gate: &mut [f32], up: &[f32]) {
    swiglu_row_inline(gate, up)
}

/// `gate = silu(gate) · up` over one row.
pub fn swiglu_row(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { swiglu_row_avx2(gate, up) };
    }
    swiglu_row_inline(gate, up)
}

/// The softmax weights of one attention row, as the reference computes them:
/// `scores` (already scaled) become `exp(s − max)` in groups of 16 with the
/// vector exp, each group summed in lane order into an f64 total, then every
/// weight is multiplied by the reciprocal of the total.
#[inline(always)]
fn softmax_inline(scores: &mut [f32]) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut total = 0f64;
    for group in scores.chunks_mut(16) {
        let mut lanes = [0f32; 16];
        for (l, s) in group.iter_mut().enumerate() {
            *s = exp(*s - max);
            lanes[l] = *s;
        }
        total += reduce16(&lanes) as f64;
    }
    let inv = (1.0 / total) as f32;
    for s in scores.iter_mut() {
        *s *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(scores: &mut [f32]) {
    softmax_inline(scores)
}

/// Softmax of one row of scaled scores (see `softmax_inline`); entries past
/// the causal limit are −∞ and come out 0.
pub fn softmax(scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { softmax_avx2(scores) };
    }
    softmax_inline(scores)
}

/// One query head's attention as llama.cpp's CPU backend computes it, for a
/// head size that is a multiple of 16: `q·k` accumulated in 16 lanes (several
/// queries: its matrix product, one accumulator of 16 lanes per output; a
/// single query: its vector product, four accumulators of 16 lanes), scaled,
/// the softmax above, weights rounded to f16, and `Σ p·v` accumulated the
/// same way over the keys. `q`, `keys` and `values` hold f16 values (as f32),
/// so every product is exact and only the sums round, in the reference's
/// order. `scores` has one entry per key; `acc` holds 64 · head size.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_inline(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    single: bool,
    masked: usize,
    scores: &mut [f32],
    acc: &mut [f32],
    out: &mut [f32],
    (lanes16, vec64): (
        impl Fn(&[f32], &[f32]) -> f32,
        impl Fn(&[f32], &[f32]) -> f32,
    ),
) {
    let hd = q.len();
    for (s, key) in scores.iter_mut().zip(keys.chunks_exact(hd)) {
        let dot = if single {
            vec64(key, q)
        } else {
            lanes16(key, q)
        };
        *s = dot * scale;
    }
    // Keys before a sliding window's start, masked as the reference masks them.
    scores[..masked].fill(f32::NEG_INFINITY);
    softmax_inline(scores);
    round_to_f16(scores);
    // acc[slot][d]: key j adds into slot j mod 16 (a matrix product) or
    // (j / 16 mod 4, j mod 16) (a vector product), keys in order.
    let slots = if single { 64 } else { 16 };
    acc[..slots * hd].fill(0.0);
    for (j, (&p, v)) in scores.iter().zip(values.chunks_exact(hd)).enumerate() {
        let slot = if single { j % 64 } else { j % 16 };
        for (a, &vd) in acc[slot * hd..(slot + 1) * hd].iter_mut().zip(v) {
            *a += p * vd;
        }
    }
    for (d, o) in out.iter_mut().enumerate() {
        let lane = |s: usize| acc[s * hd + d];
        *o = if single {
            let groups: [[f32; 16]; 4] =
                std::array::from_fn(|g| std::array::from_fn(|l| lane(16 * g + l)));
            reduce_groups(&groups)
        } else {
            reduce16(&std::array::from_fn(lane))
        };
    }
}

/// Round every value to the nearest f16 (ties to even), as the reference's
/// conversion of the softmax weights for its f16 product does.
pub fn round_to_f16(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has F16C (checked above).
        return unsafe { round_to_f16_f16c(v) };
    }
    for x in v {
        *x = half::f16::from_f32(*x).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn round_to_f16_f16c(v: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = v.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 8 floats; unaligned loads and stores.
        unsafe {
            let x = _mm256_loadu_ps(c.as_ptr());
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
            _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    for x in chunks.into_remainder() {
        *x = half::f16::from_f32(*x).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    single: bool,
    masked: usize,
    scores: &mut [f32],
    acc: &mut [f32],
    out: &mut [f32],
) {
    // SAFETY (closures): this function runs only where AVX2 and FMA exist.
    let dots = (
        |a: &[f32], b: &[f32]| unsafe { dot_lanes16_avx2(a, b) },
        |a: &[f32], b: &[f32]| unsafe { dot_vec64_avx2(a, b) },
    );
    attend_inline(
        q, keys, values, scale, single, masked, scores, acc, out, dots,
    )
}

/// `dot_lanes16` with two 8-wide registers for the 16 lanes. The products
/// are exact (f16 inputs), so fused multiply-adds give the same sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_lanes16_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len()) / 16 * 16;
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in (0..n).step_by(16) {
        // SAFETY: i + 16 <= n, within both slices.
        unsafe {
            let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i));
            lo = _mm256_fmadd_ps(_mm256_loadu_ps(pa), _mm256_loadu_ps(pb), lo);
            hi = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(8)), _mm256_loadu_ps(pb.add(8)), hi);
        }
    }
    reduce_halves(lo, hi)
}

/// `dot_vec64` with eight 8-wide registers (four accumulators of 16 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_vec64_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    if !n.is_multiple_of(16) {
        return dot_vec64(a, b);
    }
    let mut acc = [_mm256_setzero_ps(); 8];
    for i in (0..n).step_by(16) {
        let g = (i / 16) % 4;
        // SAFETY: i + 16 <= n, within both slices.
        unsafe {
            let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i));
            acc[2 * g] = _mm256_fmadd_ps(_mm256_loadu_ps(pa), _mm256_loadu_ps(pb), acc[2 * g]);
            acc[2 * g + 1] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(8)),
                _mm256_loadu_ps(pb.add(8)),
                acc[2 * g + 1],
            );
        }
    }
    // (0 + 2) + (1 + 3), lane by lane, then the 16-lane reduction.
    let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
    let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
    reduce_halves(lo, hi)
}

/// `reduce16` of 16 lanes held as (lanes 0-7, lanes 8-15).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn reduce_halves(lo: std::arch::x86_64::__m256, hi: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_add_ps(hi, lo); // lane i: v[i + 8] + v[i]
    let b = _mm_add_ps(_mm256_extractf128_ps::<1>(a), _mm256_castps256_ps128(a)); // a[i + 4] + a[i]
    let c = _mm_add_ps(b, _mm_movehl_ps(b, b)); // b0 + b2, b1 + b3
    _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)))
}

/// One query head's attention in llama.cpp's arithmetic (see `attend_inline`);
/// the first `masked` keys are masked out (a sliding window).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    single: bool,
    masked: usize,
    scores: &mut [f32],
    acc: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { attend_avx2(q, keys, values, scale, single, masked, scores, acc, out) };
    }
    attend_inline(
        q,
        keys,
        values,
        scale,
        single,
        masked,
        scores,
        acc,
        out,
        (dot_lanes16, dot_vec64),
    )
}

/// `Σ a[i]·b[i]` over a length that is a multiple of 16, accumulated as the
/// reference's f16 matrix product does: lane `l` sums the products at
/// `l, l + 16, l + 32, …` in order, then the lanes are reduced. The inputs are
/// f16 values (as f32), so each product is exact and only the sums round.
#[inline(always)]
pub fn dot_lanes16(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for l in 0..16 {
            lanes[l] += ca[l] * cb[l];
        }
    }
    reduce16(&lanes)
}

/// `Σ a[i]·b[i]` as the reference's f16 vector dot product accumulates it
/// (used for single-query products: a decode step): four accumulators of 16
/// lanes take consecutive 16-element groups of each 64, then they are added
/// pairwise ((0 + 2) + (1 + 3)) and reduced. Lengths beyond a multiple of 64
/// count as zeros (the reference pads its KV length).
#[inline(always)]
pub fn dot_vec64(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [[0f32; 16]; 4];
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        acc[(i / 16) % 4][i % 16] += x * y;
    }
    reduce_groups(&acc)
}

/// The final combination of `dot_vec64`'s four accumulators.
#[inline(always)]
pub fn reduce_groups(acc: &[[f32; 16]; 4]) -> f32 {
    let v: [f32; 16] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    reduce16(&v)
}

/// `out = x / rms(x) * w` as ggml computes it: each square in f32, their sum
/// in f64, then the scale, then the weight (ggml's `rms_norm` and `mul`).
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let scale = rms_scale(x, eps);
    for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
        *o = (x * scale) * w;
    }
}

/// `rms_norm_row` in place (the q/k norms of one head).
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for (x, &w) in x.iter_mut().zip(w) {
        *x = (*x * scale) * w;
    }
}

/// `1 / √(mean(x²) + eps)`, each square in f32 and their sum in f64.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    1.0 / ((sum / x.len() as f64) as f32 + eps).sqrt()
}

/// GELU with the tanh approximation, as ggml's `ggml_gelu_f32` (its compiler
/// forms an FMA in `1 + a·x·x`).
pub fn gelu_tanh(x: f32) -> f32 {
    #[allow(clippy::excessive_precision)]
    const SQRT_2_OVER_PI: f32 = 0.797_884_560_802_865_4;
    const COEF_A: f32 = 0.044715;
    let inner = (COEF_A * x).mul_add(x, 1.0);
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh())
}

/// ggml's GELU table: `gelu_tanh` of every f16 value, rounded to f16.
fn gelu_table() -> &'static [half::f16] {
    static TABLE: std::sync::OnceLock<Vec<half::f16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| half::f16::from_f32(gelu_tanh(half::f16::from_bits(bits).to_f32())))
            .collect()
    })
}

/// `gate = gelu_tanh(gate) · up` over one row, as llama.cpp's CPU backend
/// computes it: the GELU of the input rounded to f16, looked up in a table of
/// f16 results; 0 below −10 and the identity above 10.
pub fn geglu_row(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            table[half::f16::from_f32(x).to_bits() as usize].to_f32() * u
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_the_true_exponential_and_saturates_like_the_reference() {
        for i in -1000..=1000 {
            let x = i as f32 * 0.087;
            let (a, b) = (exp(x), x.exp());
            assert!(((a - b) / b).abs() < 4e-7, "{x}: {a} vs {b}");
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(200.0), f32::INFINITY);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn reduce16_pairs_lanes_as_a_512_bit_horizontal_add() {
        // Values whose sum depends on the order: 1e8 cancels only when the
        // pairing is (i, i + 8) first.
        let mut v = [1.0f32; 16];
        v[0] = 1e8;
        v[8] = -1e8;
        assert_eq!(reduce16(&v), 14.0);
        let seq: f32 = v.iter().sum();
        assert_ne!(seq, 14.0);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_masked_entries_are_zero() {
        let mut row: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
        for s in &mut row[33..] {
            *s = f32::NEG_INFINITY;
        }
        softmax(&mut row);
        assert!(row[33..].iter().all(|&p| p == 0.0));
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
    }
}
