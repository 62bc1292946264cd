// ferry's CUDA kernels, compiled at run time by NVRTC for the card's
// architecture (see src/backend/cuda/mod.rs). Activations are row-major f32
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

// The 16-value grids of IQ4_NL/IQ4_XS (kvalues_iq4nl) and of MXFP4 (E2M1
// values doubled), packed 4 per word for byte-permute lookups
// (grid_lookup4 in gemv_types.cu), and element k of each.
#define IQ4_GRID_WORDS 0xBFAD9881u, 0xF6EADDCFu, 0x26190D01u, 0x71594535u
#define MXFP4_GRID_WORDS 0x03020100u, 0x0C080604u, 0xFDFEFF00u, 0xF4F8FAFCu
__device__ __forceinline__ int grid_value(u32 w0, u32 w1, u32 w2, u32 w3, int k) {
    u32 w = k < 4 ? w0 : k < 8 ? w1 : k < 12 ? w2 : w3;
    return (int)(i8)((w >> (8 * (k & 3))) & 0xFF);
}
__device__ __forceinline__ int iq4_grid(int k) { return grid_value(IQ4_GRID_WORDS, k); }
__device__ __forceinline__ int mxfp4_grid(int k) { return grid_value(MXFP4_GRID_WORDS, k); }
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
        if (type == T_BF16) {
            for (int k = 0; k < 8; ++k) v[k] = dequant(type, row + (size_t)(e0 + k) * block_bytes, 0);
        } else if (block_elems == 1) {
            dequant8(type, row + (size_t)e0 * block_bytes, 0, v);
        } else {
            dequant8(type, row + (size_t)(e0 / block_elems) * block_bytes, e0 % block_elems, v);
        }
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

// gate = gelu_tanh(gate) * up, as llama.cpp's CPU backend computes it: the
// input rounded to f16, GELU in f32, the result rounded to f16 (its table of
// f16 results); 0 below -10, the identity above 10.
extern "C" __global__ void geglu(float* g, const float* u, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = g[i], y;
        if (x <= -10.0f) {
            y = 0.0f;
        } else if (x >= 10.0f) {
            y = x;
        } else {
            x = round_half(x);
            float inner = fmaf(0.044715f * x, x, 1.0f);
            y = round_half(0.5f * x * (1.0f + tanhf(0.7978845608028654f * x * inner)));
        }
        g[i] = y * u[i];
    }
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

extern "C" __global__ void copy_f32(const float* src, float* dst, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

// ---------------------------------------------------------------------------
// Prompt attention on tensor cores (flash attention 2, causal, GQA).
//
// One block of WARPS warps takes 16 · WARPS query rows of one head; each warp
// owns 16 rows and walks the keys in tiles of 64 (K and V staged in shared memory as f16,
// as the cache stores them). Scores stay in registers: S = Q·Kᵀ and O += P·V
// are m16n8k16 MMAs with f32 accumulation, and the softmax is the online one
// (running max and sum per row), so the n × n matrix never exists. For one
// sequence whose batch positions are consecutive (a prompt or its chunk):
// query row t sits at position p0 + t and sees keys 0 ..= p0 + t.

__device__ __forceinline__ u32 pack_half2(float a, float b) {
    return (u32)float_to_half(a) | ((u32)float_to_half(b) << 16);
}

// The A fragments of query rows ra and rb of head h (m16n8k16 layout, lane
// position tig in its group), rounded to f16: qf[kk] covers dimensions
// 16·kk .. 16·kk + 16. Both prompt-attention kernels keep them in registers.
template <int D>
__device__ __forceinline__ void load_q_fragments(const float* q, int ra, int rb, int h, int n_heads, int tig,
                                                 u32 (&qf)[D / 16][4]) {
    const float* qa = q + ((size_t)ra * n_heads + h) * D;
    const float* qb = q + ((size_t)rb * n_heads + h) * D;
    for (int kk = 0; kk < D / 16; ++kk) {
        int c = kk * 16 + tig * 2;
        float2 x0 = *(const float2*)(qa + c), x1 = *(const float2*)(qb + c);
        float2 x2 = *(const float2*)(qa + c + 8), x3 = *(const float2*)(qb + c + 8);
        qf[kk][0] = pack_half2(x0.x, x0.y);
        qf[kk][1] = pack_half2(x1.x, x1.y);
        qf[kk][2] = pack_half2(x2.x, x2.y);
        qf[kk][3] = pack_half2(x3.x, x3.y);
    }
}

// c += a · b for one m16n8k16 tile (f16 inputs, f32 accumulators).
__device__ __forceinline__ void mma_16816(float c[4], const u32 a[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 shared_addr(const void* p) {
    u32 addr;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(addr) : "l"(p));
    return addr;
}
// Two 8×8 f16 matrices from shared memory, transposed: the B operand of
// P·V from V stored key-major. Lanes 0..15 give the addresses of the 16 rows.
__device__ __forceinline__ void ldmatrix_x2_trans(u32& r0, u32& r1, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(r0), "=r"(r1) : "r"(shared_addr(p)));
}

// 16 bytes global → shared without passing through registers; `src_bytes` 0
// fills zeros (rows past the last key).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// One key tile's online-softmax step for a lane's two rows (a: g, b: g + 8)
// of a 16-row slice: causal mask (only tiles that reach past a row's
// position need it), running maximum and sum, the rescale of the output
// accumulators, and P packed straight into the A fragments of P·V (the
// accumulator layout of n-tiles 2k and 2k+1 is the operand layout of k-step
// k: true of mma.sync's m16n8k16 and of wgmma's m64nNk16 alike).
template <int KEYS, int D>
__device__ __forceinline__ void softmax_tile(float s[KEYS / 8][4], u32 pf[KEYS / 16][4], float o[D / 8][4], int k0,
                                             int pos_a, int pos_b, float& m_a, float& m_b, float& l_a, float& l_b,
                                             float scale_log2) {
    int tig = threadIdx.x % 4;
    // A branch around the whole mask, not a select per score: most tiles
    // need none.
    if (!__all_sync(0xffffffff, k0 + KEYS - 1 <= min(pos_a, pos_b))) {
        for (int j = 0; j < KEYS / 8; ++j) {
            for (int e = 0; e < 2; ++e) {
                int key = k0 + j * 8 + tig * 2 + e;
                if (key > pos_a) s[j][e] = INF_NEG;
                if (key > pos_b) s[j][2 + e] = INF_NEG;
            }
        }
    }
    float mx_a = m_a, mx_b = m_b;
    for (int j = 0; j < KEYS / 8; ++j) {
        for (int e = 0; e < 2; ++e) {
            mx_a = fmaxf(mx_a, s[j][e]);
            mx_b = fmaxf(mx_b, s[j][2 + e]);
        }
    }
    for (int off = 1; off < 4; off <<= 1) {
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffff, mx_a, off));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffff, mx_b, off));
    }
    // Key 0 is in every row's past, so after the first tile the maxima
    // are finite. Probabilities 2^((s − max)·scale) with the scale
    // folded into one FMA per score.
    float alpha_a = exp2f((m_a - mx_a) * scale_log2), alpha_b = exp2f((m_b - mx_b) * scale_log2);
    m_a = mx_a;
    m_b = mx_b;
    float ms_a = m_a * scale_log2, ms_b = m_b * scale_log2;
    float sum_a = 0.0f, sum_b = 0.0f;
    for (int j = 0; j < KEYS / 8; ++j) {
        float pa0 = exp2f(fmaf(s[j][0], scale_log2, -ms_a)), pa1 = exp2f(fmaf(s[j][1], scale_log2, -ms_a));
        float pb0 = exp2f(fmaf(s[j][2], scale_log2, -ms_b)), pb1 = exp2f(fmaf(s[j][3], scale_log2, -ms_b));
        sum_a += pa0 + pa1;
        sum_b += pb0 + pb1;
        pf[j / 2][(j % 2) * 2] = pack_half2(pa0, pa1);
        pf[j / 2][(j % 2) * 2 + 1] = pack_half2(pb0, pb1);
    }
    l_a = l_a * alpha_a + sum_a;
    l_b = l_b * alpha_b + sum_b;
    // Once the maxima settle most tiles leave them alone (α = 1 exactly, so
    // skipping the multiply changes nothing).
    if (__any_sync(0xffffffff, alpha_a != 1.0f || alpha_b != 1.0f)) {
        for (int d = 0; d < D / 8; ++d) {
            o[d][0] *= alpha_a;
            o[d][1] *= alpha_a;
            o[d][2] *= alpha_b;
            o[d][3] *= alpha_b;
        }
    }
}

#define FA_KEYS 64

