// ferry: prefill conversions to f16 for the GEMMs (weights by superblock, activations, SwiGLU).
// (Compiled as one NVRTC source with the other files of this folder, in the
// order `KERNELS` in ../mod.rs gives: ferry.cu's types and helpers come first.)

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
