//! The 32-element "legacy" formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the
//! activation format Q8_1.
//!
//! The quantizers follow ggml's reference quantizers operation for operation
//! (same comparisons, same float expressions, same truncations), so their output
//! is bit-identical to llama.cpp's `quantize_row_*_ref`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{BlockFormat, GgmlType, QK};

/// Q4_0: `x = d * (q - 8)`, q in 0..16.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// Element j in the low nibble of byte j, element j+16 in the high nibble.
    pub qs: [u8; QK / 2],
}

/// Q4_1: `x = d * q + m`, q in 0..16.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

/// Q5_0: `x = d * (q - 16)`, q in 0..32; the fifth bits live in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ5_0 {
    pub d: f16,
    /// Bit j (little-endian u32) is the high bit of element j.
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q5_1: `x = d * q + m`, q in 0..32.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q8_0: `x = d * q`, q in -127..=127.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// Q8_1: Q8_0 plus `s = d * sum(q)`, which lets Q4_1/Q5_1 apply their offset `m`
/// once per block in the dot product.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}

/// The signed value of largest magnitude (first one on ties), as ggml picks it.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

/// Unpack 4-bit values: element j from the low nibble, j+16 from the high one.
#[inline]
fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = qs[j] & 0x0f;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

/// Unpack 5-bit values from `qs` nibbles and `qh` bits.
#[inline]
fn five_bits(qs: &[u8; 16], qh: [u8; 4]) -> [u8; 32] {
    let h = u32::from_le_bytes(qh);
    let mut q = nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((h >> j) & 1) as u8) << 4;
    }
    q
}

#[inline]
fn pack_nibbles(lo: &[u8], hi: &[u8]) -> [u8; 16] {
    let mut qs = [0u8; 16];
    for j in 0..16 {
        qs[j] = (lo[j] & 0x0f) | ((hi[j] & 0x0f) << 4);
    }
    qs
}

#[inline]
fn pack_high_bits(q: &[u8; 32]) -> [u8; 4] {
    let mut h = 0u32;
    for (j, &v) in q.iter().enumerate() {
        h |= (((v & 0x10) >> 4) as u32) << j;
    }
    h.to_le_bytes()
}

fn int_dot(w: &[u8; 32], offset: i32, a: &[i8; 32]) -> i32 {
    w.iter()
        .zip(a)
        .map(|(&w, &a)| (w as i32 - offset) * a as i32)
        .sum()
}

impl BlockFormat for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const ELEMS: usize = QK;
    type Act = BlockQ8_0;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, q) in out.iter_mut().zip(nibbles(&self.qs)) {
            *o = d * (q as i32 - 8) as f32;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let max = signed_absmax(x);
        let d = max / -8.0;
        let id = inverse(d);
        let mut q = [0u8; 32];
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v * id + 8.5) as i8).min(15) as u8;
        }
        BlockQ4_0 {
            d: f16::from_f32(d),
            qs: pack_nibbles(&q[..16], &q[16..]),
        }
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| int_dot(&nibbles(&w.qs), 8, &a.qs) as f32 * (w.d.to_f32() * a.d.to_f32()))
            .sum()
    }
}

impl BlockFormat for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const ELEMS: usize = QK;
    type Act = BlockQ8_1;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (o, q) in out.iter_mut().zip(nibbles(&self.qs)) {
            *o = d * q as f32 + m;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        let mut q = [0u8; 32];
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (((v - min) * id + 0.5) as i8).min(15) as u8;
        }
        BlockQ4_1 {
            d: f16::from_f32(d),
            m: f16::from_f32(min),
            qs: pack_nibbles(&q[..16], &q[16..]),
        }
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8_1]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                let sumi = int_dot(&nibbles(&w.qs), 0, &a.qs) as f32;
                sumi * (w.d.to_f32() * a.d.to_f32()) + w.m.to_f32() * a.s.to_f32()
            })
            .sum()
    }
}