template <int D, int WARPS>
__device__ __forceinline__ void flash_prefill(const float* q, const u16* kc, const u16* vc, float* out, int n,
                                              int p0, int base, int n_heads, int n_kv_heads, int width,
                                              float scale_log2) {
    // Shared memory: two stages of (K tile, V tile), rows padded by 8 halfs
    // (16 bytes) so that the fragment loads of 8 rows fall in distinct banks;
    // 2 · 2 · FA_KEYS · S halfs (`flash_smem_bytes` on the host).
    constexpr int S = D + 8;
    extern __shared__ __align__(16) u16 smem[];
    // The last query blocks see the most keys: start them first.
    int qblock = gridDim.x - 1 - blockIdx.x;
    int h = blockIdx.y;
    int kvh = h / (n_heads / n_kv_heads);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int g = lane / 4, tig = lane % 4;
    constexpr int ROWS = 16 * WARPS;
    int row0 = qblock * ROWS + warp * 16;
    // Each lane holds rows g and g + 8 of its warp's 16; rows past the end act
    // as the last token (their results are not written).
    int ra = min(row0 + g, n - 1), rb = min(row0 + g + 8, n - 1);
    int pos_a = p0 + ra, pos_b = p0 + rb;

    int block_last = min(qblock * ROWS + ROWS - 1, n - 1);
    int n_keys = p0 + block_last + 1;
    int n_tiles = (n_keys + FA_KEYS - 1) / FA_KEYS;
    int warp_last = p0 + min(row0 + 15, n - 1);
    const u16* kbase = kc + (size_t)base * width + kvh * D;
    const u16* vbase = vc + (size_t)base * width + kvh * D;
    // Tile loads run asynchronously: tile i + 1 is in flight while tile i is used.
    auto load_tile = [&](int stage, int k0) {
        u16* ks = smem + stage * 2 * FA_KEYS * S;
        u16* vs = ks + FA_KEYS * S;
        for (int c = threadIdx.x; c < FA_KEYS * D / 8; c += blockDim.x) {
            int r = c / (D / 8), col = (c % (D / 8)) * 8;
            bool ok = k0 + r < n_keys;
            size_t off = (size_t)(ok ? k0 + r : 0) * width + col;
            cp_async16(ks + r * S + col, kbase + off, ok ? 16 : 0);
            cp_async16(vs + r * S + col, vbase + off, ok ? 16 : 0);
        }
        cp_async_commit();
    };
    load_tile(0, 0);

    u32 qf[D / 16][4];
    load_q_fragments<D>(q, ra, rb, h, n_heads, tig, qf);
    float o[D / 8][4];
    for (int d = 0; d < D / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float m_a = INF_NEG, m_b = INF_NEG, l_a = 0.0f, l_b = 0.0f;

    for (int tile = 0; tile < n_tiles; ++tile) {
        int k0 = tile * FA_KEYS;
        if (tile + 1 < n_tiles) {
            load_tile((tile + 1) & 1, k0 + FA_KEYS);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); // this tile is in shared memory for every warp
        const u16* ks = smem + (tile & 1) * 2 * FA_KEYS * S;
        const u16* vs = ks + FA_KEYS * S;
        if (k0 <= warp_last) { // else every key of the tile is in this warp's future
            // S = Q·Kᵀ, unscaled.
            float s[FA_KEYS / 8][4];
            for (int j = 0; j < FA_KEYS / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            for (int kk = 0; kk < D / 16; ++kk) {
                for (int j = 0; j < FA_KEYS / 8; ++j) {
                    const u16* kp = ks + (j * 8 + g) * S + kk * 16 + tig * 2;
                    mma_16816(s[j], qf[kk], *(const u32*)kp, *(const u32*)(kp + 8));
                }
            }
            u32 pf[FA_KEYS / 16][4];
            softmax_tile<FA_KEYS, D>(s, pf, o, k0, pos_a, pos_b, m_a, m_b, l_a, l_b, scale_log2);
            for (int kt = 0; kt < FA_KEYS / 16; ++kt) {
                for (int d = 0; d < D / 8; ++d) {
                    u32 b0, b1;
                    ldmatrix_x2_trans(b0, b1, vs + (kt * 16 + lane % 16) * S + d * 8);
                    mma_16816(o[d], pf[kt], b0, b1);
                }
            }
        }
        __syncthreads(); // every warp is done with this stage before it is refilled
    }
    // Each lane summed its own columns: the row sums are the quad's total.
    for (int off = 1; off < 4; off <<= 1) {
        l_a += __shfl_xor_sync(0xffffffff, l_a, off);
        l_b += __shfl_xor_sync(0xffffffff, l_b, off);
    }
    float inv_a = 1.0f / l_a, inv_b = 1.0f / l_b;
    int row_a = row0 + g, row_b = row0 + g + 8;
    for (int d = 0; d < D / 8; ++d) {
        int c = d * 8 + tig * 2;
        if (row_a < n) {
            float2 v;
            v.x = o[d][0] * inv_a;
            v.y = o[d][1] * inv_a;
            *(float2*)(out + ((size_t)row_a * n_heads + h) * D + c) = v;
        }
        if (row_b < n) {
            float2 v;
            v.x = o[d][2] * inv_b;
            v.y = o[d][3] * inv_b;
            *(float2*)(out + ((size_t)row_b * n_heads + h) * D + c) = v;
        }
    }
}

// Dynamic shared memory: 36864 bytes for D = 64, 69632 for D = 128 (the host
// raises the kernel's limit for the latter). Warps per block
// (`flash_warps` on the host): 4 for D = 64; 8 for D = 128, where every K/V
// tile then serves 128 query rows (213 against 208 TFLOP/s with 4 warps and
// 195 with ldmatrix.x4 K loads: 32B heads at 8K tokens on an H200; held to two
// blocks per SM, 170 against 214 on an H100).
extern "C" __global__ void __launch_bounds__(128, 1) flash_prefill_d64(
    const float* q, const u16* kc, const u16* vc, float* out, int n, int p0, int base, int n_heads,
    int n_kv_heads, int width, float scale_log2) {
    flash_prefill<64, 4>(q, kc, vc, out, n, p0, base, n_heads, n_kv_heads, width, scale_log2);
}

extern "C" __global__ void __launch_bounds__(256, 1) flash_prefill_d128(
    const float* q, const u16* kc, const u16* vc, float* out, int n, int p0, int base, int n_heads,
    int n_kv_heads, int width, float scale_log2) {
    flash_prefill<128, 8>(q, kc, vc, out, n, p0, base, n_heads, n_kv_heads, width, scale_log2);
}

// ---------------------------------------------------------------------------
// Prompt attention on Hopper's warpgroup MMAs (wgmma; sm_90a, the H100 and
// H200). Same algorithm and the same per-lane softmax as `flash_prefill`, but
// a warpgroup (four warps, 64 query rows) multiplies as one: S = Q·Kᵀ is
// m64n{KEYS}k16 steps with Q's fragments in registers and K read by the
// tensor cores straight from shared memory, O += P·V m64n128k16 steps with P
// in registers and V read from shared memory transposed (MN-major). No
// fragment of K or V passes through registers, which is what held the
// mma.sync kernel near 210 TFLOP/s: its warps spent their issue slots on
// shared-memory loads.
//
// Shared memory holds K and V tiles in the layout of the 128-byte swizzle:
// a tile is two halves (dimensions 0-63, 64-127) of one 128-byte row per
// key, and the 16-byte chunk c of key r's row sits at chunk c ^ (r % 8), so
// that the tensor cores' reads of eight rows fall in distinct banks (the
// same tiles unswizzled, in 8 × 16-byte core matrices, ran at 229 against
// 377 TFLOP/s on an H100). For S (B = K, K-major) a k16 step is 32 bytes
// along the rows and 8-key groups are 1024 bytes apart; for P·V (B = V,
// MN-major) a k16 step is 16 keys (2048 bytes) and the leading offset is
// the step from one half to the other. Sixteen threads copy a key's 256
// bytes into its two rows.
//
// Two warpgroups share each 64-key K/V tile (128 query rows per block).
// 409-413 TFLOP/s for 32B heads at 8K tokens on an H100 (mma.sync: 222).
// Tried and dropped: the second warpgroup running half a step behind, its
// P·V of tile j − 1 issued with its S of tile j so that one warpgroup's
// softmax overlaps the other's tensor-core work (slower once the tiles were
// swizzled); 128-key tiles (see below). What holds it: two warps per
// scheduler, each waiting on its own wgmmas and then on its softmax.

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// Shared-memory matrix descriptor of a 128-byte-swizzled operand (PTX ISA
// "matrix descriptor format": address, leading and stride byte offsets in
// 16-byte units, swizzle mode 1; the swizzle's pattern repeats every 1024
// bytes from a 1024-byte boundary).
__device__ __forceinline__ u64 wgmma_desc(u32 addr, u32 leading, u32 stride) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)((leading & 0x3FFFF) >> 4) << 16) |
           ((u64)((stride & 0x3FFFF) >> 4) << 32) | 1ull << 62;
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
// Pins accumulators after a wait: the compiler may not read them before
// the wgmma that writes them has completed.
template <int N>
__device__ __forceinline__ void wgmma_pin(float d[N][4]) {
    for (int j = 0; j < N; ++j)
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}
// This thread's cp.async writes become visible to the tensor cores' reads
// (the async proxy) once the block's barrier has passed.
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// d = a · B + (accumulate ? d : 0) (m64nNk16, f16 in, f32 accumulate), A from
// registers, B from shared memory through `desc`; TRANS_B 1 reads B MN-major.
// The accumulators are operands 0 .. N/2 − 1, then a, desc, accumulate, TRANS_B.
#define WGMMA_ACC(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define WGMMA_IN "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate), "n"(TRANS_B)
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n64k16(float d[8][4], const u32 a[4], u64 desc, int accumulate = 1) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}"
                 : WGMMA_ACC(0), WGMMA_ACC(1), WGMMA_ACC(2), WGMMA_ACC(3), WGMMA_ACC(4), WGMMA_ACC(5), WGMMA_ACC(6),
                   WGMMA_ACC(7)
                 : WGMMA_IN);
}
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n128k16(float d[16][4], const u32 a[4], u64 desc, int accumulate = 1) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
                 "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}"
                 : WGMMA_ACC(0), WGMMA_ACC(1), WGMMA_ACC(2), WGMMA_ACC(3), WGMMA_ACC(4), WGMMA_ACC(5), WGMMA_ACC(6),
                   WGMMA_ACC(7), WGMMA_ACC(8), WGMMA_ACC(9), WGMMA_ACC(10), WGMMA_ACC(11), WGMMA_ACC(12),
                   WGMMA_ACC(13), WGMMA_ACC(14), WGMMA_ACC(15)
                 : WGMMA_IN);
}
#undef WGMMA_ACC
#undef WGMMA_IN

template <int KEYS>
__device__ __forceinline__ void wgmma_scores(float s[KEYS / 8][4], const u32 qf[8][4], u32 kaddr) {
    // Dimensions 16kk ..: half kk / 4, 32 bytes per step along the rows. The
    // first step overwrites s (no zeroing between fence and wgmma).
    for (int kk = 0; kk < 8; ++kk) {
        u64 desc = wgmma_desc(kaddr + (kk / 4) * KEYS * 128 + (kk % 4) * 32, 16, 1024);
        if constexpr (KEYS == 64) wgmma_m64n64k16<0>(s, qf[kk], desc, kk > 0);
        else wgmma_m64n128k16<0>(s, qf[kk], desc, kk > 0);
    }
}
template <int KEYS>
__device__ __forceinline__ void wgmma_pv(float o[16][4], const u32 pf[KEYS / 16][4], u32 vaddr) {
    for (int kt = 0; kt < KEYS / 16; ++kt) // keys 16kt ..
        wgmma_m64n128k16<1>(o, pf[kt], wgmma_desc(vaddr + kt * 2048, KEYS * 128, 1024));
}
#endif

