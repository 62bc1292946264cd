//! AVX2 dot products of the k-quants with Q8_K activations.
//!
//! Weights are widened to unsigned bytes (`q + offset` where the format is
//! signed), multiplied with the activations by `maddubs`, weighted by the
//! sub-block scales with `madd`, and the offsets and minimums are applied once
//! per super-block through the activation block sums (`bsums`).

use std::arch::x86_64::*;

use crate::quant::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};

use super::hsum_ps;

#[inline]
#[target_feature(enable = "avx2")]
fn load32(p: &[u8]) -> __m256i {
    assert!(p.len() >= 32);
    // SAFETY: 32 readable bytes (checked).
    unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load32_i8(p: &[i8]) -> __m256i {
    assert!(p.len() >= 32);
    // SAFETY: 32 readable bytes (checked).
    unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) }
}

/// i16 scale vector: `s0` for the first 16 bytes of a 32-byte group, `s1` for the rest.
#[inline]
#[target_feature(enable = "avx2")]
fn scale_pair(s0: i16, s1: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0))
}

/// Σ q·a over 32 bytes, weighted per 16-byte half by `scales`, as eight i32.
#[inline]
#[target_feature(enable = "avx2")]
fn scaled_dot(q: __m256i, a: __m256i, scales: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), scales)
}

#[inline]
#[target_feature(enable = "avx2")]
fn shift_right_bytes(v: __m256i, bits: i32) -> __m256i {
    _mm256_srl_epi16(v, _mm_cvtsi32_si128(bits))
}

fn bsum32(a: &BlockQ8K, sub32: usize) -> i32 {
    a.bsums[2 * sub32] as i32 + a.bsums[2 * sub32 + 1] as i32
}

pub fn q4_k_q8_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q4_k_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_avx2(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    let low = _mm256_set1_epi8(0x0f);
    for (w, a) in w.iter().zip(a) {
        let (sc, m) = k4_scales(&w.scales);
        let min_sum: i32 = (0..8).map(|j| m[j] as i32 * bsum32(a, j)).sum();
        mins += a.d * w.dmin.to_f32() * min_sum as f32;
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let q = load32(&w.qs[32 * j..]);
            let lo = _mm256_and_si256(q, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
            let a_lo = load32_i8(&a.qs[64 * j..]);
            let a_hi = load32_i8(&a.qs[64 * j + 32..]);
            let s_lo = _mm256_set1_epi16(sc[2 * j] as i16);
            let s_hi = _mm256_set1_epi16(sc[2 * j + 1] as i16);
            sumi = _mm256_add_epi32(sumi, scaled_dot(lo, a_lo, s_lo));
            sumi = _mm256_add_epi32(sumi, scaled_dot(hi, a_hi, s_hi));
        }
        let d = _mm256_set1_ps(a.d * w.d.to_f32());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - mins
}

/// The eight 6-bit (scale, min) codes of a Q4_K/Q5_K block.
fn k4_scales(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = q[j] & 63;
            m[j] = q[j + 4] & 63;
        } else {
            sc[j] = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
            m[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }
    (sc, m)
}

pub fn q5_k_q8_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q5_k_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k_avx2(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    let low = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    for (w, a) in w.iter().zip(a) {
        let (sc, m) = k4_scales(&w.scales);
        let min_sum: i32 = (0..8).map(|j| m[j] as i32 * bsum32(a, j)).sum();
        mins += a.d * w.dmin.to_f32() * min_sum as f32;
        let hbits = load32(&w.qh);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let q = load32(&w.qs[32 * j..]);
            let h_lo = _mm256_and_si256(shift_right_bytes(hbits, 2 * j as i32), one);
            let h_hi = _mm256_and_si256(shift_right_bytes(hbits, 2 * j as i32 + 1), one);
            let lo = _mm256_or_si256(_mm256_and_si256(q, low), _mm256_slli_epi16::<4>(h_lo));
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), low),
                _mm256_slli_epi16::<4>(h_hi),
            );
            let a_lo = load32_i8(&a.qs[64 * j..]);
            let a_hi = load32_i8(&a.qs[64 * j + 32..]);
            sumi = _mm256_add_epi32(
                sumi,
                scaled_dot(lo, a_lo, _mm256_set1_epi16(sc[2 * j] as i16)),
            );
            sumi = _mm256_add_epi32(
                sumi,
                scaled_dot(hi, a_hi, _mm256_set1_epi16(sc[2 * j + 1] as i16)),
            );
        }
        let d = _mm256_set1_ps(a.d * w.d.to_f32());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - mins
}

