// ---------------------------------------------------------------------------
// Decode GEMVs for every block type without a kernel of its own (Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS, MXFP4), from one
// template on 8-bit activations
// (quantize_q8's layout: int8 values, a scale per 32 elements). Before these,
// such weights took the float `gemv8`, per element: a Q5_K_M 32B decoded at
// 22 t/s on an H100 where llama.cpp's integer kernels reached 69.5 (issue #23).
//
// A block type is one struct (the block layouts of ggml-common.h / src/quant):
//   QK, BYTES    elements and bytes of a block;
//   ALIGN        the alignment its loads need (rows start at multiples of it);
//   ITEMS        how many items a block splits into: the unit of one lane,
//                16 elements of weights (8 for Q4_0-like halves: 8 low and 8
//                high nibbles), all inside one 32-element activation block;
//   Load         what one item's loads bring: `load(block, item)` issues
//                them, so that a lane can have several items in flight;
//   dot(ld, item, xb, xdb)  the item's weights against the 8-bit activations
//                of its block (xb: the block's QK activations, xdb: their
//                scales), as a float.
// The sum of an item's activations (for types with a minimum or an offset)
// comes from dp4a against ones, so only the int8 values and scales are read.

// Σ w·x and Σ x over 16 int8 pairs held as 4 words each.
__device__ __forceinline__ void dot16(const int (&w)[4], const int (&x)[4], int* sw, int* sx) {
    int s = 0, t = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        s = dp4a(w[i], x[i], s);
        t = dp4a(ONES, x[i], t);
    }
    *sw = s;
    *sx = t;
}

__device__ __forceinline__ void load_x16(const i8* p, int (&x)[4]) {
    uint4 v = *(const uint4*)p; // activations: 16-byte chunks of whole blocks
    x[0] = (int)v.x;
    x[1] = (int)v.y;
    x[2] = (int)v.z;
    x[3] = (int)v.w;
}

// The 8 low and 8 high nibbles of the legacy 4/5-bit types: item i (0, 1)
// holds qs[8i .. 8i + 8], elements 8i + 0..8 (low) and 16 + 8i + 0..8 (high).
// x: those 16 activations as 4 words (low half first).
__device__ __forceinline__ void x_halves(const i8* xb, int item, int (&x)[4]) {
    uint2 a = *(const uint2*)(xb + 8 * item), b = *(const uint2*)(xb + 16 + 8 * item);
    x[0] = (int)a.x;
    x[1] = (int)a.y;
    x[2] = (int)b.x;
    x[3] = (int)b.y;
}

__device__ __forceinline__ void nibbles(u32 q0, u32 q1, int (&w)[4]) {
    w[0] = (int)(q0 & 0x0F0F0F0F);
    w[1] = (int)(q1 & 0x0F0F0F0F);
    w[2] = (int)((q0 >> 4) & 0x0F0F0F0F);
    w[3] = (int)((q1 >> 4) & 0x0F0F0F0F);
}

struct TQ4_0 {
    static constexpr int QK = 32, BYTES = 18, ALIGN = 2, ITEMS = 2;
    struct Load { u32 d, q0, q1; };
    __device__ static Load load(const u8* b, int i) {
        return {(u32)*(const u16*)b, load_u32_2aligned(b + 2 + 8 * i), load_u32_2aligned(b + 6 + 8 * i)};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int w[4], x[4], sw, sx;
        nibbles(l.q0, l.q1, w);
        x_halves(xb, i, x);
        dot16(w, x, &sw, &sx);
        return half_to_float((u16)l.d) * xdb[0] * (float)(sw - 8 * sx);
    }
};

struct TQ4_1 {
    static constexpr int QK = 32, BYTES = 20, ALIGN = 4, ITEMS = 2;
    struct Load { u32 dm; uint2 q; };
    __device__ static Load load(const u8* b, int i) {
        return {*(const u32*)b, uint2{*(const u32*)(b + 4 + 8 * i), *(const u32*)(b + 8 + 8 * i)}};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int w[4], x[4], sw, sx;
        nibbles(l.q.x, l.q.y, w);
        x_halves(xb, i, x);
        dot16(w, x, &sw, &sx);
        float d = half_to_float((u16)(l.dm & 0xFFFF)), m = half_to_float((u16)(l.dm >> 16));
        return xdb[0] * (d * (float)sw + m * (float)sx);
    }
};

// Q5_0 / Q5_1: the fifth bit of element e is bit e of qh.
__device__ __forceinline__ void fifth_bits(u32 qh, int i, int (&w)[4]) {
    w[0] |= (int)spread4_bit4((qh >> (8 * i)) & 0xF);
    w[1] |= (int)spread4_bit4((qh >> (8 * i + 4)) & 0xF);
    w[2] |= (int)spread4_bit4((qh >> (16 + 8 * i)) & 0xF);
    w[3] |= (int)spread4_bit4((qh >> (16 + 8 * i + 4)) & 0xF);
}

