// ---------------------------------------------------------------------------
// Decode GEMVs for every block type without a kernel of its own (Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS, MXFP4 and the 1-3 bit
// i-quants), from one
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

// The 1-3 bit i-quants (src/quant/iq_lowbit.rs; grids from iq_tables.rs
// rendered ahead of the kernels). An item is 16 weights: two grid entries of
// 8 (IQ3: four of 4) inside one 32-element activation block. Signs negate
// weights: Σ w'x = Σ |w|x − 2 Σ (|w| & m)x, m the bytes of the negated ones,
// so the grid magnitudes go to dp4a as they are.

// 8 sign bits as 8 bytes (two words) of 0xFF (bit set) or 0.
__device__ __forceinline__ void sign_masks(u32 s, u32& m0, u32& m1) {
    m0 = (((s & 0x0F) * 0x00204081u) & 0x01010101u) * 0xFFu;
    m1 = ((((s >> 4) & 0x0F) * 0x00204081u) & 0x01010101u) * 0xFFu;
}

// Σ w'·x over 16 weights given as 4 words of magnitudes and 16 sign bits.
__device__ __forceinline__ int signed_dot16(const int (&w)[4], u32 signs, const int (&x)[4]) {
    u32 m[4];
    sign_masks(signs & 0xFF, m[0], m[1]);
    sign_masks(signs >> 8, m[2], m[3]);
    int s = 0, n = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        s = dp4a(w[k], x[k], s);
        n = dp4a((int)((u32)w[k] & m[k]), x[k], n);
    }
    return s - 2 * n;
}

__device__ __forceinline__ void grid8_words(unsigned long long e, int* w) {
    w[0] = (int)(u32)e;
    w[1] = (int)(u32)(e >> 32);
}

// IQ2_XXS: d, then per 32 weights a u32 of four 8-bit grid indices and a u32
// of four 7-bit sign indices and the 4-bit scale. Item i: group g = i / 2,
// entries 2h, 2h + 1 (h = i % 2).
struct TIQ2_XXS {
    static constexpr int QK = 256, BYTES = 66, ALIGN = 2, ITEMS = 16;
    struct Load { u32 d, idx, aux; };
    __device__ static Load load(const u8* b, int i) {
        const u8* q = b + 2 + 8 * (i / 2);
        return {(u32)*(const u16*)b, load_u32_2aligned(q), load_u32_2aligned(q + 4)};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int g = i / 2, h = i % 2, w[4], x[4];
        grid8_words(iq2xxs_grid[(l.idx >> (16 * h)) & 0xFF], w);
        grid8_words(iq2xxs_grid[(l.idx >> (16 * h + 8)) & 0xFF], w + 2);
        u32 signs = iq_ksigns((l.aux >> (14 * h)) & 127) | (iq_ksigns((l.aux >> (14 * h + 7)) & 127) << 8);
        load_x16(xb + 32 * g + 16 * h, x);
        float dl = half_to_float((u16)l.d) * (float)(2 * (int)(l.aux >> 28) + 1) * 0.125f;
        return dl * xdb[g] * (float)signed_dot16(w, signs, x);
    }
};

// IQ2_XS: d, qs[32 u16: 9-bit grid index, 7 sign bits], scales[8] (4 bits
// per 16 weights). Item i: qs[2i], qs[2i + 1], scale nibble i.
struct TIQ2_XS {
    static constexpr int QK = 256, BYTES = 74, ALIGN = 2, ITEMS = 16;
    struct Load { u32 d, q; u32 sc; };
    __device__ static Load load(const u8* b, int i) {
        return {(u32)*(const u16*)b, load_u32_2aligned(b + 2 + 4 * i), (u32)b[66 + i / 2]};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int w[4], x[4];
        u32 q0 = l.q & 0xFFFF, q1 = l.q >> 16;
        grid8_words(iq2xs_grid[q0 & 511], w);
        grid8_words(iq2xs_grid[q1 & 511], w + 2);
        u32 signs = iq_ksigns(q0 >> 9) | (iq_ksigns(q1 >> 9) << 8);
        load_x16(xb + 16 * i, x);
        int ls = (l.sc >> (4 * (i % 2))) & 15;
        float dl = half_to_float((u16)l.d) * (float)(2 * ls + 1) * 0.125f;
        return dl * xdb[i / 2] * (float)signed_dot16(w, signs, x);
    }
};