template <int KEYS>
__device__ __forceinline__ void flash_wgmma(const float* q, const u16* kc, const u16* vc, float* out, int n, int p0,
                                            int base, int n_heads, int n_kv_heads, int width, float scale_log2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    // 128-key tiles ran at 466-486 TFLOP/s but gave wrong outputs once a
    // block had more than one tile (not understood; the same tiles with the
    // second warpgroup half a step behind were right), so they are not built.
    static_assert(KEYS == 64, "64-key tiles only (see above)");
    // One tile in flight ahead of the one in use (409 against 367 TFLOP/s
    // with two). The stage refilled at tile t held tile t − 2: two stages
    // would do; the build checked and timed on the device has three.
    constexpr int D = 128, STAGES = 3, AHEAD = 1;
    constexpr int TILE = KEYS * D; // halfs in a K (or V) tile
    extern __shared__ __align__(128) u16 smem_raw[];
    // Stages start on a 1024-byte boundary (the swizzle's period; the host
    // adds 1 KiB of room).
    u16* smem = smem_raw + (((shared_addr(smem_raw) + 1023) & ~1023u) - shared_addr(smem_raw)) / 2;
    int qblock = gridDim.x - 1 - blockIdx.x; // the last query blocks see the most keys: first
    int h = blockIdx.y;
    int kvh = h / (n_heads / n_kv_heads);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int g = lane / 4, tig = lane % 4;
    int row0 = qblock * 128 + warp * 16;
    // Each lane holds rows g and g + 8 of its warp's 16; rows past the end act
    // as the last token (their results are not written).
    int ra = min(row0 + g, n - 1), rb = min(row0 + g + 8, n - 1);
    int pos_a = p0 + ra, pos_b = p0 + rb;
    int n_keys = p0 + min(qblock * 128 + 127, n - 1) + 1;
    int n_tiles = (n_keys + KEYS - 1) / KEYS;

    // This thread's share of a tile copy: chunk `chunk` (8 dimensions) of
    // keys r0 + 16i, the same shared-memory slot in every tile.
    int chunk = threadIdx.x & 15, r0 = threadIdx.x >> 4;
    int slot0 = (chunk >> 3) * KEYS * 8 + r0 * 8 + ((chunk & 7) ^ (r0 & 7)); // 16-byte units
    const u16* kbase = kc + (size_t)base * width + kvh * D + chunk * 8;
    const u16* vbase = vc + (size_t)base * width + kvh * D + chunk * 8;
    auto load_tile = [&](int tile) {
        if (tile < n_tiles) {
            u16* ks = smem + (tile % STAGES) * 2 * TILE + slot0 * 8;
            int k0 = tile * KEYS;
#pragma unroll
            for (int i = 0; i < KEYS / 16; ++i) { // 256 threads, 16 keys a round
                int r = k0 + r0 + 16 * i;
                bool ok = r < n_keys;
                size_t off = (size_t)(ok ? r : 0) * width;
                cp_async16(ks + i * 16 * 64, kbase + off, ok ? 16 : 0);
                cp_async16(ks + TILE + i * 16 * 64, vbase + off, ok ? 16 : 0);
            }
        }
        cp_async_commit(); // empty groups past the end keep the count uniform
    };
    for (int t = 0; t < AHEAD; ++t) load_tile(t);

    u32 qf[8][4];
    load_q_fragments<D>(q, ra, rb, h, n_heads, tig, qf);
    float o[16][4];
    for (int d = 0; d < 16; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float m_a = INF_NEG, m_b = INF_NEG, l_a = 0.0f, l_b = 0.0f;
    u32 pf[KEYS / 16][4];

    for (int tile = 0; tile < n_tiles; ++tile) {
        int k0 = tile * KEYS;
        // This thread's copies of this tile have landed (the next tile's may
        // still be in flight); the fence (a memory barrier in SASS, which
        // would also wait for copies issued before it) comes before the
        // copies of tile + 2 are issued, and after the block's barrier every
        // warpgroup is done with the stage they refill (tile − 1's).
        cp_async_wait<AHEAD - 1>();
        fence_async_shared();
        __syncthreads();
        load_tile(tile + AHEAD);
        u32 kaddr = shared_addr(smem + (tile % STAGES) * 2 * TILE);
        // Every warpgroup takes every tile of the block, even one whose keys
        // all lie in its rows' future (the last 64-key tile for the first
        // warpgroup): masked to −∞ such a tile leaves the maxima, sums and
        // outputs exactly as they were, and wgmmas behind a branch would
        // be serialized by ptxas.
        float s[KEYS / 8][4];
        wgmma_fence();
        wgmma_scores<KEYS>(s, qf, kaddr);
        wgmma_commit();
        wgmma_wait_all();
        wgmma_pin<KEYS / 8>(s);
        softmax_tile<KEYS, 128>(s, pf, o, k0, pos_a, pos_b, m_a, m_b, l_a, l_b, scale_log2);
        wgmma_fence();
        wgmma_pv<KEYS>(o, pf, kaddr + TILE * 2);
        wgmma_commit();
        wgmma_wait_all();
        wgmma_pin<16>(o);
    }
    for (int off = 1; off < 4; off <<= 1) {
        l_a += __shfl_xor_sync(0xffffffff, l_a, off);
        l_b += __shfl_xor_sync(0xffffffff, l_b, off);
    }
    float inv_a = 1.0f / l_a, inv_b = 1.0f / l_b;
    int row_a = row0 + g, row_b = row0 + g + 8;
    for (int d = 0; d < 16; ++d) {
        int c = d * 8 + tig * 2;
        if (row_a < n) *(float2*)(out + ((size_t)row_a * n_heads + h) * D + c) = float2{o[d][0] * inv_a, o[d][1] * inv_a};
        if (row_b < n) *(float2*)(out + ((size_t)row_b * n_heads + h) * D + c) = float2{o[d][2] * inv_b, o[d][3] * inv_b};
    }
#endif
}

// Dynamic shared memory: three stages of a 64-key K tile and V tile and 1 KiB
// for alignment, 97 KiB (`FLASH_WGMMA_SMEM` on the host).
extern "C" __global__ void __launch_bounds__(256, 1)
    flash_wgmma_k64(const float* q, const u16* kc, const u16* vc, float* out, int n, int p0, int base, int n_heads,
                    int n_kv_heads, int width, float scale_log2) {
    flash_wgmma<64>(q, kc, vc, out, n, p0, base, n_heads, n_kv_heads, width, scale_log2);
}

// ---------------------------------------------------------------------------
// Decode GEMVs for the k-quant blocks that make up Q4_K_M-like models: out[t, r]
// = Σ_c x[t, c] · W[r, c] for n ≤ 8 tokens. One warp per row, 8 lanes per
// 256-element superblock, so a warp pass reads 4 consecutive superblocks with
// wide loads, and each lane folds the block scales in once per 16 elements:
// Σ (d·sc·q − dmin·m)·x = d·sc·Σ q·x − dmin·m·Σ x.

// 6-bit scale and minimum j of a Q4_K/Q5_K superblock whose first 16 bytes are `h`.
// Header bytes 4..15 pack 8 scales and 8 minimums; all of them are unpacked
// with a few word operations (scales 0-3 and 4-7, minimums 0-3 and 4-7, one
// per byte) and byte j is picked without a branch, so lanes that take
// different sub-blocks do not diverge (the per-byte, branching version cost
// the decode GEMVs a large share of their instructions).
__device__ __forceinline__ void scale_min_hdr(uint4 h, int j, int* sc, int* m) {
    u32 sc_lo = h.y & 0x3f3f3f3fu, m_lo = h.z & 0x3f3f3f3fu;
    u32 sc_hi = (h.w & 0x0f0f0f0fu) | ((h.y >> 2) & 0x30303030u);
    u32 m_hi = ((h.w >> 4) & 0x0f0f0f0fu) | ((h.z >> 2) & 0x30303030u);
    int sh = 8 * (j & 3);
    *sc = (int)(((j < 4 ? sc_lo : sc_hi) >> sh) & 0xFF);
    *m = (int)(((j < 4 ? m_lo : m_hi) >> sh) & 0xFF);
}

// Q4_K: lane s of its group of 8 takes qs[16s .. 16s + 16] (one 16-byte load):
// low nibbles are elements 64c + l, high nibbles 64c + 32 + l, c = s / 2,
// l = 16 (s % 2) + 0..16. Rows must start 16-byte aligned (144-byte blocks).
// Each lane issues the loads of 4 superblocks before using any, so a warp
// keeps 2.3 KB of a row in flight: decode is bound by memory latency unless
// enough bytes are in the air (one superblock per round trip reached ~10 %
// of HBM bandwidth on an H200).
template <int NT>
__device__ __forceinline__ void gemv_q4k_t(const u8* __restrict__ w, const float* __restrict__ x, float* out,
                                           int rows, int cols, int n) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= rows) return;
    int nb = cols / 256;
    const u8* row = w + (size_t)warp * nb * 144;
    int grp = lane / 8, s = lane % 8;
    int c = s / 2, l = 16 * (s % 2);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int first = grp; first < nb; first += 16) {
        uint4 hdr[4], qv[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int blk = first + 4 * u;
            if (blk < nb) {
                const u8* b = row + (size_t)blk * 144;
                hdr[u] = *(const uint4*)b;
                qv[u] = *(const uint4*)(b + 16 + 16 * s);
            }
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int blk = first + 4 * u;
            if (blk >= nb) break;
            float d = half_to_float((u16)(hdr[u].x & 0xFFFF)), dmin = half_to_float((u16)(hdr[u].x >> 16));
            int sc0, m0, sc1, m1;
            scale_min_hdr(hdr[u], 2 * c, &sc0, &m0);
            scale_min_hdr(hdr[u], 2 * c + 1, &sc1, &m1);
            float d0 = d * (float)sc0, d1 = d * (float)sc1;
            float mn0 = dmin * (float)m0, mn1 = dmin * (float)m1;
            u32 q[4] = {qv[u].x, qv[u].y, qv[u].z, qv[u].w};
            int e_lo = blk * 256 + 64 * c + l;
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t >= n) break;
                const float4* xl = (const float4*)(x + (size_t)t * cols + e_lo);
                const float4* xh = xl + 8; // 32 elements further
                float sl = 0.0f, sh = 0.0f, xsl = 0.0f, xsh = 0.0f;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    float4 a = xl[i], bb = xh[i];
                    u32 qq = q[i];
                    sl += (float)(qq & 0xF) * a.x + (float)((qq >> 8) & 0xF) * a.y
                        + (float)((qq >> 16) & 0xF) * a.z + (float)((qq >> 24) & 0xF) * a.w;
                    sh += (float)((qq >> 4) & 0xF) * bb.x + (float)((qq >> 12) & 0xF) * bb.y
                        + (float)((qq >> 20) & 0xF) * bb.z + (float)(qq >> 28) * bb.w;
                    xsl += a.x + a.y + a.z + a.w;
                    xsh += bb.x + bb.y + bb.z + bb.w;
                }
                acc[t] += d0 * sl - mn0 * xsl + d1 * sh - mn1 * xsh;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t >= n) break;
        float sum = acc[t];
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
        if (lane == 0) out[(size_t)t * rows + warp] = sum;
    }
}

// Four Q6_K values (0..63, one per byte) of quarter k (elements 32k + l of a
// half): low 4 bits from ql[l] (k = 0, 2) or ql[l + 32] (k = 1, 3), the low or
// high nibble by k / 2; high 2 bits from qh[l] at bit 2k. `ql0`, `ql1`, `qh`:
// the same four consecutive l of each.
__device__ __forceinline__ u32 q6k_values(u32 ql0, u32 ql1, u32 qh, int k) {
    return ((((k & 1) ? ql1 : ql0) >> (4 * (k >> 1))) & 0x0F0F0F0Fu) | (((qh >> (2 * k)) & 0x03030303u) << 4);
}

__device__ __forceinline__ u32 load_u32_2aligned(const u8* p) {
    const u16* h = (const u16*)p;
    return (u32)h[0] | ((u32)h[1] << 16);
}

// Q6_K (210-byte blocks, so only 2-byte aligned): lane s of its group of 8
// takes half n = s / 4 and the 8 columns l0 = 8 (s % 4) .. l0 + 8 of it: 8 ql
// bytes at 64n + l0 and at 64n + 32 + l0 and 8 qh bytes at 32n + l0 give the
// elements 128n + 32k + l0 + 0..8 for k = 0..3. Loads of 4 superblocks are
// issued before any is used, as in the Q4_K kernel.
template <int NT>
__device__ __forceinline__ void gemv_q6k_t(const u8* __restrict__ w, const float* __restrict__ x, float* out,
                                           int rows, int cols, int n) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= rows) return;
    int nb = cols / 256;
    const u8* row = w + (size_t)warp * nb * 210;
    int grp = lane / 8, s = lane % 8;
    int half_ = s / 4, l0 = 8 * (s % 4);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int first = grp; first < nb; first += 16) {
        u32 ql0[4][2], ql1[4][2], qh[4][2];
        u32 sc[4];
        float dd[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int blk = first + 4 * u;
            if (blk < nb) {
                const u8* b = row + (size_t)blk * 210;
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    ql0[u][i] = load_u32_2aligned(b + 64 * half_ + l0 + 4 * i);
                    ql1[u][i] = load_u32_2aligned(b + 64 * half_ + 32 + l0 + 4 * i);
                    qh[u][i] = load_u32_2aligned(b + 128 + 32 * half_ + l0 + 4 * i);
                }
                // The 4 scales this lane needs: bytes 192 + 8n + l0/16 + 2k.
                const u8* sp = b + 192 + 8 * half_ + l0 / 16;
                sc[u] = (u32)sp[0] | ((u32)sp[2] << 8) | ((u32)sp[4] << 16) | ((u32)sp[6] << 24);
                dd[u] = h2f(b + 208);
            }
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int blk = first + 4 * u;
            if (blk >= nb) break;
            float dk[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) dk[k] = dd[u] * (float)(i8)((sc[u] >> (8 * k)) & 0xFF);
            int e0 = blk * 256 + 128 * half_ + l0;
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t >= n) break;
                const float* xt = x + (size_t)t * cols + e0;
                float total = 0.0f;
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const float4* xp = (const float4*)(xt + 32 * k);
                    float sq = 0.0f, sx = 0.0f;
#pragma unroll
                    for (int i = 0; i < 2; ++i) {
                        float4 a = xp[i];
                        u32 lo = (k & 1) ? ql1[u][i] : ql0[u][i];
                        int shift = (k >> 1) * 4;
                        u32 hi = qh[u][i] >> (2 * k);
                        float xs[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
                        for (int j = 0; j < 4; ++j) {
                            int qv = (int)(((lo >> (8 * j + shift)) & 0xF) | (((hi >> (8 * j)) & 3) << 4));
                            sq += (float)qv * xs[j];
                            sx += xs[j];
                        }
                    }
                    total += dk[k] * (sq - 32.0f * sx);
                }
                acc[t] += total;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t >= n) break;
        float sum = acc[t];
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
        if (lane == 0) out[(size_t)t * rows + warp] = sum;
    }
}

#define GEMV_ENTRY(fmt, NT)                                                                                  \
    extern "C" __global__ void __launch_bounds__(128) gemv_##fmt##_##NT(                                      \
        const u8* __restrict__ w, const float* __restrict__ x, float* out, int rows, int cols, int n) {         \
        gemv_##fmt##_t<NT>(w, x, out, rows, cols, n);                                                          \
    }
GEMV_ENTRY(q4k, 1)
GEMV_ENTRY(q4k, 2)
GEMV_ENTRY(q4k, 4)
GEMV_ENTRY(q4k, 8)
GEMV_ENTRY(q6k, 1)
GEMV_ENTRY(q6k, 2)
GEMV_ENTRY(q6k, 4)
GEMV_ENTRY(q6k, 8)

// ---------------------------------------------------------------------------
// Integer decode GEMVs. Decode reads each weight once per token, so a GEMV is
// only as fast as the memory if decoding costs less than a few instructions
// per element; with floats it costs about eight (nibble extraction, an int →
// float conversion at quarter rate, two adds) and the kernels above run at a
// third of HBM speed. Here the activations are quantized once to 8 bits per
// 32-element block (as the CPU backend does) and 4 weights × 4 activations are
// multiplied by one dp4a.

