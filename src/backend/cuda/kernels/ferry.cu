// ferry's CUDA kernels, compiled at run time by NVRTC for the card's
// architecture (see src/backend/cuda/mod.rs), one concern per file: this one
// has the types, the block decoders, norms, element-wise kernels, RoPE, the
// KV store and decode attention; attention_prompt.cu, gemv_kquants.cu, gemv_persistent.cu,
// gemv_types.cu and convert.cu follow it in one source. Activations are row-major f32
// [n, width]; weights keep their GGUF block format on the device and are
// decoded here, element by element, with the same layouts as src/quant.

// No headers: f16 values are handled as their 16-bit patterns and converted
// with the PTX instructions, so NVRTC needs nothing from the toolkit.
typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef u64 size_t_;
#define size_t size_t_
#define INF_NEG __int_as_float(0xff800000)

// Programmatic dependent launch (sm_90 and later). The decode step's kernels
// are launched so that each may start before the previous one has finished
// (`launch_chained` in mod.rs): everything before `chain_wait()` may only
// read what no earlier kernel writes (the weights), everything after it sees
// the previous kernel's writes, complete. `chain_next()` lets the next kernel
// of the stream start launching; a kernel that never calls it lets it go when
// it exits. Launched the ordinary way, both are no-ops.
__device__ __forceinline__ void chain_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void chain_next() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