// IQ2_S: d, qs[32 index bytes, 32 sign bytes], qh[8] (2 index bits per 8
// weights), scales[8]. Item i: entries 2i, 2i + 1.
struct TIQ2_S {
    static constexpr int QK = 256, BYTES = 82, ALIGN = 2, ITEMS = 16;
    struct Load { u32 d, qs, signs, qh_sc; };
    __device__ static Load load(const u8* b, int i) {
        return {(u32)*(const u16*)b, (u32)*(const u16*)(b + 2 + 2 * i), (u32)*(const u16*)(b + 34 + 2 * i),
                (u32)b[66 + i / 2] | ((u32)b[74 + i / 2] << 8)};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int w[4], x[4];
        u32 qh = l.qh_sc & 0xFF;
        int e0 = 2 * (i % 2), e1 = e0 + 1; // entries within the 32-weight group
        grid8_words(iq2s_grid[(l.qs & 0xFF) | ((qh << (8 - 2 * e0)) & 0x300)], w);
        grid8_words(iq2s_grid[(l.qs >> 8) | ((qh << (8 - 2 * e1)) & 0x300)], w + 2);
        load_x16(xb + 16 * i, x);
        int ls = ((l.qh_sc >> 8) >> (4 * (i % 2))) & 15;
        float dl = half_to_float((u16)l.d) * (float)(2 * ls + 1) * 0.125f;
        return dl * xdb[i / 2] * (float)signed_dot16(w, l.signs, x);
    }
};