__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// q[t, c] = round(x[t, c] / d), d = max |x| / 127 over each 32-element block;
// per block the scale, and per 16-element half the sum d · Σ q (what the 8-bit
// values add up to, for the Q4_K minimum term). One warp per block.
extern "C" __global__ void quantize_q8(const float* x, i8* q, float* d, float* s16, int cols, int n) {
    chain_next();
    chain_wait();
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    int blocks = cols / 32;
    if (warp >= n * blocks) return;
    size_t at = (size_t)warp * 32 + lane; // rows are whole blocks
    quantize_block32(x[at], at, q, d, s16);
}

// Q4_K × 8-bit activations. Lanes as in gemv_q4k_t: lane s of its group of 8
// holds the 16 low nibbles (sub-block 2c, 16 elements from l) and 16 high
// nibbles (sub-block 2c + 1) of qs[16s .. 16s + 16]; the matching activations
// are 16 consecutive bytes each, inside one 32-element block.
template <int NT>
__device__ __forceinline__ void gemv_q4k_q8_t(const u8* __restrict__ w, const i8* __restrict__ xq,
                                              const float* __restrict__ xd, const float* __restrict__ xs,
                                              float* out, int rows, int cols, int n) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= rows) return;
    int nb = cols / 256, nxb = cols / 32;
    const u8* row = w + (size_t)warp * nb * 144;
    int grp = lane / 8, s = lane % 8;
    int c = s / 2, l = 16 * (s % 2), hf = s % 2;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int first = grp; first < nb; first += 16) {
        uint4 hdr[4], qv[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int blk = first + 4 * u;
            if (blk < nb) {
                const u8* b = row + (size_t)blk * 144;
                hdr[u] = *(const uint4*)b;
                qv[u] = *(const uint4*)(b + 16 + 16 * s);
            }
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int blk = first + 4 * u;
            if (blk >= nb) break;
            float d = half_to_float((u16)(hdr[u].x & 0xFFFF)), dmin = half_to_float((u16)(hdr[u].x >> 16));
            int sc0, m0, sc1, m1;
            scale_min_hdr(hdr[u], 2 * c, &sc0, &m0);
            scale_min_hdr(hdr[u], 2 * c + 1, &sc1, &m1);
            float d0 = d * (float)sc0, d1 = d * (float)sc1;
            float mn0 = dmin * (float)m0, mn1 = dmin * (float)m1;
            int lo[4], hi[4];
            u32 qw[4] = {qv[u].x, qv[u].y, qv[u].z, qv[u].w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                lo[i] = (int)(qw[i] & 0x0F0F0F0F);
                hi[i] = (int)((qw[i] >> 4) & 0x0F0F0F0F);
            }
            int e_lo = blk * 256 + 64 * c + l;
            int xb = blk * 8 + 2 * c; // x block of the low nibbles; +1 for the high ones
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t >= n) break;
                uint4 xl = *(const uint4*)(xq + (size_t)t * cols + e_lo);
                uint4 xh = *(const uint4*)(xq + (size_t)t * cols + e_lo + 32);
                int sl = dp4a(lo[0], (int)xl.x, 0);
                sl = dp4a(lo[1], (int)xl.y, sl);
                sl = dp4a(lo[2], (int)xl.z, sl);
                sl = dp4a(lo[3], (int)xl.w, sl);
                int sh = dp4a(hi[0], (int)xh.x, 0);
                sh = dp4a(hi[1], (int)xh.y, sh);
                sh = dp4a(hi[2], (int)xh.z, sh);
                sh = dp4a(hi[3], (int)xh.w, sh);
                size_t bx = (size_t)t * nxb + xb;
                acc[t] += d0 * xd[bx] * (float)sl - mn0 * xs[bx * 2 + hf]
                        + d1 * xd[bx + 1] * (float)sh - mn1 * xs[(bx + 1) * 2 + hf];
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t >= n) break;
        float sum = acc[t];
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
        if (lane == 0) out[(size_t)t * rows + warp] = sum;
    }
}

// Q6_K × 8-bit activations. Lanes as in gemv_q6k_t; each 8-element group k is
// rebuilt as signed bytes q − 32 (per byte: set bit 7, subtract 32, clear bit 7
// again — no borrow crosses bytes since every byte is at most 63) for dp4a.
template <int NT>
__device__ __forceinline__ void gemv_q6k_q8_t(const u8* __restrict__ w, const i8* __restrict__ xq,
                                              const float* __restrict__ xd, float* out, int rows, int cols,
                                              int n) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= rows) return;
    int nb = cols / 256, nxb = cols / 32;
    const u8* row = w + (size_t)warp * nb * 210;
    int grp = lane / 8, s = lane % 8;
    int half_ = s / 4, l0 = 8 * (s % 4);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int first = grp; first < nb; first += 16) {
        u32 ql0[4][2], ql1[4][2], qh[4][2];
        u32 sc[4];
        float dd[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int blk = first + 4 * u;
            if (blk < nb) {
                const u8* b = row + (size_t)blk * 210;
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    ql0[u][i] = load_u32_2aligned(b + 64 * half_ + l0 + 4 * i);
                    ql1[u][i] = load_u32_2aligned(b + 64 * half_ + 32 + l0 + 4 * i);
                    qh[u][i] = load_u32_2aligned(b + 128 + 32 * half_ + l0 + 4 * i);
                }
                const u8* sp = b + 192 + 8 * half_ + l0 / 16;
                sc[u] = (u32)sp[0] | ((u32)sp[2] << 8) | ((u32)sp[4] << 16) | ((u32)sp[6] << 24);
                dd[u] = h2f(b + 208);
            }
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int blk = first + 4 * u;
            if (blk >= nb) break;
            int qs[4][2];
            float dk[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                dk[k] = dd[u] * (float)(i8)((sc[u] >> (8 * k)) & 0xFF);
#pragma unroll
                for (int i = 0; i < 2; ++i)
                    qs[k][i] = (int)(((q6k_values(ql0[u][i], ql1[u][i], qh[u][i], k) | 0x80808080u) - 0x20202020u) ^
                                     0x80808080u);
            }
            int e0 = blk * 256 + 128 * half_ + l0;
            int xb0 = blk * 8 + 4 * half_;
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t >= n) break;
                float total = 0.0f;
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    uint2 xv = *(const uint2*)(xq + (size_t)t * cols + e0 + 32 * k);
                    int si = dp4a(qs[k][0], (int)xv.x, dp4a(qs[k][1], (int)xv.y, 0));
                    total += dk[k] * xd[(size_t)t * nxb + xb0 + k] * (float)si;
                }
                acc[t] += total;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t >= n) break;
        float sum = acc[t];
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
        if (lane == 0) out[(size_t)t * rows + warp] = sum;
    }
}

#define GEMV_Q8_ENTRY(NT)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) gemv_q4k_q8_##NT(                                     \
        const u8* __restrict__ w, const i8* __restrict__ xq, const float* __restrict__ xd,                   \
        const float* __restrict__ xs, float* out, int rows, int cols, int n) {                               \
        gemv_q4k_q8_t<NT>(w, xq, xd, xs, out, rows, cols, n);                                                \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(128) gemv_q6k_q8_##NT(                                     \
        const u8* __restrict__ w, const i8* __restrict__ xq, const float* __restrict__ xd,                   \
        const float* __restrict__ xs, float* out, int rows, int cols, int n) {                               \
        gemv_q6k_q8_t<NT>(w, xq, xd, out, rows, cols, n);                                                    \
    }
GEMV_Q8_ENTRY(1)
GEMV_Q8_ENTRY(2)
GEMV_Q8_ENTRY(4)
GEMV_Q8_ENTRY(8)

// ---------------------------------------------------------------------------
// Decode GEMVs, second design: persistent blocks of 8 warps. A block copies the
// 8-bit activations (and their scales) into shared memory once, then walks its
// share of the rows, so the loop after each weight load reads x from shared
// memory instead of waiting on L2. `wpr` warps share a row (each a slice of its
// superblocks, chosen so one round of loads covers the row); their partial sums
// meet in shared memory in a fixed order, so results do not depend on timing.
// Epilogues fold in what used to be separate kernels: a per-row bias (q, k, v),
// a residual (out = W·x + residual, in place for x += W·h), and SwiGLU over two
// matrices read side by side (out = silu(W_gate·x) · W_up·x).

// The block's copy of the 8-bit activations is stored swizzled: the 16-byte
// chunk ch (elements 16 ch .. 16 ch + 16) of superblock blk sits in slot
// (4 (ch % 4) + ch / 4) ^ (4 (blk % 2)) of its 256 bytes. A Q4_K lane reads
// the chunks 4c + k (k = 0..3) of its 64 elements in step k, so the 8 lanes of
// a quarter warp (4 lanes of one superblock, 4 of the next) hit 8 distinct
// groups of 4 banks; in the natural order they would hit 2-4 lanes per bank.
__device__ __forceinline__ int xq_slot(int blk, int ch) { return (4 * (ch & 3) + (ch >> 2)) ^ (4 * (blk & 1)); }

// Byte offset of element e (multiple of 8) of token t in the swizzled copy.
__device__ __forceinline__ int xq_at(int t, int cols, int e) {
    int blk = e >> 8, ch = (e >> 4) & 15;
    return t * cols + (blk << 8) + 16 * xq_slot(blk, ch) + (e & 15);
}

// Σ of 32 byte products: the words w[0..8] against the bytes of a, then b.
__device__ __forceinline__ int dp4a_32(const int* w, uint4 a, uint4 b) {
    int s = dp4a(w[0], (int)a.x, 0);
    s = dp4a(w[1], (int)a.y, s);
    s = dp4a(w[2], (int)a.z, s);
    s = dp4a(w[3], (int)a.w, s);
    s = dp4a(w[4], (int)b.x, s);
    s = dp4a(w[5], (int)b.y, s);
    s = dp4a(w[6], (int)b.z, s);
    return dp4a(w[7], (int)b.w, s);
}

// One Q4_K superblock against the shared-memory activations, four lanes per
// superblock: lane c (0..3) holds qs[32c .. 32c + 32] (`qa`, `qb`), whose low
// nibbles are sub-block 2c and high nibbles sub-block 2c + 1, so each lane
// unpacks two scale/minimum pairs per 64 elements (with eight lanes per
// superblock it was two per 32, and the GEMV issued an instruction every
// cycle it could). Σ (d·sc·q − dmin·m)·x = d·sc·Σ q·x − dmin·m·Σ x per sub-block.
template <int NT>
__device__ __forceinline__ void q4k_dot4_smem(uint4 hdr, uint4 qa, uint4 qb, int blk, const i8* sq,
                                              const float* sd, const float* ss, int cols, int nxb, int n, int c,
                                              float* acc) {
    float d = half_to_float((u16)(hdr.x & 0xFFFF)), dmin = half_to_float((u16)(hdr.x >> 16));
    int sc0, m0, sc1, m1;
    scale_min_hdr(hdr, 2 * c, &sc0, &m0);
    scale_min_hdr(hdr, 2 * c + 1, &sc1, &m1);
    float d0 = d * (float)sc0, d1 = d * (float)sc1;
    float mn0 = dmin * (float)m0, mn1 = dmin * (float)m1;
    int lo[8], hi[8];
    u32 qw[8] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        lo[i] = (int)(qw[i] & 0x0F0F0F0F);
        hi[i] = (int)((qw[i] >> 4) & 0x0F0F0F0F);
    }
    const int xb = blk * 8 + 2 * c;
    const int sw = 4 * (blk & 1);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t >= n) break;
        const uint4* xs = (const uint4*)(sq + (size_t)t * cols + blk * 256);
        uint4 x0 = xs[c ^ sw], x1 = xs[(4 + c) ^ sw], x2 = xs[(8 + c) ^ sw], x3 = xs[(12 + c) ^ sw];
        int sl = dp4a_32(lo, x0, x1), sh = dp4a_32(hi, x2, x3);
        float2 dx = *(const float2*)(sd + t * nxb + xb);
        float4 s4 = *(const float4*)(ss + 2 * (t * nxb + xb));
        acc[t] += d0 * dx.x * (float)sl - mn0 * (s4.x + s4.y) + d1 * dx.y * (float)sh - mn1 * (s4.z + s4.w);
    }
}

