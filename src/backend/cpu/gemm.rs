//! Matrix × matrix for prefill: weight rows are unpacked once per task into
//! signed bytes with per-lane float scales, then reused for every token of the
//! task's tile, so the bit twiddling of the block format is paid once per row
//! and tile instead of once per row and token.
//!
//! Every format is brought to `x = scale[lane group] · q + offset[sub-block]`
//! with `q` in i8; activations keep their own format (Q8_0, Q8_1 or Q8_K) and
//! contribute `d · Σq` sums for the offsets. For Q4_1/Q5_1 the float operations
//! are those of ggml's AVX2 kernels, so results stay bit-identical to llama.cpp.

use super::simd;
use crate::quant::{
    BlockFormat, BlockIQ4NL, BlockIQ4XS, BlockMXFP4, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1,
    BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K, IQ4_GRID,
    MXFP4_GRID, QK_K, e8m0_to_f32_half,
};

/// One weight row unpacked: `q` per element, a scale for each group of 32
/// elements split in two halves of 16 (`[first half; 4] ++ [second half; 4]`
/// lanes, as an AVX2 i32 accumulator sees them), and an offset per sub-block.
pub struct PreparedRow {
    pub q: Vec<i8>,
    pub lane_scale: Vec<[f32; 8]>,
    pub offset: Vec<f32>,
}

impl PreparedRow {
    pub fn new(cols: usize, sub_len: usize) -> Self {
        PreparedRow {
            q: vec![0; cols],
            lane_scale: vec![[0.0; 8]; cols / 32],
            offset: vec![0.0; cols / sub_len],
        }
    }
}

/// Activations of one token as the GEMM reads them.
pub struct PreparedAct {
    pub q: Vec<i8>,
    /// Scale per group of 32.
    pub d: Vec<f32>,
    /// `d · Σq` per weight sub-block (empty when the weights have no offsets).
    pub sums: Vec<f32>,
}

/// Weight formats the GEMM path handles.
pub trait GemmFormat: BlockFormat {
    /// Length of the sub-blocks that carry an offset (0: no offsets).
    const SUB: usize;
    /// Unpack a row of blocks.
    fn prepare(row: &[Self], out: &mut PreparedRow);
    /// View a row of activation blocks.
    fn prepare_act(row: &[Self::Act]) -> PreparedAct;
}

fn set_group_scale(out: &mut PreparedRow, g: usize, first: f32, second: f32) {
    out.lane_scale[g] = [first, first, first, first, second, second, second, second];
}

macro_rules! legacy_prepare {
    ($ty:ty, $sub:expr, |$b:ident, $q:ident| $values:expr, $offset:expr) => {
        legacy_prepare!($ty, $sub, |$b, $q| $values, $offset, |_row, _out| false);
    };
    ($ty:ty, $sub:expr, |$b:ident, $q:ident| $values:expr, $offset:expr, |$row:ident, $out:ident| $fast:expr) => {
        impl GemmFormat for $ty {
            const SUB: usize = $sub;
            fn prepare(row: &[Self], out: &mut PreparedRow) {
                let fast = {
                    let ($row, $out) = (row, &mut *out);
                    $fast
                };
                for (g, $b) in row.iter().enumerate() {
                    if !fast {
                        let $q = &mut out.q[g * 32..(g + 1) * 32];
                        $values;
                    }
                    let d = $b.d.to_f32();
                    set_group_scale(out, g, d, d);
                    if $sub > 0 {
                        out.offset[g] = $offset;
                    }
                }
            }
            fn prepare_act(row: &[Self::Act]) -> PreparedAct {
                act_view(row)
            }
        }
    };
}

/// What the GEMM needs of a Q8_0/Q8_1 activation block.
trait LegacyAct {
    fn qs(&self) -> &[i8; 32];
    fn d(&self) -> f32;
    fn sum(&self) -> f32;
}
impl LegacyAct for BlockQ8_0 {
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    fn sum(&self) -> f32 {
        0.0
    }
}
impl LegacyAct for BlockQ8_1 {
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    fn sum(&self) -> f32 {
        self.s.to_f32()
    }
}

fn act_view<A: LegacyAct>(row: &[A]) -> PreparedAct {
    PreparedAct {
        q: row.iter().flat_map(|b| b.qs().iter().copied()).collect(),
        d: row.iter().map(|b| b.d()).collect(),
        sums: row.iter().map(|b| b.sum()).collect(),
    }
}

fn nibbles(qs: &[u8; 16], q: &mut [i8], minus: i8) {
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) as i8 - minus;
        q[j + 16] = (qs[j] >> 4) as i8 - minus;
    }
}

fn fifth_bits(qh: [u8; 4], q: &mut [i8]) {
    let h = u32::from_le_bytes(qh);
    for (j, v) in q.iter_mut().enumerate() {
        *v += (((h >> j) & 1) as i8) << 4;
    }
}