impl BlockFormat for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const ELEMS: usize = QK;
    type Act = BlockQ8_0;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, q) in out.iter_mut().zip(five_bits(&self.qs, self.qh)) {
            *o = d * (q as i32 - 16) as f32;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let max = signed_absmax(x);
        let d = max / -16.0;
        let id = inverse(d);
        let mut q = [0u8; 32];
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v * id + 16.5) as i8).min(31) as u8;
        }
        BlockQ5_0 {
            d: f16::from_f32(d),
            qh: pack_high_bits(&q),
            qs: pack_nibbles(&q[..16], &q[16..]),
        }
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                int_dot(&five_bits(&w.qs, w.qh), 16, &a.qs) as f32 * (w.d.to_f32() * a.d.to_f32())
            })
            .sum()
    }
}

impl BlockFormat for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const ELEMS: usize = QK;
    type Act = BlockQ8_1;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (o, q) in out.iter_mut().zip(five_bits(&self.qs, self.qh)) {
            *o = d * q as f32 + m;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse(d);
        let mut q = [0u8; 32];
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (((v - min) * id + 0.5) as i8).min(31) as u8;
        }
        BlockQ5_1 {
            d: f16::from_f32(d),
            m: f16::from_f32(min),
            qh: pack_high_bits(&q),
            qs: pack_nibbles(&q[..16], &q[16..]),
        }
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8_1]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                let sumi = int_dot(&five_bits(&w.qs, w.qh), 0, &a.qs) as f32;
                sumi * (w.d.to_f32() * a.d.to_f32()) + w.m.to_f32() * a.s.to_f32()
            })
            .sum()
    }
}

fn q8_quantize(x: &[f32]) -> (f32, [i8; 32]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    let mut qs = [0i8; 32];
    for (q, &v) in qs.iter_mut().zip(x) {
        // C's roundf: half away from zero.
        *q = (v * id).round() as i8;
    }
    (d, qs)
}

/// ggml's run-time activation quantizer: `127/amax` as the inverse scale, and
/// rounding ties to even (the vector code's rounding mode).
fn q8_quantize_runtime(x: &[f32]) -> (f32, [i8; 32]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; 32];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = super::nearest_int(v * id) as i8;
    }
    (d, qs)
}

impl BlockFormat for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const ELEMS: usize = QK;
    type Act = BlockQ8_0;

    fn quantize_activation(x: &[f32]) -> Self {
        let (d, qs) = q8_quantize_runtime(x);
        BlockQ8_0 {
            d: f16::from_f32(d),
            qs,
        }
    }

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let (d, qs) = q8_quantize(x);
        BlockQ8_0 {
            d: f16::from_f32(d),
            qs,
        }
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| q8_block_dot(w.d, &w.qs, a.d, &a.qs))
            .sum()
    }
}

/// One block's integer dot product, scaled.
fn q8_block_dot(dw: f16, w: &[i8; 32], da: f16, a: &[i8; 32]) -> f32 {
    let sumi: i32 = w.iter().zip(a).map(|(&x, &y)| x as i32 * y as i32).sum();
    sumi as f32 * (dw.to_f32() * da.to_f32())
}

impl BlockQ8_1 {
    /// A block from its scale and values; `s = d · Σq` as ggml stores it.
    pub fn from_parts(d: f32, qs: [i8; 32]) -> Self {
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        BlockQ8_1 {
            d: f16::from_f32(d),
            s: f16::from_f32(sum as f32 * d),
            qs,
        }
    }
}

impl BlockFormat for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const ELEMS: usize = QK;
    type Act = BlockQ8_1;

    fn quantize_activation(x: &[f32]) -> Self {
        let (d, qs) = q8_quantize_runtime(x);
        BlockQ8_1::from_parts(d, qs)
    }

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let (d, qs) = q8_quantize(x);
        BlockQ8_1::from_parts(d, qs)
    }

    fn vec_dot(w: &[Self], a: &[BlockQ8_1]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| q8_block_dot(w.d, &w.qs, a.d, &a.qs))
            .sum()
    }
}
