//! The k-quants (256-element super-blocks with per-sub-block scales) and the
//! activation format Q8_K.
//!
//! Every k-quant decodes to `x = scale[s] * q - min[s]` with an integer `q` and
//! per-sub-block float `scale`/`min` (`min` is zero for the symmetric types).
//! `unpack` produces exactly that, computing `scale` and `min` with the same float
//! operations as ggml, so dequantization is bit-exact and the reference dot
//! product can work on integers.
//!
//! The quantizers are simple (min/max per sub-block, then round): they are used
//! for synthetic models and tests, not to produce production quantizations. Their
//! round-trip error is bounded in the tests.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{BlockFormat, GgmlType, QK_K, nearest_int};

/// Q2_K: 16 sub-blocks of 16, 2-bit q, 4-bit scale and min per sub-block.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ2K {
    /// Low nibble: scale, high nibble: min, per sub-block.
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

/// Q3_K: 16 sub-blocks of 16, 3-bit signed q, 6-bit signed scales.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ3K {
    /// High bit of each q; a *clear* bit means 4 is subtracted.
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}

/// Q4_K: 8 sub-blocks of 32, 4-bit q, 6-bit scale and min per sub-block.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// Q5_K: Q4_K plus one high bit per q.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// Q6_K: 16 sub-blocks of 16, 6-bit signed q, 8-bit signed scales.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// Q8_K: the activation format of the k-quants; f32 scale and per-16 sums.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

/// The per-sub-block factors of a k-quant block (`x = scale · q − min`).
pub struct Scales<const SUBS: usize> {
    pub scale: [f32; SUBS],
    pub min: [f32; SUBS],
}

/// A k-quant block decoded to integers and per-sub-block factors.
pub struct Unpacked<const SUBS: usize> {
    pub q: [i8; QK_K],
    pub scale: [f32; SUBS],
    pub min: [f32; SUBS],
}

impl<const SUBS: usize> Unpacked<SUBS> {
    const SUB_LEN: usize = QK_K / SUBS;

    fn dequantize(&self, out: &mut [f32], has_min: bool) {
        for (i, (o, &q)) in out.iter_mut().zip(&self.q).enumerate() {
            let s = i / Self::SUB_LEN;
            *o = if has_min {
                self.scale[s] * q as f32 - self.min[s]
            } else {
                self.scale[s] * q as f32
            };
        }
    }

    /// Dot product with one Q8_K block.
    fn dot(&self, a: &BlockQ8K, has_min: bool) -> f32 {
        let mut sum = 0f32;
        for s in 0..SUBS {
            let r = s * Self::SUB_LEN..(s + 1) * Self::SUB_LEN;
            let qa: i32 = self.q[r.clone()]
                .iter()
                .zip(&a.qs[r.clone()])
                .map(|(&w, &x)| w as i32 * x as i32)
                .sum();
            sum += self.scale[s] * qa as f32;
            if has_min {
                let sa: i32 = a.qs[r].iter().map(|&x| x as i32).sum();
                sum -= self.min[s] * sa as f32;
            }
        }
        sum * a.d
    }
}

/// Per sub-block (scale, min) of an asymmetric quantization with levels 0..=nmax,
/// such that `x ≈ scale * q - min`; the min is clamped so that 0 stays exact.
fn asym_params(x: &[f32], nmax: f32) -> (f32, f32) {
    let mn = x.iter().fold(0f32, |m, &v| m.min(v));
    let mx = x.iter().fold(f32::MIN, |m, &v| m.max(v)).max(mn);
    ((mx - mn) / nmax, -mn)
}

fn quant_level(v: f32, scale: f32, min: f32, nmax: i32) -> u8 {
    if scale == 0.0 {
        return 0;
    }
    nearest_int((v + min) / scale).clamp(0, nmax) as u8
}

/// Choose a super-block factor so that `values[i] ≈ factor * code[i]` with codes
/// in 0..=cmax; returns (factor as stored in f16, codes).
fn super_scale<const N: usize>(values: &[f32; N], cmax: i32) -> (f16, [u8; N]) {
    let vmax = values.iter().fold(0f32, |m, &v| m.max(v));
    let factor = f16::from_f32(vmax / cmax as f32);
    let f = factor.to_f32();
    let mut codes = [0u8; N];
    if f > 0.0 {
        for (c, &v) in codes.iter_mut().zip(values) {
            *c = nearest_int(v / f).clamp(0, cmax) as u8;
        }
    }
    (factor, codes)
}