/// The 6-bit values of half `n` (0 or 1) of a Q6_K block, stored as q + 32
/// (0..64), as four groups of 32: elements 128n + 32k .. 128n + 32k + 32.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q6_k_values(b: &BlockQ6K, n: usize) -> [__m256i; 4] {
    let (low, three) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
    let ql0 = load32(&b.ql[64 * n..]);
    let ql1 = load32(&b.ql[64 * n + 32..]);
    let qh = load32(&b.qh[32 * n..]);
    let high = |h: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(h, three));
    [
        _mm256_or_si256(_mm256_and_si256(ql0, low), high(qh)),
        _mm256_or_si256(_mm256_and_si256(ql1, low), high(_mm256_srli_epi16::<2>(qh))),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low),
            high(_mm256_srli_epi16::<4>(qh)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low),
            high(_mm256_srli_epi16::<6>(qh)),
        ),
    ]
}

pub fn q6_k_q8_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q6_k_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_avx2(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in w.iter().zip(a) {
        // q is stored as q + 32. Lane t < 4 sums the low 16-element halves
        // of each 32-element group (4 bytes each), lane 4 + t the high halves
        // — the eight partial sums llama.cpp's x86 kernel forms — and the
        // 32·a·sc offset comes off each lane as that kernel takes it, from
        // the block sums of scale pairs (2t, 2t+1) and (8+2t, 9+2t), so the
        // float accumulation below sees its exact integers.
        let pair = |s: usize| {
            32 * (a.bsums[s] as i32 * w.scales[s] as i32
                + a.bsums[s + 1] as i32 * w.scales[s + 1] as i32)
        };
        let offsets = _mm256_setr_epi32(
            pair(0),
            pair(2),
            pair(4),
            pair(6),
            pair(8),
            pair(10),
            pair(12),
            pair(14),
        );
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            for (k, q) in q6_k_values(w, n).into_iter().enumerate() {
                let s = 8 * n + 2 * k;
                let scales = scale_pair(w.scales[s] as i16, w.scales[s + 1] as i16);
                let av = load32_i8(&a.qs[128 * n + 32 * k..]);
                sumi = _mm256_add_epi32(sumi, scaled_dot(q, av, scales));
            }
        }
        let sumi = _mm256_sub_epi32(sumi, offsets);
        let d = a.d * w.d.to_f32();
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

pub fn q2_k_q8_k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q2_k_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q2_k_avx2(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    let three = _mm256_set1_epi8(3);
    for (w, a) in w.iter().zip(a) {
        let min_sum: i32 = (0..16)
            .map(|s| (w.scales[s] >> 4) as i32 * a.bsums[s] as i32)
            .sum();
        mins += a.d * w.dmin.to_f32() * min_sum as f32;
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let q32 = load32(&w.qs[32 * n..]);
            for j in 0..4 {
                let q = _mm256_and_si256(shift_right_bytes(q32, 2 * j as i32), three);
                let s = 8 * n + 2 * j;
                let scales =
                    scale_pair((w.scales[s] & 0x0f) as i16, (w.scales[s + 1] & 0x0f) as i16);
                let av = load32_i8(&a.qs[128 * n + 32 * j..]);
                sumi = _mm256_add_epi32(sumi, scaled_dot(q, av, scales));
            }
        }
        let d = _mm256_set1_ps(a.d * w.d.to_f32());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - mins
}

pub fn q3_k_q8_k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: only selected when AVX2/FMA/F16C are present.
    unsafe { q3_k_avx2(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q3_k_avx2(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let three = _mm256_set1_epi8(3);
    let one = _mm256_set1_epi8(1);
    for (w, a) in w.iter().zip(a) {
        let mut scales = [0i16; 16];
        for (i, s) in scales.iter_mut().enumerate() {
            let low = if i < 8 {
                w.scales[i] & 0x0f
            } else {
                w.scales[i - 8] >> 4
            };
            let high = (w.scales[8 + i % 4] >> (2 * (i / 4))) & 3;
            *s = (low | (high << 4)) as i16 - 32;
        }
        // q is used as q + 4 (0..8): Σ (q+4)·a·sc − 4·Σ sc·bsum.
        let offset: i32 = (0..16)
            .map(|s| scales[s] as i32 * a.bsums[s] as i32)
            .sum::<i32>()
            * 4;
        let hm = load32(&w.hmask);
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let q32 = load32(&w.qs[32 * n..]);
            for j in 0..4 {
                let low2 = _mm256_and_si256(shift_right_bytes(q32, 2 * j as i32), three);
                let hbit = _mm256_and_si256(shift_right_bytes(hm, (4 * n + j) as i32), one);
                let q = _mm256_or_si256(low2, _mm256_slli_epi16::<2>(hbit));
                let s = 8 * n + 2 * j;
                let av = load32_i8(&a.qs[128 * n + 32 * j..]);
                sumi = _mm256_add_epi32(
                    sumi,
                    scaled_dot(q, av, scale_pair(scales[s], scales[s + 1])),
                );
            }
        }
        let d = a.d * w.d.to_f32();
        let sumi = _mm256_sub_epi32(sumi, _mm256_setr_epi32(offset, 0, 0, 0, 0, 0, 0, 0));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}