// Q6_K, four lanes per superblock: lane c takes half h = c / 2 and the 16
// columns l0 = 16 (c % 2) .. l0 + 16 of it, i.e. 16 bytes of each of ql[64h ..],
// ql[64h + 32 ..] and qh[32h ..] (elements 128h + 32k + l0 + 0..16, k = 0..3)
// and the 8 scale bytes of its half. All those runs start 16 bytes apart from
// each other, so they share the block's misalignment (blocks of 210 bytes are
// only 2-byte aligned): each is read as three aligned 8-byte words and shifted
// into place. With eight lanes per superblock a lane took 17 loads of 1-2
// bytes per 32 elements and the GEMV was bound by the L1's throughput (80 %
// busy at 1.5 TB/s); here 12 loads cover 64 elements. Every word read lies in
// the block except the second scale word of the upper half, which can reach 6
// bytes past it: for a matrix's last block that is past the matrix, but inside
// the aligned 8-byte word that holds the block's last bytes (so never another
// page or allocation).
struct Q6kLane4 {
    unsigned long long ql0[3], ql1[3], qh[3], sc[2];
    u32 d; // f16 bits
};

__device__ __forceinline__ Q6kLane4 q6k_load4(const u8* b, int c) {
    const int h = c >> 1, l0 = 16 * (c & 1);
    // The 8-byte word below the block's start; every run starts a multiple
    // of 8 bytes past it. (Pointer arithmetic, not integer: the compiler then
    // still sees shared memory as shared, for the ring GEMVs.)
    const u8* w = b - ((size_t)b & 7);
    const unsigned long long* p;
    Q6kLane4 q;
    p = (const unsigned long long*)(w + 64 * h + l0);
    q.ql0[0] = p[0], q.ql0[1] = p[1], q.ql0[2] = p[2];
    p = (const unsigned long long*)(w + 64 * h + 32 + l0);
    q.ql1[0] = p[0], q.ql1[1] = p[1], q.ql1[2] = p[2];
    p = (const unsigned long long*)(w + 128 + 32 * h + l0);
    q.qh[0] = p[0], q.qh[1] = p[1], q.qh[2] = p[2];
    p = (const unsigned long long*)(w + 192 + 8 * h);
    q.sc[0] = p[0], q.sc[1] = p[1];
    q.d = *(const u16*)(b + 208);
    return q;
}

// Bytes [sh / 8, sh / 8 + 4n) of the words w (little-endian), sh = 8 · (block
// address % 8): o[i] = bytes 4i .. 4i + 4 of the run.
template <int N>
__device__ __forceinline__ void q6k_align(const unsigned long long* w, int sh, u32* o) {
    u32 v[2 * ((N + 1) / 2) + 2];
#pragma unroll
    for (int i = 0; i < (N + 1) / 2 + 1; ++i) {
        v[2 * i] = (u32)w[i];
        v[2 * i + 1] = (u32)(w[i] >> 32);
    }
    const bool up = sh >= 32;
    const int r = sh & 31;
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] = __funnelshift_r(up ? v[i + 1] : v[i], up ? v[i + 2] : v[i + 1], r);
}

// d · Σ_k sc_k · Σ (q − 32) · x over the lane's 64 elements, as
// d · sc_k · (dx · Σ q·x8 − 32 · Σ x) per 16: the 6-bit values stay unsigned
// (dp4a u8 × s8) and the −32 is taken once per 16 from the activation's sum.
__device__ __forceinline__ int dp4a_us(u32 a, int b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

template <int NT>
__device__ __forceinline__ void q6k_dot4_smem(const Q6kLane4& q, size_t addr, int blk, const i8* sq,
                                              const float* sd, const float* ss, int cols, int nxb, int n, int c,
                                              float* acc) {
    const int h = c >> 1, hf = c & 1;
    const int sh = 8 * (int)(addr & 7);
    u32 ql0[4], ql1[4], qh[4], sc[2];
    q6k_align<4>(q.ql0, sh, ql0);
    q6k_align<4>(q.ql1, sh, ql1);
    q6k_align<4>(q.qh, sh, qh);
    q6k_align<2>(q.sc, sh, sc);
    const float d = half_to_float((u16)q.d);
    u32 qs[4][4];
#pragma unroll
    for (int k = 0; k < 4; ++k)
#pragma unroll
        for (int i = 0; i < 4; ++i)
            qs[k][i] = q6k_values(ql0[i], ql1[i], qh[i], k);
    // Scale k of this lane: byte 2k + hf of the half's 8.
    float dk[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) dk[k] = d * (float)(i8)((sc[k >> 1] >> (8 * (2 * (k & 1) + hf))) & 0xFF);
    const int e0 = blk * 256 + 128 * h + 16 * hf;
    const int xb0 = blk * 8 + 4 * h;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t >= n) break;
        float total = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            uint4 xv = *(const uint4*)(sq + xq_at(t, cols, e0 + 32 * k));
            int si = dp4a_us(qs[k][0], (int)xv.x, 0);
            si = dp4a_us(qs[k][1], (int)xv.y, si);
            si = dp4a_us(qs[k][2], (int)xv.z, si);
            si = dp4a_us(qs[k][3], (int)xv.w, si);
            int bx = t * nxb + xb0 + k;
            total += dk[k] * (sd[bx] * (float)si - 32.0f * ss[2 * bx + hf]);
        }
        acc[t] += total;
    }
}



// One matrix of a launch: up to three share the activations (the q, k and v
// projections), each with its own output and epilogue. Row groups of segment
// k are numbered from `groups_before`. (Mirrored by `GemvSeg` in mod.rs.)
struct GemvSeg {
    const u8* w;
    const u8* w2;          // SwiGLU: the up matrix beside the gate matrix `w`
    float* out;
    const float* bias;     // per row, or null
    const float* residual; // out = W·x + residual (may be out itself), or null
    int rows;
    int fmt; // 0: Q4_K (144-byte superblocks), 1: Q6_K (210)
    int groups_before;
    int pad;
};
struct GemvSegs {
    GemvSeg seg[3];
    int count;
    int total_groups;
};

// One round of a lane's loads: the 16 header bytes and lane c's 32 quant
// bytes of U Q4_K superblocks first + stride·u (those past the row's end skipped).
template <int U>
__device__ __forceinline__ void q4k_round(const u8* row, int first, int stride, int nb, int c, uint4 (&h)[U],
                                          uint4 (&qa)[U], uint4 (&qb)[U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
        int blk = first + stride * u;
        if (blk < nb) {
            const u8* b = row + (size_t)blk * 144;
            h[u] = *(const uint4*)b;
            qa[u] = *(const uint4*)(b + 16 + 32 * c);
            qb[u] = *(const uint4*)(b + 32 + 32 * c);
        }
    }
}

// One round of a lane's weight loads in any of the kernels' formats, 96
// bytes: Q4_K two superblocks' 48 (header, its 32 quant bytes) or, for
// SwiGLU, one of the gate matrix's and one of the up matrix's; Q6_K one
// superblock's Q6kLane4 (90). A block loads its first round into one of these
// before it waits on the previous kernel (`GEMV_PRELOAD`).
struct RoundRegs {
    uint4 v[6];
};

__device__ __forceinline__ uint4 pack_u64(u64 a, u64 b) {
    uint4 r;
    r.x = (u32)a, r.y = (u32)(a >> 32), r.z = (u32)b, r.w = (u32)(b >> 32);
    return r;
}
__device__ __forceinline__ u64 lo_u64(uint4 a) { return (u64)a.x | ((u64)a.y << 32); }
__device__ __forceinline__ u64 hi_u64(uint4 a) { return (u64)a.z | ((u64)a.w << 32); }

// The round of superblocks first + stride·u (u < U) of `row` (and of `row2`,
// SwiGLU's up matrix), lane group position s; those past nb are not loaded.
template <int FMT, bool SWIGLU, int U>
__device__ __forceinline__ void load_round(RoundRegs& p, const u8* row, const u8* row2, int first, int stride,
                                           int nb, int s) {
    static_assert(FMT != 0 || 3 * U * (SWIGLU ? 2 : 1) <= 6, "a Q4_K round is at most 96 bytes");
    static_assert(FMT == 0 || (U == 1 && !SWIGLU), "a Q6_K round is one superblock");
    if (FMT == 0) {
        uint4 h[U], qa[U], qb[U];
        q4k_round<U>(row, first, stride, nb, s, h, qa, qb);
#pragma unroll
        for (int u = 0; u < U; ++u) p.v[3 * u] = h[u], p.v[3 * u + 1] = qa[u], p.v[3 * u + 2] = qb[u];
        if (SWIGLU) {
            q4k_round<U>(row2, first, stride, nb, s, h, qa, qb);
#pragma unroll
            for (int u = 0; u < U; ++u)
                p.v[3 * (U + u)] = h[u], p.v[3 * (U + u) + 1] = qa[u], p.v[3 * (U + u) + 2] = qb[u];
        }
    } else {
        if (first < nb) {
            Q6kLane4 q = q6k_load4(row + (size_t)first * 210, s);
            p.v[0] = pack_u64(q.ql0[0], q.ql0[1]);
            p.v[1] = pack_u64(q.ql0[2], q.ql1[0]);
            p.v[2] = pack_u64(q.ql1[1], q.ql1[2]);
            p.v[3] = pack_u64(q.qh[0], q.qh[1]);
            p.v[4] = pack_u64(q.qh[2], q.sc[0]);
            p.v[5] = pack_u64(q.sc[1], (u64)q.d);
        }
    }
}

__device__ __forceinline__ Q6kLane4 q6k_unpack(const RoundRegs& p) {
    Q6kLane4 q;
    q.ql0[0] = lo_u64(p.v[0]), q.ql0[1] = hi_u64(p.v[0]), q.ql0[2] = lo_u64(p.v[1]);
    q.ql1[0] = hi_u64(p.v[1]), q.ql1[1] = lo_u64(p.v[2]), q.ql1[2] = hi_u64(p.v[2]);
    q.qh[0] = lo_u64(p.v[3]), q.qh[1] = hi_u64(p.v[3]), q.qh[2] = lo_u64(p.v[4]);
    q.sc[0] = hi_u64(p.v[4]), q.sc[1] = lo_u64(p.v[5]);
    q.d = p.v[5].z;
    return q;
}

// One round's arithmetic: the superblocks first + stride·u (u < U) of the
// round `p` against the activations.
template <int NT, int FMT, bool SWIGLU, int U>
__device__ __forceinline__ void round_dot(const RoundRegs& p, const u8* row, int first, int stride, int nb, int s,
                                          const i8* sq, const float* sd, const float* ss, int cols, int nxb, int n,
                                          float* acc, float* acc2) {
    if (FMT == 0) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            int blk = first + stride * u;
            if (blk >= nb) break;
            q4k_dot4_smem<NT>(p.v[3 * u], p.v[3 * u + 1], p.v[3 * u + 2], blk, sq, sd, ss, cols, nxb, n, s, acc);
            if (SWIGLU)
                q4k_dot4_smem<NT>(p.v[3 * (U + u)], p.v[3 * (U + u) + 1], p.v[3 * (U + u) + 2], blk, sq, sd, ss, cols,
                                  nxb, n, s, acc2);
        }
    } else {
        q6k_dot4_smem<NT>(q6k_unpack(p), (size_t)(row + (size_t)first * 210), first, sq, sd, ss, cols, nxb, n, s, acc);
    }
}

// This warp's share of row `r` of one matrix: its lane groups' superblocks
// first0 + stride·k, in rounds of U loads per group all in flight together;
// with PRE the first round is `pre`, loaded before the kernel's wait.
// (Issuing the next round before this one's arithmetic was tried: it needs
// ~115 registers, halves the resident warps, and decoded 10 % slower.)
template <int NT, int FMT, bool SWIGLU, int U, bool PRE>
__device__ __forceinline__ void gemv_row_part(const u8* row, const u8* row2, int first0, int stride, int nb, int s,
                                              const i8* sq, const float* sd, const float* ss, int cols, int nxb,
                                              int n, float* acc, float* acc2, const RoundRegs& pre) {
    int first = first0;
    if (PRE) {
        if (first < nb) round_dot<NT, FMT, SWIGLU, U>(pre, row, first, stride, nb, s, sq, sd, ss, cols, nxb, n, acc, acc2);
        first += U * stride;
    }
    for (; first < nb; first += U * stride) {
        RoundRegs p;
        load_round<FMT, SWIGLU, U>(p, row, row2, first, stride, nb, s);
        round_dot<NT, FMT, SWIGLU, U>(p, row, first, stride, nb, s, sq, sd, ss, cols, nxb, n, acc, acc2);
    }
}