// IQ3_XXS: d, qs[64 grid indices of 4 weights], then per 32 weights a u32 of
// four 7-bit sign indices and the 4-bit scale. Item i: group g = i / 2,
// indices 4h .. 4h + 4.
struct TIQ3_XXS {
    static constexpr int QK = 256, BYTES = 98, ALIGN = 2, ITEMS = 16;
    struct Load { u32 d, idx, aux; };
    __device__ static Load load(const u8* b, int i) {
        int g = i / 2, h = i % 2;
        return {(u32)*(const u16*)b, load_u32_2aligned(b + 2 + 8 * g + 4 * h), load_u32_2aligned(b + 66 + 4 * g)};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int g = i / 2, h = i % 2, w[4], x[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = (int)iq3xxs_grid[(l.idx >> (8 * k)) & 0xFF];
        u32 signs = iq_ksigns((l.aux >> (14 * h)) & 127) | (iq_ksigns((l.aux >> (14 * h + 7)) & 127) << 8);
        load_x16(xb + 32 * g + 16 * h, x);
        float dl = half_to_float((u16)l.d) * (float)(2 * (int)(l.aux >> 28) + 1) * 0.25f;
        return dl * xdb[g] * (float)signed_dot16(w, signs, x);
    }
};

// IQ3_S: d, qs[64] (low 8 index bits), qh[8] (the 9th bit, one per index),
// signs[32], scales[4] (4 bits per 32). Item i: group g = i / 2, indices
// 4h .. 4h + 4.
struct TIQ3_S {
    static constexpr int QK = 256, BYTES = 110, ALIGN = 2, ITEMS = 16;
    struct Load { u32 d, idx, signs, qh_sc; };
    __device__ static Load load(const u8* b, int i) {
        int g = i / 2, h = i % 2;
        return {(u32)*(const u16*)b, load_u32_2aligned(b + 2 + 8 * g + 4 * h), (u32)*(const u16*)(b + 74 + 4 * g + 2 * h),
                (u32)b[66 + g] | ((u32)b[106 + g / 2] << 8)};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int g = i / 2, h = i % 2, w[4], x[4];
#pragma unroll
        for (int k = 0; k < 4; ++k)
            w[k] = (int)iq3s_grid[((l.idx >> (8 * k)) & 0xFF) | ((((l.qh_sc & 0xFF) >> (4 * h + k)) & 1) << 8)];
        load_x16(xb + 32 * g + 16 * h, x);
        int ls = ((l.qh_sc >> 8) >> (4 * (g % 2))) & 15;
        float dl = half_to_float((u16)l.d) * (float)(2 * ls + 1);
        return dl * xdb[g] * (float)signed_dot16(w, l.signs, x);
    }
};

// Σ over 8 weights of the IQ1 grid values (-1, 0, 1) times x, and Σ x.
__device__ __forceinline__ void iq1_dot8(unsigned long long e, int x0, int x1, int* sw, int* sx) {
    *sw = dp4a((int)(u32)e, x0, dp4a((int)(u32)(e >> 32), x1, 0));
    *sx = dp4a(ONES, x0, dp4a(ONES, x1, 0));
}

// IQ1_S: d, qs[32] (low 8 index bits), qh[8 u16: 3 index bits per 8
// weights, a 3-bit scale, the shift's sign] per 32. Item i: group g = i / 2,
// entries 2h, 2h + 1; weight = d · scale · (grid ± 1/8).
struct TIQ1_S {
    static constexpr int QK = 256, BYTES = 50, ALIGN = 2, ITEMS = 16;
    struct Load { u32 d, qs, qh; };
    __device__ static Load load(const u8* b, int i) {
        int g = i / 2, h = i % 2;
        return {(u32)*(const u16*)b, (u32)*(const u16*)(b + 2 + 4 * g + 2 * h), (u32)*(const u16*)(b + 34 + 2 * g)};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int g = i / 2, h = i % 2, x[4], sw0, sx0, sw1, sx1;
        load_x16(xb + 32 * g + 16 * h, x);
        int l0 = 2 * h, l1 = l0 + 1;
        iq1_dot8(iq1s_grid[(l.qs & 0xFF) | (((l.qh >> (3 * l0)) & 7) << 8)], x[0], x[1], &sw0, &sx0);
        iq1_dot8(iq1s_grid[(l.qs >> 8) | (((l.qh >> (3 * l1)) & 7) << 8)], x[2], x[3], &sw1, &sx1);
        float delta = l.qh & 0x8000 ? -0.125f : 0.125f;
        float dl = half_to_float((u16)l.d) * (float)(2 * (int)((l.qh >> 12) & 7) + 1);
        return dl * xdb[g] * ((float)(sw0 + sw1) + delta * (float)(sx0 + sx1));
    }
};

// IQ1_M: qs[32], qh[16] (per 8 weights a nibble: 3 index bits, the shift's
// sign), scales[8] (3 bits per 16 weights; the f16 scale in the top nibbles
// of the four u16). Item i: the 16 weights of scale i, entries 2i, 2i + 1.
struct TIQ1_M {
    static constexpr int QK = 256, BYTES = 56, ALIGN = 2, ITEMS = 16;
    struct Load { u32 qs, qh, sc01, sc23; };
    __device__ static Load load(const u8* b, int i) {
        return {(u32)*(const u16*)(b + 2 * i), (u32)b[32 + i], load_u32_2aligned(b + 48), load_u32_2aligned(b + 52)};
    }
    __device__ static float dot(const Load& l, int i, const i8* xb, const float* xdb) {
        int x[4], sw0, sx0, sw1, sx1;
        load_x16(xb + 16 * i, x);
        iq1_dot8(iq1s_grid[(l.qs & 0xFF) | ((l.qh << 8) & 0x700)], x[0], x[1], &sw0, &sx0);
        iq1_dot8(iq1s_grid[(l.qs >> 8) | ((l.qh << 4) & 0x700)], x[2], x[3], &sw1, &sx1);
        float d0 = l.qh & 0x08 ? -0.125f : 0.125f, d1 = l.qh & 0x80 ? -0.125f : 0.125f;
        u32 sc0 = l.sc01 & 0xFFFF, sc1 = l.sc01 >> 16, sc2 = l.sc23 & 0xFFFF, sc3 = l.sc23 >> 16;
        u16 dbits = (u16)((sc0 >> 12) | ((sc1 >> 8) & 0x00f0) | ((sc2 >> 4) & 0x0f00) | (sc3 & 0xf000));
        u32 sc = (i / 4) == 0 ? sc0 : (i / 4) == 1 ? sc1 : (i / 4) == 2 ? sc2 : sc3;
        int ls = (sc >> (3 * (i % 4))) & 7;
        float dl = half_to_float(dbits) * (float)(2 * ls + 1);
        return dl * xdb[i / 2] * ((float)(sw0 + sw1) + d0 * (float)sx0 + d1 * (float)sx1);
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
GEMV_TYPED_ALL(iq2_xxs, TIQ2_XXS)
GEMV_TYPED_ALL(iq2_xs, TIQ2_XS)
GEMV_TYPED_ALL(iq2_s, TIQ2_S)
GEMV_TYPED_ALL(iq3_xxs, TIQ3_XXS)
GEMV_TYPED_ALL(iq3_s, TIQ3_S)
GEMV_TYPED_ALL(iq1_s, TIQ1_S)
GEMV_TYPED_ALL(iq1_m, TIQ1_M)