// ---------------------------------------------------------------- Q2_K

impl BlockQ2K {
    pub fn unpack_scales(&self) -> Scales<16> {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        let mut f = Scales {
            scale: [0.0; 16],
            min: [0.0; 16],
        };
        for s in 0..16 {
            f.scale[s] = d * (self.scales[s] & 0x0f) as f32;
            f.min[s] = dmin * (self.scales[s] >> 4) as f32;
        }
        f
    }

    pub fn unpack(&self) -> Unpacked<16> {
        let f = self.unpack_scales();
        let mut u = Unpacked {
            q: [0; QK_K],
            scale: f.scale,
            min: f.min,
        };
        // Element 128n + 32j + l sits in byte 32n + l at bit 2j.
        for (e, q) in u.q.iter_mut().enumerate() {
            let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
            *q = ((self.qs[32 * n + l] >> (2 * j)) & 3) as i8;
        }
        u
    }
}

impl BlockFormat for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const ELEMS: usize = QK_K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        self.unpack().dequantize(out, true);
    }

    fn quantize(x: &[f32]) -> Self {
        let mut scales = [0f32; 16];
        let mut mins = [0f32; 16];
        for s in 0..16 {
            (scales[s], mins[s]) = asym_params(&x[16 * s..16 * s + 16], 3.0);
        }
        let (d, sc) = super_scale(&scales, 15);
        let (dmin, mc) = super_scale(&mins, 15);
        let mut b = BlockQ2K {
            scales: [0; 16],
            qs: [0; 64],
            d,
            dmin,
        };
        for s in 0..16 {
            b.scales[s] = sc[s] | (mc[s] << 4);
        }
        let u = b.unpack();
        for (e, &v) in x.iter().enumerate() {
            let s = e / 16;
            let q = quant_level(v, u.scale[s], u.min[s], 3);
            let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
            b.qs[32 * n + l] |= q << (2 * j);
        }
        b
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8K]) -> f32 {
        w.iter().zip(a).map(|(w, a)| w.unpack().dot(a, true)).sum()
    }
}

// ---------------------------------------------------------------- Q3_K

impl BlockQ3K {
    /// The 16 six-bit scales, biased by 32.
    fn scale_codes(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        for (i, c) in c.iter_mut().enumerate() {
            let low = if i < 8 {
                self.scales[i] & 0x0f
            } else {
                self.scales[i - 8] >> 4
            };
            let high = (self.scales[8 + i % 4] >> (2 * (i / 4))) & 3;
            *c = low | (high << 4);
        }
        c
    }

    fn set_scale_codes(&mut self, c: &[u8; 16]) {
        self.scales = [0; 12];
        for (i, &c) in c.iter().enumerate() {
            if i < 8 {
                self.scales[i] |= c & 0x0f;
            } else {
                self.scales[i - 8] |= (c & 0x0f) << 4;
            }
            self.scales[8 + i % 4] |= ((c >> 4) & 3) << (2 * (i / 4));
        }
    }

    pub fn unpack_scales(&self) -> Scales<16> {
        let d = self.d.to_f32();
        let codes = self.scale_codes();
        let mut f = Scales {
            scale: [0.0; 16],
            min: [0.0; 16],
        };
        for (scale, &code) in f.scale.iter_mut().zip(&codes) {
            *scale = d * (code as i32 - 32) as f32;
        }
        f
    }

    pub fn unpack(&self) -> Unpacked<16> {
        let f = self.unpack_scales();
        let mut u = Unpacked {
            q: [0; QK_K],
            scale: f.scale,
            min: f.min,
        };
        // Element 128n + 32j + l: low bits in byte 32n + l at bit 2j, high bit in
        // hmask[l] at bit 4n + j.
        for (e, q) in u.q.iter_mut().enumerate() {
            let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = ((self.qs[32 * n + l] >> (2 * j)) & 3) as i8;
            let high = (self.hmask[l] >> (4 * n + j)) & 1;
            *q = if high != 0 { low } else { low - 4 };
        }
        u
    }
}