__device__ __forceinline__ float half_to_float(u16 h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 float_to_half(float f) {
    u16 h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
}

/// Round to f16 precision and back.
__device__ __forceinline__ float round_half(float f) { return half_to_float(float_to_half(f)); }

// GGUF type ids.
#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q2_K 10
#define T_Q3_K 11
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_BF16 30
#define T_IQ4_NL 20
#define T_IQ4_XS 23
#define T_MXFP4 39
#define T_IQ2_XXS 16
#define T_IQ2_XS 17
#define T_IQ3_XXS 18
#define T_IQ1_S 19
#define T_IQ3_S 21
#define T_IQ2_S 22
#define T_IQ1_M 29

// The 1-3 bit i-quants' grids (iq2xxs_grid … iq1s_grid) come before this
// file in the kernel source, rendered from src/quant/iq_tables.rs. Byte j of
// an entry is the j-th of its 8 (u64) or 4 (u32) values.
__device__ __forceinline__ int grid_byte(unsigned long long entry, int j) {
    return (int)(i8)((entry >> (8 * j)) & 0xFF);
}
// ksigns_iq2xs: 7 stored sign bits and their parity as the 8th.
__device__ __forceinline__ u32 iq_ksigns(u32 s7) { return s7 | ((__popc(s7) & 1) << 7); }
__device__ __forceinline__ u32 u32_bytes(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}
__device__ __forceinline__ u32 u16_bytes(const u8* p) { return (u32)p[0] | ((u32)p[1] << 8); }

// The 16-value grids of IQ4_NL/IQ4_XS (kvalues_iq4nl) and of MXFP4 (E2M1
// values doubled), packed 4 per word for byte-permute lookups
// (grid_lookup4 below), and element k of each.
#define IQ4_GRID_WORDS 0xBFAD9881u, 0xF6EADDCFu, 0x26190D01u, 0x71594535u
#define MXFP4_GRID_WORDS 0x03020100u, 0x0C080604u, 0xFDFEFF00u, 0xF4F8FAFCu
__device__ __forceinline__ int grid_value(u32 w0, u32 w1, u32 w2, u32 w3, int k) {
    u32 w = k < 4 ? w0 : k < 8 ? w1 : k < 12 ? w2 : w3;
    return (int)(i8)((w >> (8 * (k & 3))) & 0xFF);
}
__device__ __forceinline__ int iq4_grid(int k) { return grid_value(IQ4_GRID_WORDS, k); }
__device__ __forceinline__ int mxfp4_grid(int k) { return grid_value(MXFP4_GRID_WORDS, k); }

#define ONES 0x01010101

// Four bits of `b` (bits 0..3) moved to bit 4 of bytes 0..3.
__device__ __forceinline__ u32 spread4_bit4(u32 b) {
    return ((b & 1) << 4) | ((b & 2) << 11) | ((b & 4) << 18) | ((b & 8) << 25);
}

// Four grid values (signed bytes) for the four 4-bit indices in the low
// nibbles of `idx`'s bytes, from the 16-byte table t0..t3: two byte
// permutes (entries 0-7 and 8-15) and bit 3 of each index choosing.
__device__ __forceinline__ int grid_lookup4(u32 idx, u32 t0, u32 t1, u32 t2, u32 t3) {
    u32 sel = (idx & 0x7u) | ((idx >> 4) & 0x70u) | ((idx >> 8) & 0x700u) | ((idx >> 12) & 0x7000u);
    u32 lo = __byte_perm(t0, t1, sel), hi = __byte_perm(t2, t3, sel);
    u32 m = ((idx >> 3) & ONES) * 0xFFu;
    return (int)((lo & ~m) | (hi & m));
}

__device__ __forceinline__ u32 load_u32_2aligned(const u8* p) {
    const u16* h = (const u16*)p;
    return (u32)h[0] | ((u32)h[1] << 16);
}

// GGML_E8M0_TO_FP32_HALF: 2^(e - 128), exactly.
__device__ __forceinline__ float e8m0_half(u32 e) {
    return __uint_as_float(e < 2 ? 0x00200000u << e : (e - 1) << 23);
}

__device__ __forceinline__ float h2f(const u8* p) {
    return half_to_float((u16)p[0] | ((u16)p[1] << 8));
}

__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* d, int* m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Element i of the block at `b` (block layouts as in ggml-common.h / src/quant).
__device__ float dequant(int type, const u8* b, int i) {
    switch (type) {
    case T_F32: return *(const float*)b;
    case T_F16: return h2f(b);
    case T_BF16: { u32 v = ((u32)b[0] | ((u32)b[1] << 8)) << 16; return __uint_as_float(v); }
    case T_Q4_0: {
        int q = i < 16 ? (b[2 + i] & 0xF) : (b[2 + i - 16] >> 4);
        return h2f(b) * (float)(q - 8);
    }
    case T_Q4_1: {
        int q = i < 16 ? (b[4 + i] & 0xF) : (b[4 + i - 16] >> 4);
        return h2f(b) * (float)q + h2f(b + 2);
    }
    case T_Q5_0: {
        u32 qh = (u32)b[2] | ((u32)b[3] << 8) | ((u32)b[4] << 16) | ((u32)b[5] << 24);
        int q = i < 16 ? (b[6 + i] & 0xF) : (b[6 + i - 16] >> 4);
        q |= ((qh >> i) & 1) << 4;
        return h2f(b) * (float)(q - 16);
    }
    case T_Q5_1: {
        u32 qh = (u32)b[4] | ((u32)b[5] << 8) | ((u32)b[6] << 16) | ((u32)b[7] << 24);
        int q = i < 16 ? (b[8 + i] & 0xF) : (b[8 + i - 16] >> 4);
        q |= ((qh >> i) & 1) << 4;
        return h2f(b) * (float)q + h2f(b + 2);
    }
    case T_Q8_0: return (float)((const i8*)(b + 2))[i] * h2f(b);
    case T_Q2_K: {
        // scales[16] qs[64] d dmin
        int n = i / 128, j = (i % 128) / 32, l = i % 32, s = i / 16;
        int q = (b[16 + 32 * n + l] >> (2 * j)) & 3;
        float d = h2f(b + 80), dmin = h2f(b + 82);
        return d * (float)(b[s] & 0xF) * (float)q - dmin * (float)(b[s] >> 4);
    }
    case T_Q3_K: {
        // hmask[32] qs[64] scales[12] d
        int n = i / 128, j = (i % 128) / 32, l = i % 32, s = i / 16;
        const u8* sc = b + 96;
        int low = s < 8 ? (sc[s] & 0xF) : (sc[s - 8] >> 4);
        int high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
        int scale = (low | (high << 4)) - 32;
        int q = (b[32 + 32 * n + l] >> (2 * j)) & 3;
        if (!((b[l] >> (4 * n + j)) & 1)) q -= 4;
        return h2f(b + 108) * (float)scale * (float)q;
    }
    case T_Q4_K: {
        // d dmin scales[12] qs[128]
        int c = i / 64, half = (i % 64) / 32, l = i % 32, s = i / 32;
        int sc, m;
        scale_min_k4(s, b + 4, &sc, &m);
        int q = (b[16 + 32 * c + l] >> (4 * half)) & 0xF;
        return h2f(b) * (float)sc * (float)q - h2f(b + 2) * (float)m;
    }
    case T_Q5_K: {
        // d dmin scales[12] qh[32] qs[128]
        int c = i / 64, half = (i % 64) / 32, l = i % 32, s = i / 32;
        int sc, m;
        scale_min_k4(s, b + 4, &sc, &m);
        int q = (b[48 + 32 * c + l] >> (4 * half)) & 0xF;
        q |= ((b[16 + l] >> (2 * c + half)) & 1) << 4;
        return h2f(b) * (float)sc * (float)q - h2f(b + 2) * (float)m;
    }
    case T_Q6_K: {
        // ql[128] qh[64] scales[16] d
        int n = i / 128, k = (i % 128) / 32, l = i % 32;
        int low = (b[64 * n + l + 32 * (k & 1)] >> (4 * (k / 2))) & 0xF;
        int high = (b[128 + 32 * n + l] >> (2 * k)) & 3;
        int q = (low | (high << 4)) - 32;
        return h2f(b + 208) * (float)((const i8*)(b + 192))[i / 16] * (float)q;
    }
    case T_IQ4_NL: {
        // d qs[16]
        int q = i < 16 ? (b[2 + i] & 0xF) : (b[2 + i - 16] >> 4);
        return h2f(b) * (float)iq4_grid(q);
    }
    case T_IQ4_XS: {
        // d scales_h(u16) scales_l[4] qs[128]; group g of 32: qs[16g ..]
        int g = i / 32, j = i % 32;
        u32 sh = (u32)b[2] | ((u32)b[3] << 8);
        int ls = ((b[4 + g / 2] >> (4 * (g % 2))) & 0xF) | (((sh >> (2 * g)) & 3) << 4);
        int q = j < 16 ? (b[8 + 16 * g + j] & 0xF) : (b[8 + 16 * g + j - 16] >> 4);
        return h2f(b) * (float)(ls - 32) * (float)iq4_grid(q);
    }
    case T_MXFP4: {
        // e qs[16]
        int q = i < 16 ? (b[1 + i] & 0xF) : (b[1 + i - 16] >> 4);
        return e8m0_half(b[0]) * (float)mxfp4_grid(q);
    }
    // The 1-3 bit i-quants (src/quant/iq_lowbit.rs): weight i of 256 is
    // d · scale · C · grid value, negated by its sign bit, or for IQ1
    // d · scale · (grid value ± 1/8), in the CPU's float order.
    case T_IQ2_XXS: {
        // d qs[32 u16]: per 32, four grid indices then signs and scale (u32 each)
        int g = i / 32, l = (i % 32) / 8, j = i % 8;
        u32 aux = u32_bytes(b + 2 + 8 * g + 4);
        int v = grid_byte(iq2xxs_grid[b[2 + 8 * g + l]], j);
        float x = h2f(b) * (float)(2 * (int)(aux >> 28) + 1) * 0.125f * (float)v;
        return (iq_ksigns((aux >> (7 * l)) & 127) >> j) & 1 ? -x : x;
    }
    case T_IQ2_XS: {
        // d qs[32 u16: 9-bit index, 7 sign bits] scales[8]
        u32 q = u16_bytes(b + 2 + 2 * (i / 8));
        int v = grid_byte(iq2xs_grid[q & 511], i % 8);
        int ls = (b[66 + i / 32] >> (4 * ((i % 32) / 16))) & 15;
        float x = h2f(b) * (float)(2 * ls + 1) * 0.125f * (float)v;
        return (iq_ksigns(q >> 9) >> (i % 8)) & 1 ? -x : x;
    }
    case T_IQ2_S: {
        // d qs[64: 32 index bytes, 32 sign bytes] qh[8] scales[8]
        int e = i / 8, l = e % 4;
        int idx = b[2 + e] | ((b[66 + i / 32] << (8 - 2 * l)) & 0x300);
        int v = grid_byte(iq2s_grid[idx], i % 8);
        int ls = (b[74 + i / 32] >> (4 * ((i % 32) / 16))) & 15;
        float x = h2f(b) * (float)(2 * ls + 1) * 0.125f * (float)v;
        return (b[2 + 32 + e] >> (i % 8)) & 1 ? -x : x;
    }
    case T_IQ3_XXS: {
        // d qs[64 grid indices] then per 32 a u32 of signs and scale
        int g = i / 32, l = (i % 32) / 8, h = (i % 8) / 4;
        u32 aux = u32_bytes(b + 2 + 64 + 4 * g);
        int v = grid_byte(iq3xxs_grid[b[2 + 8 * g + 2 * l + h]], i % 4);
        float x = h2f(b) * (float)(2 * (int)(aux >> 28) + 1) * 0.25f * (float)v;
        return (iq_ksigns((aux >> (7 * l)) & 127) >> (i % 8)) & 1 ? -x : x;
    }
    case T_IQ3_S: {
        // d qs[64] qh[8] signs[32] scales[4]
        int g = i / 32, l = (i % 32) / 8, h = (i % 8) / 4;
        int idx = b[2 + 8 * g + 2 * l + h] | (((b[66 + g] >> (2 * l + h)) & 1) << 8);
        int v = grid_byte(iq3s_grid[idx], i % 4);
        int ls = (b[106 + g / 2] >> (4 * (g % 2))) & 15;
        float x = h2f(b) * (float)(2 * ls + 1) * 1.0f * (float)v;
        return (b[74 + 4 * g + l] >> (i % 8)) & 1 ? -x : x;
    }
    case T_IQ1_S: {
        // d qs[32] qh[8 u16: 3 index bits per 8, 3-bit scale, shift sign]
        int g = i / 32, l = (i % 32) / 8;
        u32 qh = u16_bytes(b + 34 + 2 * g);
        int v = grid_byte(iq1s_grid[b[2 + 4 * g + l] | (((qh >> (3 * l)) & 7) << 8)], i % 8);
        float dl = h2f(b) * (float)(2 * (int)((qh >> 12) & 7) + 1);
        return dl * ((float)v + (qh & 0x8000 ? -0.125f : 0.125f));
    }
    case T_IQ1_M: {
        // qs[32] qh[16: a nibble per 8] scales[8: 4 u16, f16 in the top nibbles]
        int g = i / 32, l = (i % 32) / 8, s16 = i / 16;
        u32 qh = b[32 + 2 * g + l / 2];
        int hi = l % 2 == 0 ? (qh << 8) & 0x700 : (qh << 4) & 0x700;
        int v = grid_byte(iq1s_grid[b[4 * g + l] | hi], i % 8);
        u32 sc0 = u16_bytes(b + 48), sc1 = u16_bytes(b + 50), sc2 = u16_bytes(b + 52), sc3 = u16_bytes(b + 54);
        u16 dbits = (u16)((sc0 >> 12) | ((sc1 >> 8) & 0x00f0) | ((sc2 >> 4) & 0x0f00) | (sc3 & 0xf000));
        int ls = (u16_bytes(b + 48 + 2 * (s16 / 4)) >> (3 * (s16 % 4))) & 7;
        float dl = half_to_float(dbits) * (float)(2 * ls + 1);
        return dl * ((float)v + (qh & (l % 2 == 0 ? 0x08 : 0x80) ? -0.125f : 0.125f));
    }
    }
    return 0.0f;
}

// Element e of a row of blocks.
__device__ __forceinline__ float dequant_row(int type, const u8* row, int block_elems, int block_bytes, int e) {
    return dequant(type, row + (size_t)(e / block_elems) * block_bytes, e % block_elems);
}

// out[r, c] (f16) = W[r, c], for the whole matrix.
extern "C" __global__ void dequant_f16(const u8* w, u16* out, int type, int rows, int cols,
                                       int block_elems, int block_bytes) {
    size_t n = (size_t)rows * cols;
    size_t row_bytes = (size_t)(cols / block_elems) * block_bytes;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        size_t r = idx / cols;
        int c = (int)(idx % cols);
        out[idx] = float_to_half(dequant_row(type, w + r * row_bytes, block_elems, block_bytes, c));
    }
}

