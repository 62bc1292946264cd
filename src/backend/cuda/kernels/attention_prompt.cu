// ferry: prompt attention on tensor cores (mma.sync and Hopper warpgroup MMAs).
// (Compiled as one NVRTC source with the other files of this folder, in the
// order `KERNELS` in ../mod.rs gives: ferry.cu's types and helpers come first.)

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