struct TQ5_0 {
    static constexpr int QK = 32, BYTES = 22, ALIGN = 2, ITEMS = 2;
    struct Load { u32 d, qh, q0, q1; };
    __device__ static Load load(const u8* b, int i) {
        return {(u32)*(const u16*)b, load_u32_2aligned(b + 2), load_u32_2aligned(b + 6 + 8 * i),
                load_u32_2aligned(b + 10 + 8 * i)};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int w[4], x[4], sw, sx;
        nibbles(l.q0, l.q1, w);
        fifth_bits(l.qh, i, w);
        x_halves(xb, i, x);
        dot16(w, x, &sw, &sx);
        return half_to_float((u16)l.d) * xdb[0] * (float)(sw - 16 * sx);
    }
};

struct TQ5_1 {
    static constexpr int QK = 32, BYTES = 24, ALIGN = 4, ITEMS = 2;
    struct Load { u32 dm, qh; uint2 q; };
    __device__ static Load load(const u8* b, int i) {
        return {*(const u32*)b, *(const u32*)(b + 4),
                uint2{*(const u32*)(b + 8 + 8 * i), *(const u32*)(b + 12 + 8 * i)}};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int w[4], x[4], sw, sx;
        nibbles(l.q.x, l.q.y, w);
        fifth_bits(l.qh, i, w);
        x_halves(xb, i, x);
        dot16(w, x, &sw, &sx);
        float d = half_to_float((u16)(l.dm & 0xFFFF)), m = half_to_float((u16)(l.dm >> 16));
        return xdb[0] * (d * (float)sw + m * (float)sx);
    }
};

// Q8_0: item i is elements 16i .. 16i + 16.
struct TQ8_0 {
    static constexpr int QK = 32, BYTES = 34, ALIGN = 2, ITEMS = 2;
    struct Load { u32 d; int q[4]; };
    __device__ static Load load(const u8* b, int i) {
        Load l;
        l.d = (u32)*(const u16*)b;
#pragma unroll
        for (int k = 0; k < 4; ++k) l.q[k] = (int)load_u32_2aligned(b + 2 + 16 * i + 4 * k);
        return l;
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int x[4];
        load_x16(xb + 16 * i, x);
        int s = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) s = dp4a(l.q[k], x[k], s);
        return half_to_float((u16)l.d) * xdb[0] * (float)s;
    }
};

// The 2-bit planes of Q2_K and Q3_K: item s (16 elements, one scale) is
// plane j = (s % 8) / 2 of the 32 bytes qs[32n ..] (n = s / 8), its bytes
// l0 = 16 (s % 2) .. l0 + 16; elements 128n + 32j + l0 + 0..16.
__device__ __forceinline__ int k_plane_first(int s) { return 128 * (s / 8) + 32 * ((s % 8) / 2) + 16 * (s % 2); }

// Q2_K: scales[16] (low nibble scale, high nibble minimum), qs[64], d, dmin.
struct TQ2_K {
    static constexpr int QK = 256, BYTES = 84, ALIGN = 4, ITEMS = 16;
    struct Load { u32 dm, sc; u32 q[4]; };
    __device__ static Load load(const u8* b, int s) {
        Load l;
        l.dm = *(const u32*)(b + 80);
        l.sc = (u32)b[s];
        const u8* q = b + 16 + 32 * (s / 8) + 16 * (s % 2);
#pragma unroll
        for (int k = 0; k < 4; ++k) l.q[k] = *(const u32*)(q + 4 * k);
        return l;
    }
    __device__ static float dot(const Load& l, int s, const i8* xb, const float* xdb) {
        int e0 = k_plane_first(s), sh = 2 * ((s % 8) / 2);
        int w[4], x[4], sw, sx;
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = (int)((l.q[k] >> sh) & 0x03030303);
        load_x16(xb + e0, x);
        dot16(w, x, &sw, &sx);
        float d = half_to_float((u16)(l.dm & 0xFFFF)), dmin = half_to_float((u16)(l.dm >> 16));
        return xdb[e0 / 32] * (d * (float)(l.sc & 0xF) * (float)sw - dmin * (float)(l.sc >> 4) * (float)sx);
    }
};