extern "C" __global__ void f32_to_f16(const float* x, u16* out, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = float_to_half(x[i]);
}

// out[t, r] = Σ_c x[t, c] · W[r, c] for n ≤ 8 tokens: one warp per row reads
// the row's blocks once for all tokens.
extern "C" __global__ void gemv(const u8* w, const float* x, float* out, int type, int rows, int cols, int n,
                                int block_elems, int block_bytes) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= rows) return;
    const u8* row = w + (size_t)warp * (cols / block_elems) * block_bytes;
    float acc[8];
    for (int t = 0; t < 8; ++t) acc[t] = 0.0f;
    for (int c = lane; c < cols; c += 32) {
        float v = dequant_row(type, row, block_elems, block_bytes, c);
        for (int t = 0; t < n; ++t) acc[t] += v * x[(size_t)t * cols + c];
    }
    for (int t = 0; t < n; ++t) {
        float s = acc[t];
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
        if (lane == 0) out[(size_t)t * rows + warp] = s;
    }
}

// Elements i0..i0+8 (i0 a multiple of 8) of the block at `b`, decoded with the
// block's scales read once. Formats without a fast path fall back to `dequant`.
__device__ __forceinline__ void dequant8(int type, const u8* b, int i0, float v[8]) {
    switch (type) {
    case T_F32:
        for (int k = 0; k < 8; ++k) v[k] = ((const float*)b)[k];
        return;
    case T_F16:
        for (int k = 0; k < 8; ++k) v[k] = h2f(b + 2 * k);
        return;
    case T_Q4_0: case T_Q4_1: {
        int off = type == T_Q4_0 ? 2 : 4;
        float d = h2f(b), m = type == T_Q4_0 ? -8.0f * d : h2f(b + 2);
        const u8* q = b + off + (i0 & 15);
        int shift = i0 < 16 ? 0 : 4;
        for (int k = 0; k < 8; ++k) v[k] = d * (float)((q[k] >> shift) & 0xF) + m;
        return;
    }
    case T_Q5_0: case T_Q5_1: {
        int qoff = type == T_Q5_0 ? 6 : 8, hoff = type == T_Q5_0 ? 2 : 4;
        float d = h2f(b), m = type == T_Q5_0 ? -16.0f * d : h2f(b + 2);
        u32 qh = (u32)b[hoff] | ((u32)b[hoff + 1] << 8) | ((u32)b[hoff + 2] << 16) | ((u32)b[hoff + 3] << 24);
        const u8* q = b + qoff + (i0 & 15);
        int shift = i0 < 16 ? 0 : 4;
        for (int k = 0; k < 8; ++k) {
            int x = ((q[k] >> shift) & 0xF) | (((qh >> (i0 + k)) & 1) << 4);
            v[k] = d * (float)x + m;
        }
        return;
    }
    case T_Q8_0: {
        float d = h2f(b);
        const i8* q = (const i8*)(b + 2) + i0;
        for (int k = 0; k < 8; ++k) v[k] = d * (float)q[k];
        return;
    }
    case T_Q4_K: case T_Q5_K: {
        // 8 elements share one 32-element sub-block: one scale, one minimum.
        int c = i0 / 64, half = (i0 % 64) / 32, l = i0 % 32, s = i0 / 32;
        int sc, mn;
        scale_min_k4(s, b + 4, &sc, &mn);
        float d = h2f(b) * (float)sc, m = h2f(b + 2) * (float)mn;
        if (type == T_Q4_K) {
            const u8* q = b + 16 + 32 * c + l;
            for (int k = 0; k < 8; ++k) v[k] = d * (float)((q[k] >> (4 * half)) & 0xF) - m;
        } else {
            const u8* q = b + 48 + 32 * c + l;
            const u8* h = b + 16 + l;
            for (int k = 0; k < 8; ++k) {
                int x = ((q[k] >> (4 * half)) & 0xF) | (((h[k] >> (2 * c + half)) & 1) << 4);
                v[k] = d * (float)x - m;
            }
        }
        return;
    }
    case T_Q6_K: {
        int n = i0 / 128, kk = (i0 % 128) / 32, l = i0 % 32;
        float d = h2f(b + 208) * (float)((const i8*)(b + 192))[i0 / 16];
        const u8* ql = b + 64 * n + l + 32 * (kk & 1);
        const u8* qh = b + 128 + 32 * n + l;
        for (int k = 0; k < 8; ++k) {
            int x = ((ql[k] >> (4 * (kk / 2))) & 0xF) | (((qh[k] >> (2 * kk)) & 3) << 4);
            v[k] = d * (float)(x - 32);
        }
        return;
    }
    default:
        for (int k = 0; k < 8; ++k) v[k] = dequant(type, b, i0 + k);
        return;
    }
}