// The block's copy of the step's 8-bit activations (swizzled, xq_slot), their
// per-32 scales and per-16 sums; ends with a barrier. All of it is one list
// of 16-byte pieces (values, then scales, then sums), each thread loading
// BATCH pieces before storing any: the staging is on every decode GEMV's
// critical path (after the wait on the previous kernel), and one load at a
// time made it ten round trips to L2 for a 27648-wide row.
template <int BATCH>
__device__ __forceinline__ void stage_activations(const i8* __restrict__ xq, const float* __restrict__ xd,
                                                  const float* __restrict__ xs, i8* sq, float* sd, float* ss,
                                                  int cols, int n) {
    const int chunks = cols / 16, nxb = cols / 32;
    const int values = n * chunks, scales = n * nxb / 4, sums = 2 * n * nxb / 4; // nxb is a multiple of 8
    const int pieces = values + scales + sums;
    for (int base = threadIdx.x; base < pieces; base += BATCH * blockDim.x) {
        uint4 v[BATCH];
#pragma unroll
        for (int k = 0; k < BATCH; ++k) {
            const int i = base + k * blockDim.x;
            if (i < values)
                v[k] = ((const uint4*)xq)[i];
            else if (i < values + scales)
                v[k] = ((const uint4*)xd)[i - values];
            else if (i < pieces)
                v[k] = ((const uint4*)xs)[i - values - scales];
        }
#pragma unroll
        for (int k = 0; k < BATCH; ++k) {
            const int i = base + k * blockDim.x;
            if (i < values) {
                const int t = i / chunks, ci = i - t * chunks, blk = ci >> 4;
                ((uint4*)(sq + (size_t)t * cols + blk * 256))[xq_slot(blk, ci & 15)] = v[k];
            } else if (i < values + scales) {
                ((uint4*)sd)[i - values] = v[k];
            } else if (i < pieces) {
                ((uint4*)ss)[i - values - scales] = v[k];
            }
        }
    }
    __syncthreads();
}

__device__ __forceinline__ GemvSeg seg_of(const GemvSegs& segs, int rg) {
    GemvSeg g = segs.seg[0];
    if (segs.count > 1 && rg >= segs.seg[1].groups_before) g = segs.seg[1];
    if (segs.count > 2 && rg >= segs.seg[2].groups_before) g = segs.seg[2];
    return g;
}

// `flags` of the shared-memory GEMVs.
// The row's warps meet at a barrier of their own (bar.sync 1 + row_in), not
// the whole block's: the other rows' warps keep their loads in flight.
#define GEMV_ROW_BARRIER 1
// The block's first round of weights is loaded before it waits on the
// previous kernel (RoundRegs), so its round trip overlaps the wait and the
// staging of the activations.
#define GEMV_PRELOAD 2

// Where the `wpr` warps sharing a row exchange partial sums.
__device__ __forceinline__ void row_sync(int flags, int row_in, int wpr) {
    if (flags & GEMV_ROW_BARRIER)
        asm volatile("bar.sync %0, %1;" ::"r"(1 + row_in), "r"(32 * wpr) : "memory");
    else
        __syncthreads();
}

// Token t's output of row r from its sums (v; SwiGLU: v2 the up matrix's):
// the epilogue (SwiGLU, bias, residual), then the store.
template <bool SWIGLU>
__device__ __forceinline__ void store_row(const GemvSeg& g, int r, int t, float v, float v2) {
    if (SWIGLU) v = v / (1.0f + expf(-v)) * v2;
    if (g.bias) v += g.bias[r];
    const size_t at = (size_t)t * g.rows + r;
    if (g.residual) v += g.residual[at];
    g.out[at] = v;
}

// Row r's lane sums → its output: reduced over the warp, over the row's `wpr`
// warps in a fixed order (through `part`, with barriers every warp of the row
// group reaches), then the epilogue (SwiGLU, bias, residual).
template <int NT, bool SWIGLU>
__device__ __forceinline__ void finish_row(const GemvSeg& g, int r, float* acc, float* acc2, float* part, int n,
                                           int wpr, int warp, int piece, int lane, int row_in, int flags) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        acc[t] = warp_sum(acc[t]);
        if (SWIGLU) acc2[t] = warp_sum(acc2[t]);
    }
    if (wpr > 1) {
        if (lane == 0) {
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                part[(warp * NT + t) * 2] = acc[t];
                part[(warp * NT + t) * 2 + 1] = acc2[t];
            }
        }
        row_sync(flags, row_in, wpr);
        if (piece == 0) {
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                float a = 0.0f, a2 = 0.0f;
                for (int p = 0; p < wpr; ++p) {
                    a += part[((warp + p) * NT + t) * 2];
                    a2 += part[((warp + p) * NT + t) * 2 + 1];
                }
                acc[t] = a;
                acc2[t] = a2;
            }
        }
    }
    if (piece == 0 && lane < NT && r < g.rows) {
        // Lane t writes token t's result.
        float v = 0.0f, v2 = 0.0f;
#pragma unroll
        for (int t = 0; t < NT; ++t)
            if (t == lane) {
                v = acc[t];
                v2 = acc2[t];
            }
        if (lane < n) store_row<SWIGLU>(g, r, lane, v, v2);
    }
    if (wpr > 1) row_sync(flags, row_in, wpr); // the partial sums are rewritten next round
}

// Ask L2 for the weight rows of row group `rg` (and the up matrix's beside
// them): one prefetch per 128-byte line, spread over the block's threads.
template <bool SWIGLU>
__device__ __forceinline__ void prefetch_rows(const GemvSegs& segs, int rg, int rpb, int nb) {
    if (rg >= segs.total_groups) return;
    const GemvSeg g = seg_of(segs, rg);
    const int r0 = (rg - g.groups_before) * rpb;
    const size_t row_bytes = (size_t)nb * (g.fmt ? 210 : 144);
    const size_t off = (size_t)r0 * row_bytes, bytes = (size_t)min(rpb, g.rows - r0) * row_bytes;
    for (size_t at = (size_t)threadIdx.x * 128; at < bytes; at += (size_t)blockDim.x * 128) {
        asm volatile("prefetch.global.L2 [%0];" ::"l"(g.w + off + at));
        if (SWIGLU) asm volatile("prefetch.global.L2 [%0];" ::"l"(g.w2 + off + at));
    }
}

// Row group rg: this warp's share of its row, then the row's output.
template <int NT, bool SWIGLU, int U4, bool PRE>
__device__ __forceinline__ void gemv_group(const GemvSegs& segs, int rg, int rpb, int row_in, int first4, int stride4,
                                           int nb, int c4, const i8* sq, const float* sd, const float* ss, int cols,
                                           int nxb, int n, float* part, int wpr, int warp, int piece, int lane,
                                           int flags, const RoundRegs& pre) {
    const GemvSeg g = seg_of(segs, rg);
    const int r = (rg - g.groups_before) * rpb + row_in;
    float acc[NT], acc2[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = acc2[t] = 0.0f;
    if (r < g.rows) {
        if (SWIGLU || g.fmt == 0) {
            const u8* row = g.w + (size_t)r * nb * 144;
            const u8* row2 = SWIGLU ? g.w2 + (size_t)r * nb * 144 : row;
            gemv_row_part<NT, 0, SWIGLU, U4, PRE>(row, row2, first4, stride4, nb, c4, sq, sd, ss, cols, nxb, n, acc,
                                                  acc2, pre);
        } else {
            const u8* row = g.w + (size_t)r * nb * 210;
            gemv_row_part<NT, 1, false, 1, PRE>(row, row, first4, stride4, nb, c4, sq, sd, ss, cols, nxb, n, acc, acc2,
                                                pre);
        }
    }
    finish_row<NT, SWIGLU>(g, r, acc, acc2, part, n, wpr, warp, piece, lane, row_in, flags);
}

// Shared memory: n·cols quant bytes, n·cols/32 scales, 2·n·cols/32 half sums
// (Q4_K), then 8 warps × NT × 2 partial sums. SWIGLU segments are Q4_K.
template <int NT, bool SWIGLU, int U>
__device__ __forceinline__ void gemv_segs_t(const GemvSegs& segs, const i8* __restrict__ xq,
                                            const float* __restrict__ xd, const float* __restrict__ xs, int cols,
                                            int n, int wpr, int prefetch, int flags) {
    extern __shared__ __align__(16) unsigned char gemv_smem[];
    const int nb = cols / 256, nxb = cols / 32;
    i8* sq = (i8*)gemv_smem;
    float* sd = (float*)(gemv_smem + (size_t)n * cols);
    float* ss = sd + n * nxb;
    float* part = ss + 2 * n * nxb;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int rpb = 8 / wpr, row_in = warp / wpr, piece = warp % wpr;
    // Groups of 4 lanes per superblock (q4k_dot4_smem, q6k_dot4_smem), each
    // taking superblocks first + stride·k of the warp's interleaved share.
    const int c4 = lane % 4, first4 = piece * 8 + lane / 4, stride4 = 8 * wpr;
    constexpr int U4 = U > 1 ? U / 2 : 1; // a Q4_K lane loads 48 bytes per superblock
    // While the previous kernels finish: this warp's first round of weights
    // (GEMV_PRELOAD), and the weights of the block's first `prefetch` row
    // groups into L2 (none depends on a kernel); then the activations.
    RoundRegs pre;
    bool preloaded = false;
    if ((flags & GEMV_PRELOAD) && blockIdx.x < segs.total_groups) {
        const GemvSeg g = seg_of(segs, blockIdx.x);
        const int r = (blockIdx.x - g.groups_before) * rpb + row_in;
        if (r < g.rows) {
            preloaded = true;
            if (SWIGLU || g.fmt == 0)
                load_round<0, SWIGLU, U4>(pre, g.w + (size_t)r * nb * 144, SWIGLU ? g.w2 + (size_t)r * nb * 144 : g.w,
                                          first4, stride4, nb, c4);
            else
                load_round<1, false, 1>(pre, g.w + (size_t)r * nb * 210, g.w, first4, stride4, nb, c4);
        }
    }
    for (int i = 0; i < prefetch; ++i) prefetch_rows<SWIGLU>(segs, blockIdx.x + i * gridDim.x, rpb, nb);
    chain_wait();
    chain_next();
    stage_activations<2>(xq, xd, xs, sq, sd, ss, cols, n);
    // The first row group apart, so that `pre` is dead in the loop.
    int rg = blockIdx.x;
    if (preloaded) {
        gemv_group<NT, SWIGLU, U4, true>(segs, rg, rpb, row_in, first4, stride4, nb, c4, sq, sd, ss, cols, nxb, n, part,
                                         wpr, warp, piece, lane, flags, pre);
        rg += gridDim.x;
    }
    for (; rg < segs.total_groups; rg += gridDim.x)
        gemv_group<NT, SWIGLU, U4, false>(segs, rg, rpb, row_in, first4, stride4, nb, c4, sq, sd, ss, cols, nxb, n,
                                          part, wpr, warp, piece, lane, flags, pre);
}

// MIN_BLOCKS: resident blocks per SM the register allocation must allow.
// U: Q4_K rounds of U / 2 superblocks per lane group (Q6_K: one).
#define GEMV_SMEM_ENTRY(NAME, NT, SWIGLU, U, MIN_BLOCKS)                                                   \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS)                                            \
        NAME(const GemvSegs segs, const i8* __restrict__ xq, const float* __restrict__ xd,                   \
             const float* __restrict__ xs, int cols, int n, int wpr, int prefetch, int flags) {              \
        gemv_segs_t<NT, SWIGLU, U>(segs, xq, xd, xs, cols, n, wpr, prefetch, flags);                         \
    }
// 1 and 2 tokens, plain and SwiGLU: gemv_smem{SUFFIX}_N, gemv_swiglu_smem{SUFFIX}_N.
#define GEMV_SMEM_ENTRIES(SUFFIX, MIN_BLOCKS)                                                              \
    GEMV_SMEM_ENTRY(gemv_smem##SUFFIX##_1, 1, false, 4, MIN_BLOCKS)                                        \
    GEMV_SMEM_ENTRY(gemv_smem##SUFFIX##_2, 2, false, 4, MIN_BLOCKS)                                        \
    GEMV_SMEM_ENTRY(gemv_swiglu_smem##SUFFIX##_1, 1, true, 2, MIN_BLOCKS)                                  \
    GEMV_SMEM_ENTRY(gemv_swiglu_smem##SUFFIX##_2, 2, true, 2, MIN_BLOCKS)
GEMV_SMEM_ENTRIES(, 1)
// The same held to 3 and 4 resident blocks (≤ 85 and ≤ 64 registers).
GEMV_SMEM_ENTRIES(_b3, 3)
GEMV_SMEM_ENTRIES(_b4, 4)

// ---------------------------------------------------------------------------
// Decode GEMVs fed by the copy engine (sm_90): each block keeps a ring of
// `stages` buffers in shared memory, and one lane of its last warp asks the
// Tensor Memory Accelerator for whole row groups (cp.async.bulk: rows are
// contiguous, so a group of rpb rows is one copy) into them, each buffer's
// arrival counted by its own mbarrier. The other warps compute from shared
// memory while the next stages are in flight: the loads hold no registers,
// so a block keeps 3-4 stages of 16-23 KB in flight however long its
// arithmetic takes (the register-fed kernel above holds 96 bytes a lane and
// stops loading while it reduces a row: its long-row down projections ran at
// 2.0 TB/s against gate and up's 2.75). The first `stages` row groups are
// asked for before the wait on the previous kernel. Same lanes and
// arithmetic as gemv_segs_t (gemv_row_part) and the same epilogues. Used for
// launches with rows of at least 4 KiB (mod.rs, `min_row_bytes`): with
// shorter rows a stage is a few rows whose arithmetic cannot hide the
// per-stage waits, and the register-fed kernel is faster.
// ---------------------------------------------------------------------------

__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
#endif
}

// This thread's arrival, announcing `bytes` the copies will complete.
__device__ __forceinline__ void mbar_expect(u64* bar, u32 bytes) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
                 : "memory");
#endif
}

// Until the barrier's phase `parity` has completed.
__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) {
#if __CUDA_ARCH__ >= 900
    u32 done;
    do {
        asm volatile(
            "{\n\t.reg .pred p;\n\t"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
            "selp.u32 %0, 1, 0, p;\n\t}"
            : "=r"(done)
            : "r"(smem_addr(bar)), "r"(parity)
            : "memory");
    } while (!done);
#endif
}

// Shared-memory writes and barrier initialisation by ordinary instructions,
// ordered before what the copy engine does next.
__device__ __forceinline__ void fence_async_smem() {
#if __CUDA_ARCH__ >= 900
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// `bytes` (a multiple of 16) from global `src` (16-byte aligned) to shared
// `dst`, completing on `bar`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, u32 bytes, u64* bar) {
#if __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_addr(dst)),
                 "l"(src), "r"(bytes), "r"(smem_addr(bar))
                 : "memory");
#endif
}

