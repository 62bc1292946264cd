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

// out[i, :] = table[tokens[i], :]
extern "C" __global__ void embed(const u8* table, const unsigned* tokens, float* out, int type, int cols,
                                 int block_elems, int block_bytes) {
    int i = blockIdx.x;
    const u8* row = table + (size_t)tokens[i] * (cols / block_elems) * block_bytes;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(size_t)i * cols + c] = dequant_row(type, row, block_elems, block_bytes, c);
}

// One block per row: out = x / rms(x) · w.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, int width, float eps) {
    __shared__ float partial[32];
    const float* xr = x + (size_t)blockIdx.x * width;
    float s = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) s += xr[c] * xr[c];
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
    for (int c = threadIdx.x; c < width; c += blockDim.x) out[(size_t)blockIdx.x * width + c] = xr[c] * scale * w[c];
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

// Rotate pairs of each head by position; cos/sin precomputed on the host per
// (token, pair): cs[(t * half + i) * 2 + {0, 1}].
extern "C" __global__ void rope(float* x, const float* cs, int n_heads, int head_dim, int n_dims, int neox, int n) {
    int half = n_dims / 2;
    size_t total = (size_t)n * n_heads * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        int i = idx % half;
        size_t th = idx / half;
        int t = th / n_heads;
        float* head = x + th * head_dim;
        int a = neox ? i : 2 * i;
        int b = neox ? i + half : 2 * i + 1;
        float c = cs[((size_t)t * half + i) * 2], s = cs[((size_t)t * half + i) * 2 + 1];
        float x0 = head[a], x1 = head[b];
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
    }
}

// Store new keys and values (f16) at their sequence positions.
extern "C" __global__ void kv_store(const float* k, const float* v, u16* kc, u16* vc, const unsigned* slot,
                                    int width, int n) {
    size_t total = (size_t)n * width;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        size_t t = idx / width;
        int c = idx % width;
        size_t off = (size_t)slot[t] * width + c;
        kc[off] = float_to_half(k[idx]);
        vc[off] = float_to_half(v[idx]);
    }
}

// Causal grouped-query attention, one block per (token, head); the scores of
// every key live in dynamic shared memory. base[t] is the first cache slot of
// token t's sequence, pos[t] its position.
extern "C" __global__ void attention(const float* q, const u16* kc, const u16* vc, float* out,
                                     const unsigned* base, const unsigned* pos, int n_heads, int n_kv_heads,
                                     int head_dim, int width, float scale) {
    extern __shared__ float scores[];
    __shared__ float red[32];
    int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
    int g = h / (n_heads / n_kv_heads);
    int n_keys = pos[t] + 1;
    const float* qh = q + ((size_t)t * n_heads + h) * head_dim;
    const u16* kb = kc + (size_t)base[t] * width + g * head_dim;
    const u16* vb = vc + (size_t)base[t] * width + g * head_dim;
    for (int j = threadIdx.x; j < n_keys; j += blockDim.x) {
        const u16* kj = kb + (size_t)j * width;
        float s = 0.0f;
        for (int d = 0; d < head_dim; ++d) s += round_half(qh[d]) * half_to_float(kj[d]);
        scores[j] = s * scale;
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
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < n_keys; ++j)
            acc += round_half(scores[j] * inv) * half_to_float(vb[(size_t)j * width + d]);
        out[((size_t)t * n_heads + h) * head_dim + d] = acc;
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