// Elements e0..e0+8 (e0 a multiple of 8) of a row of any type.
__device__ __forceinline__ void decode_row8(int type, const u8* row, int e0, int block_elems, int block_bytes,
                                            float v[8]) {
    if (type == T_BF16) {
        for (int k = 0; k < 8; ++k) v[k] = dequant(type, row + (size_t)(e0 + k) * block_bytes, 0);
    } else if (block_elems == 1) {
        dequant8(type, row + (size_t)e0 * block_bytes, 0, v);
    } else {
        dequant8(type, row + (size_t)(e0 / block_elems) * block_bytes, e0 % block_elems, v);
    }
}

// out[t, r] = Σ_c x[t, c] · W[r, c] for n ≤ 8 tokens, cols a multiple of 8:
// one warp per row; in each pass the 32 lanes take 8 consecutive elements
// each (256 per pass), so a pass reads whole blocks with neighbouring lanes
// on neighbouring bytes, and each lane decodes its block's scales once.
extern "C" __global__ void gemv8(const u8* w, const float* x, float* out, int type, int rows, int cols, int n,
                                 int block_elems, int block_bytes) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= rows) return;
    const u8* row = w + (size_t)warp * (cols / block_elems) * block_bytes;
    float acc[8];
    for (int t = 0; t < 8; ++t) acc[t] = 0.0f;
    for (int e0 = lane * 8; e0 < cols; e0 += 256) {
        float v[8];
        decode_row8(type, row, e0, block_elems, block_bytes, v);
        for (int t = 0; t < n; ++t) {
            const float4* xp = (const float4*)(x + (size_t)t * cols + e0);
            float4 a = xp[0], b2 = xp[1];
            acc[t] += v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w
                    + v[4] * b2.x + v[5] * b2.y + v[6] * b2.z + v[7] * b2.w;
        }
    }
    for (int t = 0; t < n; ++t) {
        float s = acc[t];
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
        if (lane == 0) out[(size_t)t * rows + warp] = s;
    }
}