// The 16-byte-aligned span around `bytes` at `src`: its start and length.
// It reaches at most 15 bytes either side of the rows, within the aligned
// 16-byte words that hold their first and last bytes: inside the weight's
// device buffer (allocations start 256-byte aligned and are sized in larger
// units), so never another page. The bytes outside the rows are not read.
__device__ __forceinline__ void aligned_span(const u8* src, size_t bytes, const u8** start, u32* len) {
    const size_t a0 = (size_t)src & ~(size_t)15, a1 = ((size_t)src + bytes + 15) & ~(size_t)15;
    *start = (const u8*)a0;
    *len = (u32)(a1 - a0);
}

// Row group rg (its rows of w and, SwiGLU, of w2) into `stage`: w's span at
// the start, w2's at stage + half. Called by one thread.
template <bool SWIGLU>
__device__ __forceinline__ void ring_fill(const GemvSegs& segs, int rg, int rpb, int nb, u8* stage, int half,
                                          u64* bar) {
    const GemvSeg g = seg_of(segs, rg);
    const int r0 = (rg - g.groups_before) * rpb, cnt = min(rpb, g.rows - r0);
    const size_t rb = (size_t)nb * (g.fmt ? 210 : 144);
    const u8* a;
    u32 len, len2 = 0;
    aligned_span(g.w + (size_t)r0 * rb, (size_t)cnt * rb, &a, &len);
    const u8* a2 = a;
    if (SWIGLU) aligned_span(g.w2 + (size_t)r0 * rb, (size_t)cnt * rb, &a2, &len2);
    mbar_expect(bar, len + len2);
    bulk_copy(stage, a, len, bar);
    if (SWIGLU) bulk_copy(stage + half, a2, len2, bar);
}

// One consumer warp's arrival: done reading its stage, partial sums written.
__device__ __forceinline__ void mbar_arrive(u64* bar) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
#endif
}

// Shared memory: the activations as in gemv_segs_t up to `ring_at`, then
// `stages` buffers of `stage_bytes` (each one row group: for SwiGLU the gate
// rows in the first half, the up rows in the second), then per buffer a
// `full` and an `empty` mbarrier, then per buffer the computing warps'
// partial sums of its rows (consumers × NT × 2 floats). A row group is
// rpb = consumers / wpr rows.
//
// consumers + 1 warps (8 or 16 compute): each computing warp takes its piece
// of a row of every stage, with no barrier among them (its partial sum goes
// to the stage's slots, then it arrives on `empty`); the last warp reduces
// each stage's partial sums in a fixed order, writes the rows' outputs and
// refills the buffer. (With eight warps meeting at two barriers per stage
// and reducing themselves, a block computed one stage at a time: 47 us for a
// 32B down projection against the register-fed kernel's 41.)
template <int NT, bool SWIGLU, int U>
__device__ __forceinline__ void gemv_ring_t(const GemvSegs& segs, const i8* __restrict__ xq,
                                            const float* __restrict__ xd, const float* __restrict__ xs, int cols,
                                            int n, int wpr, int consumers, int ring_at, int stages,
                                            int stage_bytes) {
#if __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char ring_smem[];
    const int nb = cols / 256, nxb = cols / 32;
    i8* sq = (i8*)ring_smem;
    float* sd = (float*)(ring_smem + (size_t)n * cols);
    float* ss = sd + n * nxb;
    u8* ring = ring_smem + ring_at;
    u64* full = (u64*)(ring + (size_t)stages * stage_bytes);
    u64* empty = full + stages;
    float* parts = (float*)(empty + stages); // [stage][warp][NT][2]
    const int half = stage_bytes / 2;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int rpb = consumers / wpr;
    const bool producer = warp == consumers;
    // The ring's first row groups, before the previous kernel is waited on.
    if (producer && lane == 0) {
        for (int s = 0; s < stages; ++s) mbar_init(&full[s], 1), mbar_init(&empty[s], consumers);
        fence_async_smem();
        for (int s = 0; s < stages; ++s) {
            const int rg = blockIdx.x + s * gridDim.x;
            if (rg < segs.total_groups)
                ring_fill<SWIGLU>(segs, rg, rpb, nb, ring + (size_t)s * stage_bytes, half, &full[s]);
        }
    }
    chain_wait();
    chain_next();
    // One token: a 27648-wide row (a 32B down projection) is 2376 pieces, one
    // batch of 9 loads for the 8 computing warps and the refilling one (in
    // batches of 8 it took two round trips: 0.9 % of a 32B decode step).
    stage_activations<NT == 1 ? 9 : 8>(xq, xd, xs, sq, sd, ss, cols, n); // its barrier also publishes the mbarriers
    int s = 0;
    u32 parity = 0;
    if (!producer) {
        const int row_in = warp / wpr, piece = warp % wpr;
        const int c4 = lane % 4, first4 = piece * 8 + lane / 4, stride4 = 8 * wpr;
        constexpr int U4 = U > 1 ? U / 2 : 1;
        const RoundRegs unused = {};
        for (int rg = blockIdx.x; rg < segs.total_groups; rg += gridDim.x) {
            const u8* stage = ring + (size_t)s * stage_bytes;
            const GemvSeg g = seg_of(segs, rg);
            const int r0 = (rg - g.groups_before) * rpb, r = r0 + row_in;
            const size_t rb = (size_t)nb * (g.fmt ? 210 : 144);
            // The copy started at the 16-byte boundary below row r0, so the
            // staged rows keep their global misalignment (Q6_K reads by it).
            const u8* row = stage + (((size_t)g.w + (size_t)r0 * rb) & 15) + (size_t)row_in * rb;
            const u8* row2 =
                SWIGLU ? stage + half + (((size_t)g.w2 + (size_t)r0 * rb) & 15) + (size_t)row_in * rb : row;
            float acc[NT], acc2[NT];
#pragma unroll
            for (int t = 0; t < NT; ++t) acc[t] = acc2[t] = 0.0f;
            mbar_wait(&full[s], parity);
            if (r < g.rows) {
                if (SWIGLU || g.fmt == 0)
                    gemv_row_part<NT, 0, SWIGLU, U4, false>(row, row2, first4, stride4, nb, c4, sq, sd, ss, cols,
                                                            nxb, n, acc, acc2, unused);
                else
                    gemv_row_part<NT, 1, false, 1, false>(row, row, first4, stride4, nb, c4, sq, sd, ss, cols, nxb,
                                                          n, acc, acc2, unused);
            }
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                acc[t] = warp_sum(acc[t]);
                if (SWIGLU) acc2[t] = warp_sum(acc2[t]);
            }
            if (lane == 0) {
                float* p = parts + ((size_t)s * consumers + warp) * NT * 2;
#pragma unroll
                for (int t = 0; t < NT; ++t) p[2 * t] = acc[t], p[2 * t + 1] = acc2[t];
                mbar_arrive(&empty[s]);
            }
            if (++s == stages) s = 0, parity ^= 1;
        }
    } else {
        for (int rg = blockIdx.x; rg < segs.total_groups; rg += gridDim.x) {
            mbar_wait(&empty[s], parity);
            // Lane j: row j % rpb of the group, token j / rpb.
            const GemvSeg g = seg_of(segs, rg);
            const int row_in = lane % rpb, t = lane / rpb;
            const int r = (rg - g.groups_before) * rpb + row_in;
            if (t < n && r < g.rows) {
                const float* p = parts + (size_t)s * consumers * NT * 2;
                float v = 0.0f, v2 = 0.0f;
                for (int k = 0; k < wpr; ++k) {
                    v += p[((row_in * wpr + k) * NT + t) * 2];
                    v2 += p[((row_in * wpr + k) * NT + t) * 2 + 1];
                }
                store_row<SWIGLU>(g, r, t, v, v2);
            }
            __syncwarp();
            if (lane == 0) {
                const int next = rg + stages * gridDim.x;
                if (next < segs.total_groups) {
                    fence_async_smem();
                    ring_fill<SWIGLU>(segs, next, rpb, nb, ring + (size_t)s * stage_bytes, half, &full[s]);
                }
            }
            if (++s == stages) s = 0, parity ^= 1;
        }
    }
#endif
}

#define GEMV_RING_ENTRY(NAME, NT, SWIGLU, U)                                                               \
    extern "C" __global__ void __launch_bounds__(17 * 32, 1)                                                 \
        NAME(const GemvSegs segs, const i8* __restrict__ xq, const float* __restrict__ xd,                   \
             const float* __restrict__ xs, int cols, int n, int wpr, int consumers, int ring_at, int stages, \
             int stage_bytes) {                                                                              \
        gemv_ring_t<NT, SWIGLU, U>(segs, xq, xd, xs, cols, n, wpr, consumers, ring_at, stages, stage_bytes); \
    }
GEMV_RING_ENTRY(gemv_ring_1, 1, false, 4)
GEMV_RING_ENTRY(gemv_ring_2, 2, false, 4)
GEMV_RING_ENTRY(gemv_swiglu_ring_1, 1, true, 2)
GEMV_RING_ENTRY(gemv_swiglu_ring_2, 2, true, 2)