// Q3_K: hmask[32], qs[64], scales[12] (6-bit, offset 32), d. q = the 2-bit
// value, minus 4 where the element's hmask bit (bit 4n + j of hmask[l]) is clear.
struct TQ3_K {
    static constexpr int QK = 256, BYTES = 110, ALIGN = 2, ITEMS = 16;
    struct Load { u32 d; int scale; u32 q[4], h[4]; };
    __device__ static Load load(const u8* b, int s) {
        Load l;
        l.d = (u32)*(const u16*)(b + 108);
        const u8* sc = b + 96;
        int low = s < 8 ? (sc[s] & 0xF) : (sc[s - 8] >> 4);
        int high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
        l.scale = (low | (high << 4)) - 32;
        const u8* q = b + 32 + 32 * (s / 8) + 16 * (s % 2);
        const u8* h = b + 16 * (s % 2);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            l.q[k] = load_u32_2aligned(q + 4 * k);
            l.h[k] = load_u32_2aligned(h + 4 * k);
        }
        return l;
    }
    __device__ static float dot(const Load& l, int s, const i8* xb, const float* xdb) {
        int e0 = k_plane_first(s), j = (s % 8) / 2, hb = 4 * (s / 8) + j;
        int w[4], x[4], sw, sx;
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = (int)(((l.q[k] >> (2 * j)) & 0x03030303) | (((l.h[k] >> hb) & ONES) << 2));
        load_x16(xb + e0, x);
        dot16(w, x, &sw, &sx);
        return half_to_float((u16)l.d) * (float)l.scale * xdb[e0 / 32] * (float)(sw - 4 * sx);
    }
};

// Q5_K: d, dmin, scales[12], qh[32], qs[128]. Item i: sub-block s = i / 2
// (elements 32s ..), its half l0 = 16 (i % 2): the nibbles (low for even s,
// high for odd) of qs[32 (s / 2) + l0 ..] and bit s of qh[l0 ..].
struct TQ5_K {
    static constexpr int QK = 256, BYTES = 176, ALIGN = 16, ITEMS = 16;
    struct Load { uint4 hdr, qh, qs; };
    __device__ static Load load(const u8* b, int i) {
        int s = i / 2, l0 = 16 * (i % 2);
        return {*(const uint4*)b, *(const uint4*)(b + 16 + l0), *(const uint4*)(b + 48 + 32 * (s / 2) + l0)};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int s = i / 2, l0 = 16 * (i % 2), sh = 4 * (s % 2);
        u32 qs[4] = {l.qs.x, l.qs.y, l.qs.z, l.qs.w}, qh[4] = {l.qh.x, l.qh.y, l.qh.z, l.qh.w};
        int w[4], x[4], sw, sx;
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = (int)(((qs[k] >> sh) & 0x0F0F0F0F) | (((qh[k] >> s) & ONES) << 4));
        load_x16(xb + 32 * s + l0, x);
        dot16(w, x, &sw, &sx);
        int sc, m;
        scale_min_hdr(l.hdr, s, &sc, &m);
        float d = half_to_float((u16)(l.hdr.x & 0xFFFF)), dmin = half_to_float((u16)(l.hdr.x >> 16));
        return xdb[s] * (d * (float)sc * (float)sw - dmin * (float)m * (float)sx);
    }
};

// The grid values of 8 low and 8 high nibbles (q0, q1: 8 bytes of indices).
__device__ __forceinline__ void grid_nibbles(u32 q0, u32 q1, u32 t0, u32 t1, u32 t2, u32 t3, int (&w)[4]) {
    w[0] = grid_lookup4(q0 & 0x0F0F0F0F, t0, t1, t2, t3);
    w[1] = grid_lookup4(q1 & 0x0F0F0F0F, t0, t1, t2, t3);
    w[2] = grid_lookup4((q0 >> 4) & 0x0F0F0F0F, t0, t1, t2, t3);
    w[3] = grid_lookup4((q1 >> 4) & 0x0F0F0F0F, t0, t1, t2, t3);
}

__device__ __forceinline__ int dot16_only(const int (&w)[4], const int (&x)[4]) {
    int s = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) s = dp4a(w[i], x[i], s);
    return s;
}

// IQ4_NL: d, qs[16]; items as Q4_0's, values from the IQ4 grid.
struct TIQ4_NL {
    static constexpr int QK = 32, BYTES = 18, ALIGN = 2, ITEMS = 2;
    struct Load { u32 d, q0, q1; };
    __device__ static Load load(const u8* b, int i) {
        return {(u32)*(const u16*)b, load_u32_2aligned(b + 2 + 8 * i), load_u32_2aligned(b + 6 + 8 * i)};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int w[4], x[4];
        grid_nibbles(l.q0, l.q1, IQ4_GRID_WORDS, w);
        x_halves(xb, i, x);
        return half_to_float((u16)l.d) * xdb[0] * (float)dot16_only(w, x);
    }
};