impl BlockFormat for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const ELEMS: usize = QK_K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        self.unpack().dequantize(out, false);
    }

    fn quantize(x: &[f32]) -> Self {
        // Per sub-block: the signed value of largest magnitude maps to q = -4.
        let mut sub = [0f32; 16];
        for (s, v) in sub.iter_mut().enumerate() {
            let mut best = 0f32;
            for &e in &x[16 * s..16 * s + 16] {
                if e.abs() > best.abs() {
                    best = e;
                }
            }
            *v = best / -4.0;
        }
        let amax = sub.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = f16::from_f32(amax / 31.0);
        let df = d.to_f32();
        let mut codes = [32u8; 16];
        if df > 0.0 {
            for (c, &v) in codes.iter_mut().zip(&sub) {
                *c = (nearest_int(v / df).clamp(-32, 31) + 32) as u8;
            }
        }
        let mut b = BlockQ3K {
            hmask: [0; 32],
            qs: [0; 64],
            scales: [0; 12],
            d,
        };
        b.set_scale_codes(&codes);
        let u = b.unpack();
        for (e, &v) in x.iter().enumerate() {
            let scale = u.scale[e / 16];
            let q = if scale == 0.0 {
                0
            } else {
                nearest_int(v / scale).clamp(-4, 3)
            };
            let biased = (q + 4) as u8;
            let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
            b.qs[32 * n + l] |= (biased & 3) << (2 * j);
            b.hmask[l] |= (biased >> 2) << (4 * n + j);
        }
        b
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8K]) -> f32 {
        w.iter().zip(a).map(|(w, a)| w.unpack().dot(a, false)).sum()
    }
}

// ---------------------------------------------------------------- Q4_K / Q5_K

/// The 6-bit (scale, min) codes of sub-block `j` of a Q4_K/Q5_K block.
fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn pack_scale_min_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
    }
    q
}

fn k4_factors(d: f16, dmin: f16, scales: &[u8; 12]) -> ([f32; 8], [f32; 8]) {
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    let mut scale = [0f32; 8];
    let mut min = [0f32; 8];
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, scales);
        scale[j] = d * sc as f32;
        min[j] = dmin * m as f32;
    }
    (scale, min)
}

/// (d, dmin, packed scales) for a Q4_K/Q5_K block with levels 0..=nmax.
fn k4_quantize_scales(x: &[f32], nmax: f32) -> (f16, f16, [u8; 12]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        (scales[j], mins[j]) = asym_params(&x[32 * j..32 * j + 32], nmax);
    }
    let (d, sc) = super_scale(&scales, 63);
    let (dmin, m) = super_scale(&mins, 63);
    (d, dmin, pack_scale_min_k4(&sc, &m))
}

impl BlockQ4K {
    pub fn unpack_scales(&self) -> Scales<8> {
        let (scale, min) = k4_factors(self.d, self.dmin, &self.scales);
        Scales { scale, min }
    }

    pub fn unpack(&self) -> Unpacked<8> {
        let (scale, min) = k4_factors(self.d, self.dmin, &self.scales);
        let mut u = Unpacked {
            q: [0; QK_K],
            scale,
            min,
        };
        // Element 64c + l: low nibble of byte 32c + l; 64c + 32 + l: high nibble.
        for (e, q) in u.q.iter_mut().enumerate() {
            let (c, half, l) = (e / 64, (e % 64) / 32, e % 32);
            *q = ((self.qs[32 * c + l] >> (4 * half)) & 0x0f) as i8;
        }
        u
    }
}

impl BlockFormat for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const ELEMS: usize = QK_K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        self.unpack().dequantize(out, true);
    }

    fn quantize(x: &[f32]) -> Self {
        let (d, dmin, scales) = k4_quantize_scales(x, 15.0);
        let mut b = BlockQ4K {
            d,
            dmin,
            scales,
            qs: [0; 128],
        };
        let (scale, min) = k4_factors(d, dmin, &scales);
        for (e, &v) in x.iter().enumerate() {
            let q = quant_level(v, scale[e / 32], min[e / 32], 15);
            let (c, half, l) = (e / 64, (e % 64) / 32, e % 32);
            b.qs[32 * c + l] |= q << (4 * half);
        }
        b
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8K]) -> f32 {
        w.iter().zip(a).map(|(w, a)| w.unpack().dot(a, true)).sum()
    }
}

impl BlockQ5K {
    pub fn unpack_scales(&self) -> Scales<8> {
        let (scale, min) = k4_factors(self.d, self.dmin, &self.scales);
        Scales { scale, min }
    }

    pub fn unpack(&self) -> Unpacked<8> {
        let (scale, min) = k4_factors(self.d, self.dmin, &self.scales);
        let mut u = Unpacked {
            q: [0; QK_K],
            scale,
            min,
        };
        // As Q4_K, plus the fifth bit of element 64c + 32h + l in qh[l] at bit 2c + h.
        for (e, q) in u.q.iter_mut().enumerate() {
            let (c, half, l) = (e / 64, (e % 64) / 32, e % 32);
            let low = (self.qs[32 * c + l] >> (4 * half)) & 0x0f;
            let high = (self.qh[l] >> (2 * c + half)) & 1;
            *q = (low | (high << 4)) as i8;
        }
        u
    }
}

