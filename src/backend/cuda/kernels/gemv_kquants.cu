// ferry: decode GEMVs of the k-quants Q4_K_M models are made of, warp per row (float, and integer on 8-bit activations); the persistent designs are in gemv_persistent.cu.
// (Compiled as one NVRTC source with the other files of this folder, in the
// order `KERNELS` in ../mod.rs gives: ferry.cu's types and helpers come first.)

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