// IQ4_XS: d, scales_h, scales_l[4], qs[128]. Item i: group g = i / 2 (32
// elements, qs[16g ..]), its half h = i % 2 as Q4_0's items.
struct TIQ4_XS {
    static constexpr int QK = 256, BYTES = 136, ALIGN = 4, ITEMS = 16;
    struct Load { u32 dsh, sl; uint2 q; };
    __device__ static Load load(const u8* b, int i) {
        const u8* q = b + 8 + 16 * (i / 2) + 8 * (i % 2);
        return {*(const u32*)b, *(const u32*)(b + 4), uint2{*(const u32*)q, *(const u32*)(q + 4)}};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int g = i / 2;
        int ls = ((l.sl >> (4 * g)) & 0xF) | (((l.dsh >> (16 + 2 * g)) & 3) << 4);
        int w[4], x[4];
        grid_nibbles(l.q.x, l.q.y, IQ4_GRID_WORDS, w);
        x_halves(xb + 32 * g, i % 2, x);
        return half_to_float((u16)(l.dsh & 0xFFFF)) * (float)(ls - 32) * xdb[g] * (float)dot16_only(w, x);
    }
};

// MXFP4: e, qs[16] (17-byte blocks: byte loads); items as Q4_0's.
struct TMXFP4 {
    static constexpr int QK = 32, BYTES = 17, ALIGN = 1, ITEMS = 2;
    struct Load { u32 e, q0, q1; };
    __device__ static u32 bytes4(const u8* p) {
        return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
    }
    __device__ static Load load(const u8* b, int i) { return {(u32)b[0], bytes4(b + 1 + 8 * i), bytes4(b + 5 + 8 * i)}; }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int w[4], x[4];
        grid_nibbles(l.q0, l.q1, MXFP4_GRID_WORDS, w);
        x_halves(xb, i, x);
        return e8m0_half(l.e) * xdb[0] * (float)dot16_only(w, x);
    }
};

// One warp per row; lane k takes items k, k + 32, ... of the row's blocks in
// rounds of U items, all loads of a round issued before any is used (decode
// is bound by how many bytes are in flight, as in the Q4_K kernels).
template <class T, int NT>
__device__ __forceinline__ void gemv_typed_t(const u8* __restrict__ w, const i8* __restrict__ xq,
                                             const float* __restrict__ xd, float* out, int rows, int cols,
                                             int n) {
    constexpr int U = 4;
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= rows) return;
    int nb = cols / T::QK, nxb = cols / 32, items = nb * T::ITEMS;
    const u8* row = w + (size_t)warp * nb * T::BYTES;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int first = lane; first < items; first += 32 * U) {
        typename T::Load ld[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            int it = first + 32 * u;
            if (it < items) ld[u] = T::load(row + (size_t)(it / T::ITEMS) * T::BYTES, it % T::ITEMS);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            int it = first + 32 * u;
            if (it >= items) break;
            int blk = it / T::ITEMS, item = it % T::ITEMS;
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t >= n) break;
                acc[t] += T::dot(ld[u], item, xq + (size_t)t * cols + (size_t)blk * T::QK,
                                 xd + (size_t)t * nxb + (size_t)blk * (T::QK / 32));
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t >= n) break;
        float sum = warp_sum(acc[t]);
        if (lane == 0) out[(size_t)t * rows + warp] = sum;
    }
}

// The entries take the Q4_K/Q6_K kernels' arguments (xs, the half-block
// sums, unused: the sums come from dp4a), so one launch serves them all.
#define GEMV_TYPED(name, T, NT)                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_q8_##name##_##NT(                                 \
        const u8* __restrict__ w, const i8* __restrict__ xq, const float* __restrict__ xd,                   \
        const float* __restrict__ xs, float* out, int rows, int cols, int n) {                               \
        gemv_typed_t<T, NT>(w, xq, xd, out, rows, cols, n);                                                  \
    }
#define GEMV_TYPED_ALL(name, T)                                                                              \
    GEMV_TYPED(name, T, 1)                                                                                   \
    GEMV_TYPED(name, T, 2)                                                                                   \
    GEMV_TYPED(name, T, 4)                                                                                   \
    GEMV_TYPED(name, T, 8)
GEMV_TYPED_ALL(q4_0, TQ4_0)
GEMV_TYPED_ALL(q4_1, TQ4_1)
GEMV_TYPED_ALL(q5_0, TQ5_0)
GEMV_TYPED_ALL(q5_1, TQ5_1)
GEMV_TYPED_ALL(q8_0, TQ8_0)
GEMV_TYPED_ALL(q2_k, TQ2_K)
GEMV_TYPED_ALL(q3_k, TQ3_K)
GEMV_TYPED_ALL(q5_k, TQ5_K)
GEMV_TYPED_ALL(iq4_nl, TIQ4_NL)
GEMV_TYPED_ALL(iq4_xs, TIQ4_XS)
GEMV_TYPED_ALL(mxfp4, TMXFP4)