// out[r, c] (f16) = W[r, c] with cols a multiple of 8: each thread decodes 8
// consecutive elements (one block's scales read once) and writes them as one
// 16-byte store. The prefill pays this once per weight and micro-batch, so it
// must run near memory speed, not at one switch per element.
extern "C" __global__ void dequant8_f16(const u8* w, u16* out, int type, int rows, int cols,
                                        int block_elems, int block_bytes) {
    size_t groups = (size_t)rows * (cols / 8);
    int row_groups = cols / 8;
    size_t row_bytes = (size_t)(cols / block_elems) * block_bytes;
    for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < groups; g += (size_t)gridDim.x * blockDim.x) {
        size_t r = g / row_groups;
        int e0 = (int)(g - r * row_groups) * 8;
        const u8* row = w + r * row_bytes;
        float v[8];
        if (type == T_BF16) {
            for (int k = 0; k < 8; ++k) v[k] = dequant(type, row + (size_t)(e0 + k) * block_bytes, 0);
        } else if (block_elems == 1) {
            dequant8(type, row + (size_t)e0 * block_bytes, 0, v);
        } else {
            dequant8(type, row + (size_t)(e0 / block_elems) * block_bytes, e0 % block_elems, v);
        }
        uint4 packed;
        packed.x = (u32)float_to_half(v[0]) | ((u32)float_to_half(v[1]) << 16);
        packed.y = (u32)float_to_half(v[2]) | ((u32)float_to_half(v[3]) << 16);
        packed.z = (u32)float_to_half(v[4]) | ((u32)float_to_half(v[5]) << 16);
        packed.w = (u32)float_to_half(v[6]) | ((u32)float_to_half(v[7]) << 16);
        *(uint4*)(out + g * 8) = packed;
    }
}

// out[i, :] = table[tokens[i], :]
extern "C" __global__ void embed(const u8* table, const unsigned* tokens, float* out, int type, int cols,
                                 int block_elems, int block_bytes) {
    int i = blockIdx.x;
    const u8* row = table + (size_t)tokens[i] * (cols / block_elems) * block_bytes;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(size_t)i * cols + c] = dequant_row(type, row, block_elems, block_bytes, c);
}

// One block of 256 threads per row: out = x / rms(x) · w. Rows whose width is
// a multiple of 4 and at most 8192 are read once, as float4s kept in
// registers (all loads in flight together: a decode step runs this on a
// single row, where a load-use loop would pay one memory latency per element).
// With `out16` (a batch whose next products are GEMMs) the output also as
// f16, the copy those GEMMs read (`rms_norm` in mod.rs).
extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, u16* out16, int width, float eps) {
    __shared__ float partial[32];
    const float* xr = x + (size_t)blockIdx.x * width;
    float* orow = out + (size_t)blockIdx.x * width;
    bool vec = width % 4 == 0 && width <= 8 * 4 * 256 && blockDim.x == 256;
    float4 v[8];
    float s = 0.0f;
    if (vec) {
        int n4 = width / 4;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            int c = threadIdx.x + i * 256;
            if (c < n4) {
                v[i] = ((const float4*)xr)[c];
                s += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
            }
        }
    } else {
        for (int c = threadIdx.x; c < width; c += blockDim.x) s += xr[c] * xr[c];
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < (blockDim.x + 31) / 32 ? partial[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
        if (threadIdx.x == 0) partial[0] = s;
    }
    __syncthreads();
    float scale = rsqrtf(partial[0] / width + eps);
    if (vec) {
        int n4 = width / 4;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            int c = threadIdx.x + i * 256;
            if (c < n4) {
                float4 ww = ((const float4*)w)[c], r;
                r.x = v[i].x * scale * ww.x;
                r.y = v[i].y * scale * ww.y;
                r.z = v[i].z * scale * ww.z;
                r.w = v[i].w * scale * ww.w;
                ((float4*)orow)[c] = r;
                if (out16) {
                    uint2 p;
                    p.x = (u32)float_to_half(r.x) | ((u32)float_to_half(r.y) << 16);
                    p.y = (u32)float_to_half(r.z) | ((u32)float_to_half(r.w) << 16);
                    ((uint2*)(out16 + (size_t)blockIdx.x * width))[c] = p;
                }
            }
        }
    } else {
        for (int c = threadIdx.x; c < width; c += blockDim.x) {
            orow[c] = xr[c] * scale * w[c];
            if (out16) out16[(size_t)blockIdx.x * width + c] = float_to_half(orow[c]);
        }
    }
}

extern "C" __global__ void add_bias(float* x, const float* b, int width, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] += b[i % width];
}