impl BlockFormat for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const ELEMS: usize = QK_K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        self.unpack().dequantize(out, true);
    }

    fn quantize(x: &[f32]) -> Self {
        let (d, dmin, scales) = k4_quantize_scales(x, 31.0);
        let mut b = BlockQ5K {
            d,
            dmin,
            scales,
            qh: [0; 32],
            qs: [0; 128],
        };
        let (scale, min) = k4_factors(d, dmin, &scales);
        for (e, &v) in x.iter().enumerate() {
            let q = quant_level(v, scale[e / 32], min[e / 32], 31);
            let (c, half, l) = (e / 64, (e % 64) / 32, e % 32);
            b.qs[32 * c + l] |= (q & 0x0f) << (4 * half);
            b.qh[l] |= (q >> 4) << (2 * c + half);
        }
        b
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8K]) -> f32 {
        w.iter().zip(a).map(|(w, a)| w.unpack().dot(a, true)).sum()
    }
}

// ---------------------------------------------------------------- Q6_K

impl BlockQ6K {
    pub fn unpack_scales(&self) -> Scales<16> {
        let d = self.d.to_f32();
        let mut f = Scales {
            scale: [0.0; 16],
            min: [0.0; 16],
        };
        for s in 0..16 {
            f.scale[s] = d * self.scales[s] as f32;
        }
        f
    }

    pub fn unpack(&self) -> Unpacked<16> {
        let f = self.unpack_scales();
        let mut u = Unpacked {
            q: [0; QK_K],
            scale: f.scale,
            min: f.min,
        };
        // Element 128n + 32k + l (k = 0..4): low nibble from ql[64n + l + 32(k&1)]
        // (high nibble when k >= 2), two high bits from qh[32n + l] at bit 2k.
        for (e, q) in u.q.iter_mut().enumerate() {
            let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = (self.ql[64 * n + l + 32 * (k & 1)] >> (4 * (k / 2))) & 0x0f;
            let high = (self.qh[32 * n + l] >> (2 * k)) & 3;
            *q = (low | (high << 4)) as i8 - 32;
        }
        u
    }
}

impl BlockFormat for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const ELEMS: usize = QK_K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        self.unpack().dequantize(out, false);
    }

    fn quantize(x: &[f32]) -> Self {
        let mut sub = [0f32; 16];
        for (s, v) in sub.iter_mut().enumerate() {
            *v = x[16 * s..16 * s + 16]
                .iter()
                .fold(0f32, |m, e| m.max(e.abs()))
                / 31.0;
        }
        let (d, codes) = super_scale(&sub, 127);
        let mut b = BlockQ6K {
            ql: [0; 128],
            qh: [0; 64],
            scales: [0; 16],
            d,
        };
        for (scale, &code) in b.scales.iter_mut().zip(&codes) {
            *scale = code as i8;
        }
        let u = b.unpack();
        for (e, &v) in x.iter().enumerate() {
            let scale = u.scale[e / 16];
            let q = if scale == 0.0 {
                0
            } else {
                nearest_int(v / scale).clamp(-32, 31)
            };
            let biased = (q + 32) as u8;
            let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
            b.ql[64 * n + l + 32 * (k & 1)] |= (biased & 0x0f) << (4 * (k / 2));
            b.qh[32 * n + l] |= (biased >> 4) << (2 * k);
        }
        b
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8K]) -> f32 {
        w.iter().zip(a).map(|(w, a)| w.unpack().dot(a, false)).sum()
    }
}

// ---------------------------------------------------------------- Q8_K

impl BlockFormat for BlockQ8K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const ELEMS: usize = QK_K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = self.d * q as f32;
        }
    }

    /// ggml's `quantize_row_q8_K_ref`, bit for bit.
    fn quantize(x: &[f32]) -> Self {
        let mut b = BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; 16],
        };
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            return b;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (j, s) in b.bsums.iter_mut().enumerate() {
            *s = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
        b
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8K]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                let sumi: i32 =
                    w.qs.iter()
                        .zip(&a.qs)
                        .map(|(&x, &y)| x as i32 * y as i32)
                        .sum();
                sumi as f32 * w.d * a.d
            })
            .sum()
    }
}