legacy_prepare!(
    BlockQ4_0,
    0,
    |b, q| nibbles(&b.qs, q, 8),
    0.0,
    |row, out| simd::unpack_nibbles(row, 8, &mut out.q)
);
legacy_prepare!(
    BlockQ4_1,
    32,
    |b, q| nibbles(&b.qs, q, 0),
    b.m.to_f32(),
    |row, out| simd::unpack_nibbles(row, 0, &mut out.q)
);
legacy_prepare!(
    BlockQ5_0,
    0,
    |b, q| {
        nibbles(&b.qs, q, 0);
        fifth_bits(b.qh, q);
        q.iter_mut().for_each(|v| *v -= 16);
    },
    0.0,
    |row, out| simd::unpack_nibbles(row, 16, &mut out.q)
);
legacy_prepare!(
    BlockQ5_1,
    32,
    |b, q| {
        nibbles(&b.qs, q, 0);
        fifth_bits(b.qh, q);
    },
    b.m.to_f32()
);
legacy_prepare!(BlockQ8_0, 0, |b, q| q.copy_from_slice(&b.qs), 0.0);
legacy_prepare!(BlockIQ4NL, 0, |b, q| grid_values(&IQ4_GRID, &b.qs, q), 0.0);

/// Grid values of 32 elements from their 16 bytes of indices.
fn grid_values(grid: &[i8; 16], qs: &[u8], q: &mut [i8]) {
    for j in 0..16 {
        q[j] = grid[(qs[j] & 0x0f) as usize];
        q[j + 16] = grid[(qs[j] >> 4) as usize];
    }
}

impl GemmFormat for BlockMXFP4 {
    const SUB: usize = 0;
    fn prepare(row: &[Self], out: &mut PreparedRow) {
        for (g, b) in row.iter().enumerate() {
            grid_values(&MXFP4_GRID, &b.qs, &mut out.q[g * 32..(g + 1) * 32]);
            let d = e8m0_to_f32_half(b.e);
            set_group_scale(out, g, d, d);
        }
    }
    fn prepare_act(row: &[Self::Act]) -> PreparedAct {
        act_view(row)
    }
}

impl GemmFormat for BlockIQ4XS {
    const SUB: usize = 0;
    fn prepare(row: &[Self], out: &mut PreparedRow) {
        for (i, b) in row.iter().enumerate() {
            let d = b.d.to_f32();
            for g in 0..8 {
                let at = i * QK_K + 32 * g;
                grid_values(
                    &IQ4_GRID,
                    &b.qs[16 * g..16 * g + 16],
                    &mut out.q[at..at + 32],
                );
                let dl = d * b.group_scale(g) as f32;
                set_group_scale(out, i * 8 + g, dl, dl);
            }
        }
    }
    fn prepare_act(row: &[Self::Act]) -> PreparedAct {
        q8k_act(row, 0)
    }
}

fn q8k_act(row: &[BlockQ8K], sub: usize) -> PreparedAct {
    let mut d = Vec::with_capacity(row.len() * 8);
    let mut sums = Vec::new();
    for b in row {
        d.extend(std::iter::repeat_n(b.d, 8));
        if sub == 16 {
            sums.extend(b.bsums.iter().map(|&s| b.d * s as f32));
        } else if sub == 32 {
            sums.extend(
                b.bsums
                    .chunks(2)
                    .map(|s| b.d * (s[0] as i32 + s[1] as i32) as f32),
            );
        }
    }
    PreparedAct {
        q: row.iter().flat_map(|b| b.qs.iter().copied()).collect(),
        d,
        sums,
    }
}

macro_rules! kquant_prepare {
    ($ty:ty, $subs:expr, $has_min:expr) => {
        kquant_prepare!($ty, $subs, $has_min, |_row, _out| false);
    };
    ($ty:ty, $subs:expr, $has_min:expr, |$row:ident, $out:ident| $fast:expr) => {
        impl GemmFormat for $ty {
            const SUB: usize = if $has_min { QK_K / $subs } else { 0 };
            fn prepare(row: &[Self], out: &mut PreparedRow) {
                const SUB_LEN: usize = QK_K / $subs;
                let fast = {
                    let ($row, $out) = (row, &mut *out);
                    $fast
                };
                for (i, b) in row.iter().enumerate() {
                    let u = b.unpack_scales();
                    if !fast {
                        out.q[i * QK_K..(i + 1) * QK_K].copy_from_slice(&b.unpack().q);
                    }
                    for g in 0..8 {
                        let first = u.scale[(g * 32) / SUB_LEN];
                        let second = u.scale[(g * 32 + 16) / SUB_LEN];
                        set_group_scale(out, i * 8 + g, first, second);
                    }
                    if $has_min {
                        for s in 0..$subs {
                            out.offset[i * $subs + s] = -u.min[s];
                        }
                    }
                }
            }
            fn prepare_act(row: &[Self::Act]) -> PreparedAct {
                q8k_act(row, Self::SUB)
            }
        }
    };
}

kquant_prepare!(BlockQ2K, 16, true);
kquant_prepare!(BlockQ3K, 16, false);
kquant_prepare!(BlockQ4K, 8, true, |row, out| simd::unpack_q4_k(
    row, &mut out.q
));
kquant_prepare!(BlockQ5K, 8, true);
kquant_prepare!(BlockQ6K, 16, false, |row, out| simd::unpack_q6_k(
    row, &mut out.q
));