extern "C" __global__ void add(float* x, const float* y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

extern "C" __global__ void swiglu(float* g, const float* u, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = g[i];
        g[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

// gelu_tanh(x) as llama.cpp's CPU backend computes it: the input rounded to
// f16, GELU in f32, the result rounded to f16 (its table of f16 results); 0
// below -10, the identity above 10.
__device__ __forceinline__ float gelu_tanh_ref(float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    x = round_half(x);
    float inner = fmaf(0.044715f * x, x, 1.0f);
    return round_half(0.5f * x * (1.0f + tanhf(0.7978845608028654f * x * inner)));
}

// The gated activation's first factor: act 0 SiLU, 1 GELU-tanh.
__device__ __forceinline__ float gate_act(int act, float x) {
    return act == 0 ? x / (1.0f + expf(-x)) : gelu_tanh_ref(x);
}

// gate = gelu_tanh(gate) * up.
extern "C" __global__ void geglu(float* g, const float* u, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        g[i] = gelu_tanh_ref(g[i]) * u[i];
}

extern "C" __global__ void scale(float* x, float s, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= s;
}

// x = c * tanh(x / c), with 1/c passed as inv (as llama.cpp's graph scales).
extern "C" __global__ void softcap(float* x, float c, float inv, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = tanhf(x[i] * inv) * c;
}

// Rotate pairs of each head by position; cos/sin precomputed on the host per
// (token, pair): cs[(t * half + i) * 2 + {0, 1}]. The queries q (n_heads_q
// per token) and keys k (n_heads_k, 0 for none) of a batch in one launch:
// pair index idx < n · n_heads_q · half rotates q, the rest k.
// With bq / bk (non-null, and n_dims = head_dim) the projections' biases are
// added first, each element read and written once (`qkv_attention` in mod.rs).
extern "C" __global__ void rope_qk(float* q, float* k, const float* cs, const float* bq, const float* bk,
                                   int n_heads_q, int n_heads_k, int head_dim, int n_dims, int neox, int n) {
    chain_next();
    chain_wait();
    int half = n_dims / 2;
    size_t in_q = (size_t)n * n_heads_q * half, total = in_q + (size_t)n * n_heads_k * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        bool is_q = idx < in_q;
        size_t j = is_q ? idx : idx - in_q;
        int n_heads = is_q ? n_heads_q : n_heads_k;
        int i = j % half;
        size_t th = j / half;
        int t = th / n_heads;
        float* head = (is_q ? q : k) + th * head_dim;
        int a = neox ? i : 2 * i;
        int b = neox ? i + half : 2 * i + 1;
        float c = cs[((size_t)t * half + i) * 2], s = cs[((size_t)t * half + i) * 2 + 1];
        float x0 = head[a], x1 = head[b];
        const float* bias = is_q ? bq : bk;
        if (bias) {
            const float* hb = bias + (th % n_heads) * head_dim;
            x0 += hb[a];
            x1 += hb[b];
        }
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
    }
}

// Store new keys and values (f16) at their sequence positions.
extern "C" __global__ void kv_store(const float* k, const float* v, u16* kc, u16* vc, const unsigned* slot,
                                    int width, int n) {
    chain_next();
    chain_wait();
    size_t total = (size_t)n * width;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        size_t t = idx / width;
        int c = idx % width;
        size_t off = (size_t)slot[t] * width + c;
        kc[off] = float_to_half(k[idx]);
        vc[off] = float_to_half(v[idx]);
    }
}

// One warp quantizes the 32-element block holding element `at` (lane i holds
// element 32·(at / 32) + i, value v): q = round(v / d), d = max |v| / 127; per
// block the scale d, per 16-element half the sum d · Σ q (quantize_q8's layout).
__device__ __forceinline__ void quantize_block32(float v, size_t at, i8* q, float* d, float* s16) {
    const int lane = threadIdx.x % 32;
    float amax = fabsf(v);
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, o));
    float dd = amax / 127.0f;
    int qi = amax > 0.0f ? __float2int_rn(v / dd) : 0;
    q[at] = (i8)qi;
    int sum = qi;
    for (int o = 8; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o); // within each half
    if (lane == 0) d[at / 32] = dd;
    if (lane % 16 == 0) s16[(at / 32) * 2 + lane / 16] = dd * (float)sum;
}

// Causal grouped-query attention, one block per (token, head); the scores of
// every key live in dynamic shared memory. base[t] is the first cache slot of
// token t's sequence, pos[t] its position.
// With `q8` (decode steps; head_dim a multiple of 32) it also writes the
// 8-bit copy of its output that the o projection's GEMV reads, as quantize_q8
// would (each warp holds 32 consecutive dimensions: one block of the copy),
// saving that launch.
//
// With `knew` (decode steps whose tokens are of distinct sequences) it also
// stores the step's keys and values, saving kv_store's launch: token t's own
// key and value (its last position) are read from knew/vnew (rounded to f16
// as the cache holds them), and the block of each KV group's first head
// writes them to the cache row, which no other block of the step reads.
//
// With `rope` (only with knew; head_dim ≤ ROPE_MAX_HEAD) it also applies RoPE,
// saving rope_qk's launch: the block rotates its query head and its group's
// new key into shared memory (as rope_qk would: rope[(t · n_dims / 2 + i) ·
// 2 + {0, 1}] the cos and sin of pair i) and stores the rotated key.
#define ROPE_MAX_HEAD 256
__device__ __forceinline__ void rope_head(const float* x, float* o, const float* cs, int head_dim, int n_dims,
                                          int neox) {
    const int half = n_dims / 2;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        if (d >= n_dims) {
            o[d] = x[d];
            continue;
        }
        // d is the first (a) or second (b) element of pair i.
        const bool first = neox ? d < half : (d & 1) == 0;
        const int i = neox ? (first ? d : d - half) : d / 2;
        const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        const float c = cs[2 * i], s = cs[2 * i + 1], x0 = x[a], x1 = x[b];
        o[d] = first ? x0 * c - x1 * s : x0 * s + x1 * c;
    }
}