// RMSNorm of up to 8 rows (decode) that also writes the 8-bit copy the next
// GEMVs read (quantize_q8's layout and arithmetic), saving a launch. Same
// shape limits as rms_norm's vector path (256 threads, width a multiple of 32,
// at most 8192): a 32-element block is 8 consecutive float4s of 8 lanes.
//
// Launched with gridDim.y > 1 (one block per 1024-element slice of the row),
// every block still sums the whole row, in the same order, and then writes
// only slice blockIdx.y: the same results from several SMs at once (a single
// block per row took 4.7 us for a 5120-wide decode row).
extern "C" __global__ void rms_norm_q8(const float* x, const float* w, float* out, i8* q, float* dq,
                                       float* s16, int width, float eps) {
    __shared__ float partial[32];
    const bool split = gridDim.y > 1;
    const float* xr = x + (size_t)blockIdx.x * width;
    float* orow = out + (size_t)blockIdx.x * width;
    int n4 = width / 4;
    float4 v[8], wv[8];
    float s = 0.0f;
    // The weights are loaded first, before the previous kernel has finished
    // (chain_wait), and are in flight during the reduction: a decode step runs
    // this on one row, where each round trip shows.
    chain_next();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        int c = threadIdx.x + i * 256;
        if (c < n4 && (!split || i == (int)blockIdx.y)) wv[i] = ((const float4*)w)[c];
    }
    chain_wait();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        int c = threadIdx.x + i * 256;
        if (c < n4) v[i] = ((const float4*)xr)[c];
    }
#pragma unroll
    for (int i = 0; i < 8; ++i)
        if (threadIdx.x + i * 256 < n4) s += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < 8 ? partial[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
        if (threadIdx.x == 0) partial[0] = s;
    }
    __syncthreads();
    float scale = rsqrtf(partial[0] / width + eps);
    int nxb = width / 32;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        if (split && i != (int)blockIdx.y) continue; // the same for the whole block
        // Whole 8-lane groups are active or not (n4 is a multiple of 8); the
        // shuffles below stay within a group, among the active lanes.
        int c = threadIdx.x + i * 256;
        unsigned active = __ballot_sync(0xffffffff, c < n4);
        if (c < n4) {
            float4 ww = wv[i], r;
            r.x = v[i].x * scale * ww.x;
            r.y = v[i].y * scale * ww.y;
            r.z = v[i].z * scale * ww.z;
            r.w = v[i].w * scale * ww.w;
            ((float4*)orow)[c] = r;
            float amax = fmaxf(fmaxf(fabsf(r.x), fabsf(r.y)), fmaxf(fabsf(r.z), fabsf(r.w)));
            for (int o = 4; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(active, amax, o));
            float dd = amax / 127.0f;
            int q0 = amax > 0.0f ? __float2int_rn(r.x / dd) : 0;
            int q1 = amax > 0.0f ? __float2int_rn(r.y / dd) : 0;
            int q2 = amax > 0.0f ? __float2int_rn(r.z / dd) : 0;
            int q3 = amax > 0.0f ? __float2int_rn(r.w / dd) : 0;
            size_t at = (size_t)blockIdx.x * width + 4 * (size_t)c;
            *(u32*)(q + at) = (u32)(q0 & 0xFF) | ((u32)(q1 & 0xFF) << 8) | ((u32)(q2 & 0xFF) << 16) |
                              ((u32)(q3 & 0xFF) << 24);
            int sum = q0 + q1 + q2 + q3;
            sum += __shfl_xor_sync(active, sum, 1); // the 4 lanes of a 16-element half
            sum += __shfl_xor_sync(active, sum, 2);
            size_t blk = (size_t)blockIdx.x * nxb + (4 * c) / 32;
            int lane8 = threadIdx.x % 8;
            if (lane8 == 0) dq[blk] = dd;
            if (lane8 % 4 == 0) s16[blk * 2 + lane8 / 4] = dd * (float)sum;
        }
    }
}

// ---------------------------------------------------------------------------
// Prefill conversions. A batched product dequantizes its weight to f16 and
// converts its activations to f16 before cuBLAS runs; at 2048 tokens these
// passes took 40 % of a 32B layer's time next to the GEMMs, so they are
// written to move bytes at memory speed: wide, coalesced loads and stores,
// several loads in flight per lane, no per-element division or type switch.

// A matrix of k-quant superblocks is a flat array of blocks whose elements,
// row after row, are the f16 output in order: superblock b → out[256 b ..].
// Q4_K: one warp per superblock, lane i decodes elements 8i .. 8i + 8, all in
// sub-block i / 4 (one scale and minimum) and in 8 consecutive bytes of qs.
// Each warp takes 4 consecutive superblocks and issues their loads first.
// Blocks are 144 bytes: the matrix must start 16-byte aligned.
// Q4_K and Q5_K superblocks to f16, a warp per superblock: lane s·4 + j
// (sub-block s = 2c + half) writes elements 64c + 32·half + 8j .. + 8 from 8
// bytes of qs (and, for Q5_K, their fifth bits: bit s of 8 qh bytes).
template <bool Q5>
__device__ __forceinline__ void dequant_k4_f16(const u8* w, u16* out, size_t n_blocks) {
    constexpr int U = 4, BYTES = Q5 ? 176 : 144, QS = Q5 ? 48 : 16;
    int lane = threadIdx.x % 32;
    size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32;
    size_t n_warps = (size_t)gridDim.x * blockDim.x / 32;
    int c = lane / 8, half = (lane % 8) / 4, l = (lane % 4) * 8, s = lane / 4;
    for (size_t b0 = warp * U; b0 < n_blocks; b0 += n_warps * U) {
        uint4 hdr[U];
        uint2 qs[U], qh[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (b0 + u < n_blocks) {
                const u8* blk = w + (b0 + u) * BYTES;
                hdr[u] = *(const uint4*)blk;
                qs[u] = *(const uint2*)(blk + QS + 32 * c + l);
                if (Q5) qh[u] = *(const uint2*)(blk + 16 + l);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (b0 + u < n_blocks) {
                int sc, mn;
                scale_min_hdr(hdr[u], s, &sc, &mn);
                // As dequant8: d·sc·q − dmin·m, rounded to f16.
                float d = half_to_float((u16)(hdr[u].x & 0xFFFF)) * (float)sc;
                float m = half_to_float((u16)(hdr[u].x >> 16)) * (float)mn;
                u32 lo = (qs[u].x >> (4 * half)) & 0x0F0F0F0Fu, hi = (qs[u].y >> (4 * half)) & 0x0F0F0F0Fu;
                if (Q5) {
                    lo |= ((qh[u].x >> s) & 0x01010101u) << 4;
                    hi |= ((qh[u].y >> s) & 0x01010101u) << 4;
                }
                float v[8];
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    v[k] = d * (float)((lo >> (8 * k)) & 0xFF) - m;
                    v[4 + k] = d * (float)((hi >> (8 * k)) & 0xFF) - m;
                }
                uint4 packed;
                packed.x = (u32)float_to_half(v[0]) | ((u32)float_to_half(v[1]) << 16);
                packed.y = (u32)float_to_half(v[2]) | ((u32)float_to_half(v[3]) << 16);
                packed.z = (u32)float_to_half(v[4]) | ((u32)float_to_half(v[5]) << 16);
                packed.w = (u32)float_to_half(v[6]) | ((u32)float_to_half(v[7]) << 16);
                *(uint4*)(out + (b0 + u) * 256 + lane * 8) = packed;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) dequant_q4k_f16(const u8* w, u16* out, size_t n_blocks) {
    dequant_k4_f16<false>(w, out, n_blocks);
}

extern "C" __global__ void __launch_bounds__(256) dequant_q5k_f16(const u8* w, u16* out, size_t n_blocks) {
    dequant_k4_f16<true>(w, out, n_blocks);
}

// Q6_K: 210-byte blocks are only 2-byte aligned, so each warp first copies its
// 4 consecutive superblocks (840 bytes) into shared memory with coalesced
// 16-bit loads, then lane i decodes elements 8i .. 8i + 8 from there
// (element e: low 4 bits in ql, high 2 in qh, one scale per 16).
#define Q6K_U 4
#define Q6K_HALFS (Q6K_U * 105)
extern "C" __global__ void __launch_bounds__(256) dequant_q6k_f16(const u8* w, u16* out, size_t n_blocks) {
    __shared__ u16 stage[8][Q6K_HALFS];
    int lane = threadIdx.x % 32, wi = threadIdx.x / 32;
    const u8* sb = (const u8*)stage[wi];
    size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32;
    size_t n_warps = (size_t)gridDim.x * blockDim.x / 32;
    int n = lane / 16, kk = (lane % 16) / 4, l = (lane % 4) * 8;
    for (size_t b0 = warp * Q6K_U; b0 < n_blocks; b0 += n_warps * Q6K_U) {
        int cnt = (int)min((size_t)Q6K_U, n_blocks - b0);
        const u16* src = (const u16*)(w + b0 * 210);
        constexpr int PER_LANE = (Q6K_HALFS + 31) / 32;
        u16 tmp[PER_LANE];
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            int j = lane + 32 * i;
            if (j < cnt * 105) tmp[i] = src[j];
        }
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            int j = lane + 32 * i;
            if (j < cnt * 105) stage[wi][j] = tmp[i];
        }
        __syncwarp();
        for (int u = 0; u < cnt; ++u) {
            const u8* blk = sb + u * 210;
            // As dequant8: d · scale, times q − 32, rounded to f16.
            float d = h2f(blk + 208) * (float)((const i8*)(blk + 192))[lane / 2];
            const u8* ql = blk + 64 * n + l + 32 * (kk & 1);
            const u8* qh = blk + 128 + 32 * n + l;
            float v[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                int x = ((ql[k] >> (4 * (kk / 2))) & 0xF) | (((qh[k] >> (2 * kk)) & 3) << 4);
                v[k] = d * (float)(x - 32);
            }
            uint4 packed;
            packed.x = (u32)float_to_half(v[0]) | ((u32)float_to_half(v[1]) << 16);
            packed.y = (u32)float_to_half(v[2]) | ((u32)float_to_half(v[3]) << 16);
            packed.z = (u32)float_to_half(v[4]) | ((u32)float_to_half(v[5]) << 16);
            packed.w = (u32)float_to_half(v[6]) | ((u32)float_to_half(v[7]) << 16);
            *(uint4*)(out + (b0 + u) * 256 + lane * 8) = packed;
        }
        __syncwarp(); // the stage is refilled next round
    }
}

// out = f16(x), four elements per step (n a multiple of 4, 16-byte aligned x).
extern "C" __global__ void f32_to_f16_x4(const float4* x, uint2* out, size_t n4) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        float4 v = x[i];
        uint2 h;
        h.x = (u32)float_to_half(v.x) | ((u32)float_to_half(v.y) << 16);
        h.y = (u32)float_to_half(v.z) | ((u32)float_to_half(v.w) << 16);
        out[i] = h;
    }
}

// g = silu(g) · u as `swiglu` computes it, four elements per step, and the
// result also as f16 for the down projection's GEMM (which then converts
// nothing). n a multiple of 4.
extern "C" __global__ void swiglu_f16_x4(float4* g, const float4* u, uint2* h, size_t n4) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        float4 a = g[i], b = u[i];
        a.x = a.x / (1.0f + expf(-a.x)) * b.x;
        a.y = a.y / (1.0f + expf(-a.y)) * b.y;
        a.z = a.z / (1.0f + expf(-a.z)) * b.z;
        a.w = a.w / (1.0f + expf(-a.w)) * b.w;
        g[i] = a;
        uint2 p;
        p.x = (u32)float_to_half(a.x) | ((u32)float_to_half(a.y) << 16);
        p.y = (u32)float_to_half(a.z) | ((u32)float_to_half(a.w) << 16);
        h[i] = p;
    }
}

// The same from gate and up products stored as f16, the result only as f16
// (a batch's feed-forward block, `feed_forward_f16` in mod.rs).
__device__ __forceinline__ float silu_times(u16 g, u16 u) {
    float a = half_to_float(g);
    return a / (1.0f + expf(-a)) * half_to_float(u);
}
extern "C" __global__ void swiglu_h16_x4(const uint2* g, const uint2* u, uint2* h, size_t n4) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        uint2 a = g[i], b = u[i], p;
        p.x = (u32)float_to_half(silu_times(a.x & 0xffff, b.x & 0xffff)) |
              ((u32)float_to_half(silu_times(a.x >> 16, b.x >> 16)) << 16);
        p.y = (u32)float_to_half(silu_times(a.y & 0xffff, b.y & 0xffff)) |
              ((u32)float_to_half(silu_times(a.y >> 16, b.y >> 16)) << 16);
        h[i] = p;
    }
}