extern "C" __global__ void attention(const float* q, u16* kc, u16* vc, float* out, const unsigned* base,
                                     const unsigned* pos, int n_heads, int n_kv_heads, int head_dim, int width,
                                     float scale, i8* q8, float* d8, float* s8, const float* knew,
                                     const float* vnew, const float* rope, int n_dims, int neox) {
    extern __shared__ float scores[];
    __shared__ float red[32];
    __shared__ float qrot[ROPE_MAX_HEAD], krot[ROPE_MAX_HEAD];
    chain_next();
    chain_wait();
    int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
    int g = h / (n_heads / n_kv_heads);
    int n_keys = pos[t] + 1;
    const float* qh = q + ((size_t)t * n_heads + h) * head_dim;
    const u16* kb = kc + (size_t)base[t] * width + g * head_dim;
    const u16* vb = vc + (size_t)base[t] * width + g * head_dim;
    // Keys and values from the cache: all of them, or all but the token's own.
    const int cached = knew ? n_keys - 1 : n_keys;
    const float* kt = knew ? knew + (size_t)t * width + g * head_dim : nullptr;
    const float* vt = knew ? vnew + (size_t)t * width + g * head_dim : nullptr;
    if (rope) {
        const float* cs = rope + (size_t)t * n_dims;
        rope_head(qh, qrot, cs, head_dim, n_dims, neox);
        rope_head(kt, krot, cs, head_dim, n_dims, neox);
        __syncthreads();
        qh = qrot;
        kt = krot;
    }
    if (knew && h % (n_heads / n_kv_heads) == 0) {
        size_t row = ((size_t)base[t] + pos[t]) * width + g * head_dim;
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
            kc[row + d] = float_to_half(kt[d]);
            vc[row + d] = float_to_half(vt[d]);
        }
    }
    // Scores: one warp per key, its lanes over the head's dimensions (a key's
    // 2·head_dim bytes in one coalesced load per 32 dimensions), summed by
    // shuffles. (One thread per key walking all dimensions left most threads
    // idle and the rest in a chain of dependent loads: ~10 us per layer for a
    // few dozen keys.)
    const int lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
    for (int j = threadIdx.x / 32; j < n_keys; j += n_warps) {
        const u16* kj = kb + (size_t)j * width;
        float s = 0.0f;
        if (j < cached)
            for (int d = lane; d < head_dim; d += 32) s += round_half(qh[d]) * half_to_float(kj[d]);
        else
            for (int d = lane; d < head_dim; d += 32) s += round_half(qh[d]) * round_half(kt[d]);
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
        if (lane == 0) scores[j] = s * scale;
    }
    __syncthreads();
    float m = INF_NEG;
    for (int j = threadIdx.x; j < n_keys; j += blockDim.x) m = fmaxf(m, scores[j]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        float mm = INF_NEG;
        for (int w = 0; w < (blockDim.x + 31) / 32; ++w) mm = fmaxf(mm, red[w]);
        red[0] = mm;
    }
    __syncthreads();
    m = red[0];
    __syncthreads();
    float sum = 0.0f;
    for (int j = threadIdx.x; j < n_keys; j += blockDim.x) {
        float e = expf(scores[j] - m);
        scores[j] = e;
        sum += e;
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        float ss = 0.0f;
        for (int w = 0; w < (blockDim.x + 31) / 32; ++w) ss += red[w];
        red[0] = ss;
    }
    __syncthreads();
    float inv = 1.0f / red[0];
    for (int d0 = threadIdx.x - lane; d0 < head_dim; d0 += blockDim.x) {
        const int d = d0 + lane;
        float acc = 0.0f;
        if (d < head_dim) {
            for (int j = 0; j < cached; ++j)
                acc += round_half(scores[j] * inv) * half_to_float(vb[(size_t)j * width + d]);
            if (cached < n_keys) acc += round_half(scores[cached] * inv) * round_half(vt[d]);
        }
        size_t at = ((size_t)t * n_heads + h) * head_dim + d;
        if (d < head_dim) out[at] = acc;
        if (q8) quantize_block32(acc, at, q8, d8, s8); // whole warps: head_dim is a multiple of 32
    }
}

__device__ __forceinline__ float block_max128(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    float r = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
    __syncthreads();
    return r;
}

__device__ __forceinline__ float block_sum128(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    float r = (red[0] + red[1]) + (red[2] + red[3]);
    __syncthreads();
    return r;
}

// One tile of an online softmax's P·V in a block of 128 threads: for the
// dimensions d = threadIdx.x + 128·i (head_dim ≤ 512), acc[i] ← acc[i]·alpha +
// Σ_j p[j]·v_j[d] over the tile's `len` keys, whose values start at vb, rows
// `width` apart.
__device__ __forceinline__ void pv_tile128(float (&acc)[4], float alpha, const float* p, int len, const u16* vb,
                                           int width, int head_dim) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int d = threadIdx.x + 128 * i;
        if (d < head_dim) {
            float a = acc[i] * alpha;
            for (int j = 0; j < len; ++j) a += p[j] * half_to_float(vb[(size_t)j * width + d]);
            acc[i] = a;
        }
    }
}

// As `attention` (one block of 128 threads per (token, head), any batch), for
// any number of keys: the keys are walked in tiles of 128 with an online
// softmax (running maximum and sum), so no score array has to fit in shared
// memory. Used where `attention` would need more than 48 KiB of scores
// (decode steps past 12288 positions); head_dim ≤ 512.
// (q8, d8, s8, knew, vnew, rope, n_dims, neox: `attention`'s arguments,
// unused here: the host quantizes, kv_store has stored the step's keys and
// values, and rope_qk has rotated them.)
extern "C" __global__ void attention_tiled(const float* q, const u16* kc, const u16* vc, float* out,
                                           const unsigned* base, const unsigned* pos, int n_heads, int n_kv_heads,
                                           int head_dim, int width, float scale, i8* q8, float* d8, float* s8,
                                           const float* knew, const float* vnew, const float* rope, int n_dims,
                                           int neox) {
    __shared__ float p[128];
    __shared__ float red[32];
    chain_next();
    chain_wait();
    int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
    int g = h / (n_heads / n_kv_heads);
    int n_keys = pos[t] + 1;
    const float* qh = q + ((size_t)t * n_heads + h) * head_dim;
    const u16* kb = kc + (size_t)base[t] * width + g * head_dim;
    const u16* vb = vc + (size_t)base[t] * width + g * head_dim;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float m = INF_NEG, l = 0.0f;
    for (int k0 = 0; k0 < n_keys; k0 += 128) {
        int j = k0 + threadIdx.x;
        float s = INF_NEG;
        if (j < n_keys) {
            const u16* kj = kb + (size_t)j * width;
            float dot = 0.0f;
            for (int e = 0; e < head_dim; ++e) dot += round_half(qh[e]) * half_to_float(kj[e]);
            s = dot * scale;
        }
        // Key 0 is in the first tile, so the running maximum is finite from then on.
        float m_new = fmaxf(m, block_max128(s, red));
        float e = j < n_keys ? expf(s - m_new) : 0.0f;
        float alpha = expf(m - m_new);
        l = l * alpha + block_sum128(e, red);
        m = m_new;
        p[threadIdx.x] = round_half(e);
        __syncthreads();
        pv_tile128(acc, alpha, p, min(128, n_keys - k0), vb + (size_t)k0 * width, width, head_dim);
        __syncthreads(); // p is rewritten by the next tile
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        int d = threadIdx.x + 128 * i;
        if (d < head_dim) out[((size_t)t * n_heads + h) * head_dim + d] = acc[i] / l;
    }
}

// Decode attention split over the keys, for long contexts where one block per
// (token, head) leaves most of the GPU idle: block (t · n_heads + h, s) takes
// keys [s · chunk, (s + 1) · chunk) of token t's sequence, in tiles of
// SPLIT_KEYS with an online softmax, and writes its part of the output
// unnormalised, Σ p_j v_j with p_j = exp(s_j − m) for its own maximum m,
// followed by m and l = Σ p_j (head_dim + 2 floats per part);
// attention_combine rescales and adds the parts. 128 threads, head_dim ≤ 512.
#define SPLIT_KEYS 256
extern "C" __global__ void __launch_bounds__(128) attention_split(const float* q, const u16* kc, const u16* vc,
                                                                  float* part, const unsigned* base,
                                                                  const unsigned* pos, int n_heads, int n_kv_heads,
                                                                  int head_dim, int width, float scale, int splits,
                                                                  int chunk) {
    __shared__ float sc[SPLIT_KEYS];
    __shared__ float red[32];
    chain_next();
    chain_wait();
    const int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads, s = blockIdx.y;
    const int g = h / (n_heads / n_kv_heads);
    const int n_keys = pos[t] + 1, k0 = s * chunk, k1 = min(k0 + chunk, n_keys);
    float* po = part + ((size_t)blockIdx.x * splits + s) * (head_dim + 2);
    if (k0 >= k1) { // past this token's keys: an empty part
        if (threadIdx.x == 0) {
            po[head_dim] = INF_NEG;
            po[head_dim + 1] = 0.0f;
        }
        return;
    }
    const float* qh = q + ((size_t)t * n_heads + h) * head_dim;
    const u16* kb = kc + (size_t)base[t] * width + g * head_dim;
    const u16* vb = vc + (size_t)base[t] * width + g * head_dim;
    const int lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
    float m = INF_NEG, l = 0.0f, acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int j0 = k0; j0 < k1; j0 += SPLIT_KEYS) {
        const int len = min(SPLIT_KEYS, k1 - j0);
        // Scores as in `attention`: one warp per key.
        for (int j = threadIdx.x / 32; j < len; j += n_warps) {
            const u16* kj = kb + (size_t)(j0 + j) * width;
            float d = 0.0f;
            for (int e = lane; e < head_dim; e += 32) d += round_half(qh[e]) * half_to_float(kj[e]);
            d = warp_sum(d);
            if (lane == 0) sc[j] = d * scale;
        }
        __syncthreads();
        float mt = INF_NEG;
        for (int j = threadIdx.x; j < len; j += blockDim.x) mt = fmaxf(mt, sc[j]);
        const float m_new = fmaxf(m, block_max128(mt, red)); // finite: the tile has a key
        const float alpha = expf(m - m_new);                  // 0 on the first tile
        float lt = 0.0f;
        for (int j = threadIdx.x; j < len; j += blockDim.x) {
            float e = expf(sc[j] - m_new);
            sc[j] = e;
            lt += e;
        }
        l = l * alpha + block_sum128(lt, red); // its barriers also publish sc
        m = m_new;
        pv_tile128(acc, alpha, sc, len, vb + (size_t)j0 * width, width, head_dim);
        __syncthreads(); // sc is rewritten by the next tile
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int d = threadIdx.x + 128 * i;
        if (d < head_dim) po[d] = acc[i];
    }
    if (threadIdx.x == 0) {
        po[head_dim] = m;
        po[head_dim + 1] = l;
    }
}

// The parts of attention_split → the output of (token, head) blockIdx.x:
// Σ_s e^(m_s − M) · o_s / Σ_s e^(m_s − M) · l_s, M the largest m_s; and, with
// q8 (head_dim a multiple of 32), its 8-bit copy as `attention` writes it.
extern "C" __global__ void attention_combine(const float* part, float* out, int head_dim, int splits, i8* q8,
                                             float* d8, float* s8) {
    chain_next();
    chain_wait();
    const int stride = head_dim + 2, lane = threadIdx.x % 32;
    const float* p = part + (size_t)blockIdx.x * splits * stride;
    float mx = INF_NEG;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, p[s * stride + head_dim]);
    float l = 0.0f;
    for (int s = 0; s < splits; ++s) {
        float ms = p[s * stride + head_dim];
        if (ms > INF_NEG) l += p[s * stride + head_dim + 1] * expf(ms - mx);
    }
    for (int d0 = threadIdx.x - lane; d0 < head_dim; d0 += blockDim.x) {
        const int d = d0 + lane;
        float acc = 0.0f;
        if (d < head_dim)
            for (int s = 0; s < splits; ++s) {
                float ms = p[s * stride + head_dim];
                if (ms > INF_NEG) acc += p[s * stride + d] * expf(ms - mx);
            }
        acc /= l;
        size_t at = (size_t)blockIdx.x * head_dim + d;
        if (d < head_dim) out[at] = acc;
        if (q8) quantize_block32(acc, at, q8, d8, s8); // whole warps: head_dim is a multiple of 32
    }
}

extern "C" __global__ void gather_rows(const float* x, const unsigned* rows, float* out, int width) {
    int i = blockIdx.x;
    for (int c = threadIdx.x; c < width; c += blockDim.x) out[(size_t)i * width + c] = x[(size_t)rows[i] * width + c];
}

// out[rows[i]] = x[i] * scales[i] (a mixture's weighted expert outputs into
// their tokens' rows); one block per row.
extern "C" __global__ void scatter_rows_scaled(const float* x, const unsigned* rows, const float* scales,
                                               float* out, int width) {
    int i = blockIdx.x;
    float s = scales[i];
    for (int c = threadIdx.x; c < width; c += blockDim.x) out[(size_t)rows[i] * width + c] = x[(size_t)i * width + c] * s;
}

extern "C" __global__ void copy_f32(const float* src, float* dst, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}
