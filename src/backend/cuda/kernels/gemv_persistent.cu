// ferry: the persistent decode GEMVs (shared-memory activations, epilogues,
// the Q4_K/Q5_K/Q6_K superblocks and the lane formats of the other types), the
// copy-engine-fed ring GEMVs, and the RMSNorm that writes their 8-bit input.
// (Compiled as one NVRTC source with the other files of this folder, in the
// order `KERNELS` in ../mod.rs gives: after gemv_kquants.cu, whose dp4a and
// Q6_K helpers it uses.)

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

// One Q4_K or Q5_K superblock against the shared-memory activations, four
// lanes per superblock: lane c (0..3) holds the values of qs[32c .. 32c + 32]
// (`lo`: low nibbles, sub-block 2c; `hi`: high nibbles, sub-block 2c + 1; for
// Q5_K with their fifth bits in place), so each lane unpacks two
// scale/minimum pairs per 64 elements (with eight lanes per superblock it was
// two per 32, and the GEMV issued an instruction every cycle it could).
// Σ (d·sc·q − dmin·m)·x = d·sc·Σ q·x − dmin·m·Σ x per sub-block.
template <int NT>
__device__ __forceinline__ void lane_dot_smem(const int (&lo)[8], const int (&hi)[8], float d0, float d1, float mn0,
                                              float mn1, int blk, const i8* sq, const float* sd, const float* ss,
                                              int cols, int nxb, int n, int c, float* acc) {
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

template <int NT>
__device__ __forceinline__ void k4_dot4_smem(uint4 hdr, const int (&lo)[8], const int (&hi)[8], int blk,
                                             const i8* sq, const float* sd, const float* ss, int cols, int nxb,
                                             int n, int c, float* acc) {
    float d = half_to_float((u16)(hdr.x & 0xFFFF)), dmin = half_to_float((u16)(hdr.x >> 16));
    int sc0, m0, sc1, m1;
    scale_min_hdr(hdr, 2 * c, &sc0, &m0);
    scale_min_hdr(hdr, 2 * c + 1, &sc1, &m1);
    lane_dot_smem<NT>(lo, hi, d * (float)sc0, d * (float)sc1, dmin * (float)m0, dmin * (float)m1, blk, sq, sd, ss,
                      cols, nxb, n, c, acc);
}

template <int NT>
__device__ __forceinline__ void q4k_dot4_smem(uint4 hdr, uint4 qa, uint4 qb, int blk, const i8* sq,
                                              const float* sd, const float* ss, int cols, int nxb, int n, int c,
                                              float* acc) {
    int lo[8], hi[8];
    u32 qw[8] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        lo[i] = (int)(qw[i] & 0x0F0F0F0F);
        hi[i] = (int)((qw[i] >> 4) & 0x0F0F0F0F);
    }
    k4_dot4_smem<NT>(hdr, lo, hi, blk, sq, sd, ss, cols, nxb, n, c, acc);
}

// Q5_K (176-byte superblocks: the Q4_K header, qh[32], then qs[128] laid out
// as Q4_K's): lane c also holds all of qh (`h0`, `h1`), whose bit 2c (2c + 1)
// of byte l is the fifth bit of its low (high) nibble l. The lane loads 80
// bytes per superblock, qh four times over in the warp (L1 hits); before
// this a Q5_K_M 32B decoded at 67 t/s on the typed kernel (gemv_types.cu),
// bound by its three 16-byte loads per 16 elements.
template <int NT>
__device__ __forceinline__ void q5k_dot4_smem(uint4 hdr, uint4 h0, uint4 h1, uint4 qa, uint4 qb, int blk,
                                              const i8* sq, const float* sd, const float* ss, int cols, int nxb,
                                              int n, int c, float* acc) {
    int lo[8], hi[8];
    u32 qw[8] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
    u32 hw[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        lo[i] = (int)((qw[i] & 0x0F0F0F0F) | (((hw[i] >> (2 * c)) & 0x01010101) << 4));
        hi[i] = (int)(((qw[i] >> 4) & 0x0F0F0F0F) | (((hw[i] >> (2 * c + 1)) & 0x01010101) << 4));
    }
    k4_dot4_smem<NT>(hdr, lo, hi, blk, sq, sd, ss, cols, nxb, n, c, acc);
}

// The 32-element block types (and IQ4_XS) in the persistent GEMVs. A
// "superblock" is 256 elements (8 blocks; IQ4_XS: its own), and lane c of
// its four takes elements 64c .. 64c + 64 (blocks 2c and 2c + 1), as a Q4_K
// lane does, so the same activations and arithmetic serve (lane_dot_smem):
// the values of each 32-element half as bytes (`lo`, `hi`), a multiplier per
// half (d0, d1) and, for types with an offset or a minimum, a multiplier of
// the half's activation sum (mn0, mn1). A lane's bytes are loaded as 16-byte
// words from the aligned address below them (superblocks of 8 of these
// blocks are multiples of 16 bytes) and shifted into place by whole words
// with selects (no run-time register indexing). In the typed kernel
// (gemv_types.cu), with 2- and 4-byte loads of 8-16 bytes per lane, Q4_0 and
// Q8_0 32B decodes ran at 1514 and 1834 GB/s (51 % and 61 % of the H100's
// HBM) against Q4_K's 2298 here.
//
// A format: SB, bytes per superblock; load(sb, c, p) fills p.v[] with lane c's
// loads; decode(p, c, lo, hi, d) gives its values and d = {d0, d1, mn0, mn1}.

// Words k .. k + N of v (k = 0..3; a format whose runs need no k with
// k + N > W never asks for one), by selects.
template <int N, int W>
__device__ __forceinline__ void words_from(const u32 (&v)[W], int k, u32 (&r)[N]) {
    static_assert(N + 2 <= W, "window too small");
#pragma unroll
    for (int i = 0; i < N; ++i) {
        u32 a = (k & 1) ? v[i + 1] : v[i];
        u32 b = (k & 1) ? v[i + 3 < W ? i + 3 : W - 1] : v[i + 2];
        r[i] = (k & 2) ? b : a;
    }
}

// Lane c's RUN bytes at RUN·c of a 16-byte-aligned superblock: the W
// 16-byte words from the aligned address at or below them (those past the
// run's last aligned word not loaded, so nothing past the superblock is read).
template <int RUN, int W>
__device__ __forceinline__ void load_run(const u8* sb, int c, uint4* v) {
    const int start = RUN * c, first = start & ~15, last = (start + RUN + 15) & ~15;
#pragma unroll
    for (int w = 0; w < W; ++w)
        v[w] = first + 16 * w < last ? *(const uint4*)(sb + first + 16 * w) : uint4{0u, 0u, 0u, 0u};
}

// The run's N words, from the W loaded 16-byte words.
template <int RUN, int W, int N>
__device__ __forceinline__ void run_words(const uint4* v, int c, u32 (&r)[N]) {
    u32 all[4 * W];
#pragma unroll
    for (int w = 0; w < W; ++w) all[4 * w] = v[w].x, all[4 * w + 1] = v[w].y, all[4 * w + 2] = v[w].z, all[4 * w + 3] = v[w].w;
    words_from<N, 4 * W>(all, ((RUN * c) & 15) >> 2, r);
}

// Bytes 2 .. 2 + 4N of the words r[o ..] (a field 2 bytes into a word).
template <int N, int M>
__device__ __forceinline__ void words_at2(const u32 (&r)[M], int o, u32 (&q)[N]) {
#pragma unroll
    for (int j = 0; j < N; ++j) q[j] = __funnelshift_r(r[o + j], r[o + j + 1], 16);
}

// 16 quant bytes whose low nibbles are elements 0..16 and high nibbles 16..32
// of a block (Q4_0, Q4_1, Q5_0, IQ4_NL, IQ4_XS) → its 32 values in order.
__device__ __forceinline__ void nibble_values(const u32 (&q)[4], int (&v)[8]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = (int)(q[i] & 0x0F0F0F0F), v[4 + i] = (int)((q[i] >> 4) & 0x0F0F0F0F);
}
__device__ __forceinline__ void nibble_grid_values(const u32 (&q)[4], int (&v)[8]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        v[i] = grid_lookup4(q[i] & 0x0F0F0F0F, IQ4_GRID_WORDS);
        v[4 + i] = grid_lookup4((q[i] >> 4) & 0x0F0F0F0F, IQ4_GRID_WORDS);
    }
}
// Q5_0's fifth bits: bit e of qh is element e's.
__device__ __forceinline__ void add_fifth_bits(u32 qh, int (&v)[8]) {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] |= (int)spread4_bit4((qh >> (4 * i)) & 0xF);
}

// Q4_0 and IQ4_NL: blocks of 18 bytes (d, qs[16]). Q4_0's values are q − 8
// (mn = 8d); IQ4_NL's come from the IQ4 grid (GRID).
template <bool GRID>
struct LNibbles18 {
    static constexpr int SB = 144, RUN = 36, W = 3;
    __device__ static void load(const u8* sb, int c, uint4* v) { load_run<RUN, W>(sb, c, v); }
    __device__ static void decode(const uint4* v, int c, int (&lo)[8], int (&hi)[8], float (&d)[4]) {
        u32 r[9], qa[4];
        run_words<RUN, W>(v, c, r);
        words_at2<4>(r, 0, qa);
        if (GRID) {
            nibble_grid_values(qa, lo);
            nibble_grid_values({r[5], r[6], r[7], r[8]}, hi);
        } else {
            nibble_values(qa, lo);
            nibble_values({r[5], r[6], r[7], r[8]}, hi);
        }
        d[0] = half_to_float((u16)(r[0] & 0xFFFF)), d[1] = half_to_float((u16)(r[4] >> 16));
        d[2] = GRID ? 0.0f : 8.0f * d[0], d[3] = GRID ? 0.0f : 8.0f * d[1];
    }
};
typedef LNibbles18<false> LQ4_0;
typedef LNibbles18<true> LIQ4_NL;

// Q4_1: blocks of 20 bytes (d, m, qs[16]); values d·q + m: mn = −m.
struct LQ4_1 {
    static constexpr int SB = 160, RUN = 40, W = 3;
    __device__ static void load(const u8* sb, int c, uint4* v) { load_run<RUN, W>(sb, c, v); }
    __device__ static void decode(const uint4* v, int c, int (&lo)[8], int (&hi)[8], float (&d)[4]) {
        u32 r[10];
        run_words<RUN, W>(v, c, r);
        nibble_values({r[1], r[2], r[3], r[4]}, lo);
        nibble_values({r[6], r[7], r[8], r[9]}, hi);
        d[0] = half_to_float((u16)(r[0] & 0xFFFF)), d[1] = half_to_float((u16)(r[5] & 0xFFFF));
        d[2] = -half_to_float((u16)(r[0] >> 16)), d[3] = -half_to_float((u16)(r[5] >> 16));
    }
};

// Q5_0: blocks of 22 bytes (d, qh[4], qs[16]); values q − 16: mn = 16d.
struct LQ5_0 {
    static constexpr int SB = 176, RUN = 44, W = 4;
    __device__ static void load(const u8* sb, int c, uint4* v) { load_run<RUN, W>(sb, c, v); }
    __device__ static void decode(const uint4* v, int c, int (&lo)[8], int (&hi)[8], float (&d)[4]) {
        u32 r[11], qa[4];
        run_words<RUN, W>(v, c, r);
        words_at2<4>(r, 1, qa);
        nibble_values(qa, lo);
        add_fifth_bits(__funnelshift_r(r[0], r[1], 16), lo);
        nibble_values({r[7], r[8], r[9], r[10]}, hi);
        add_fifth_bits(r[6], hi);
        d[0] = half_to_float((u16)(r[0] & 0xFFFF)), d[1] = half_to_float((u16)(r[5] >> 16));
        d[2] = 16.0f * d[0], d[3] = 16.0f * d[1];
    }
};

// Q8_0: blocks of 34 bytes (d, qs[32] signed).
struct LQ8_0 {
    static constexpr int SB = 272, RUN = 68, W = 5;
    __device__ static void load(const u8* sb, int c, uint4* v) { load_run<RUN, W>(sb, c, v); }
    __device__ static void decode(const uint4* v, int c, int (&lo)[8], int (&hi)[8], float (&d)[4]) {
        u32 r[17], qa[8];
        run_words<RUN, W>(v, c, r);
        words_at2<8>(r, 0, qa);
#pragma unroll
        for (int i = 0; i < 8; ++i) lo[i] = (int)qa[i], hi[i] = (int)r[9 + i];
        d[0] = half_to_float((u16)(r[0] & 0xFFFF)), d[1] = half_to_float((u16)(r[8] >> 16));
        d[2] = d[3] = 0.0f;
    }
};

// IQ4_XS: superblocks of 136 bytes (d, scales_h, scales_l[4], qs[128]), only
// 8-byte aligned: the 8 header bytes and lane c's qs[32c .. 32c + 32] (groups
// 2c and 2c + 1, each as an IQ4_NL block) by 8-byte loads.
struct LIQ4_XS {
    static constexpr int SB = 136, RUN = 0, W = 3;
    __device__ static void load(const u8* sb, int c, uint4* v) {
        const uint2* q = (const uint2*)(sb + 8 + 32 * c);
        uint2 h = *(const uint2*)sb, a = q[0], b = q[1], e = q[2], f = q[3];
        v[0] = uint4{h.x, h.y, 0u, 0u};
        v[1] = uint4{a.x, a.y, b.x, b.y};
        v[2] = uint4{e.x, e.y, f.x, f.y};
    }
    __device__ static void decode(const uint4* v, int c, int (&lo)[8], int (&hi)[8], float (&d)[4]) {
        nibble_grid_values({v[1].x, v[1].y, v[1].z, v[1].w}, lo);
        nibble_grid_values({v[2].x, v[2].y, v[2].z, v[2].w}, hi);
        const float dd = half_to_float((u16)(v[0].x & 0xFFFF));
        const u32 sh = v[0].x >> 16, sl = v[0].y;
        const int g0 = 2 * c, g1 = 2 * c + 1;
        const int l0 = ((sl >> (4 * g0)) & 0xF) | (((sh >> (2 * g0)) & 3) << 4);
        const int l1 = ((sl >> (4 * g1)) & 0xF) | (((sh >> (2 * g1)) & 3) << 4);
        d[0] = dd * (float)(l0 - 32), d[1] = dd * (float)(l1 - 32);
        d[2] = d[3] = 0.0f;
    }
};

// One superblock of a lane format against the shared-memory activations.
template <class L, int NT>
__device__ __forceinline__ void lane_fmt_dot(const uint4* v, int blk, const i8* sq, const float* sd, const float* ss,
                                             int cols, int nxb, int n, int c, float* acc) {
    int lo[8], hi[8];
    float d[4];
    L::decode(v, c, lo, hi, d);
    lane_dot_smem<NT>(lo, hi, d[0], d[1], d[2], d[3], blk, sq, sd, ss, cols, nxb, n, c, acc);
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
    int fmt; // 0: Q4_K (144-byte superblocks), 1: Q6_K (210), 2: Q5_K (176)
    int groups_before;
    int pad;
};
struct GemvSegs {
    GemvSeg seg[3];
    int count;
    int total_groups;
};

// Bytes of one superblock of format `fmt` (GemvSeg::fmt).
// (3: Q4_0, 4: Q4_1, 5: Q5_0, 6: Q8_0, 7: IQ4_NL, 8: IQ4_XS: 256 elements of each.)
__device__ __forceinline__ int fmt_block_bytes(int fmt) {
    switch (fmt) {
    case 1: return 210;
    case 2: return 176;
    case 3: return LQ4_0::SB;
    case 4: return LQ4_1::SB;
    case 5: return LQ5_0::SB;
    case 6: return LQ8_0::SB;
    case 7: return LIQ4_NL::SB;
    case 8: return LIQ4_XS::SB;
    default: return 144;
    }
}
template <int FMT> struct LaneFmtOf { typedef LQ4_0 T; };
template <> struct LaneFmtOf<4> { typedef LQ4_1 T; };
template <> struct LaneFmtOf<5> { typedef LQ5_0 T; };
template <> struct LaneFmtOf<6> { typedef LQ8_0 T; };
template <> struct LaneFmtOf<7> { typedef LIQ4_NL T; };
template <> struct LaneFmtOf<8> { typedef LIQ4_XS T; };

// The kernels come in two builds: ALLF false reads Q4_K and Q6_K only (the
// code the Q4_K_M models ran before the other formats were added: with
// every format's branch in one kernel, Q4_K rows decoded 10 % slower on an
// H100, 2298 → 2053 GB/s, the registers being allocated for the largest
// branch); ALLF true reads every format. mod.rs picks per launch.
template <bool ALLF>
__device__ __forceinline__ int seg_block_bytes(int fmt) {
    return ALLF ? fmt_block_bytes(fmt) : (fmt ? 210 : 144);
}

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
// superblock's Q6kLane4 (90); Q5_K one superblock's 80 (header, qh, its 32
// quant bytes). A block loads its first round into one of these
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
    static_assert(FMT == 0 || (U == 1 && !SWIGLU), "a round of the other formats is one superblock");
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
    } else if (FMT >= 3) {
        typedef typename LaneFmtOf<FMT>::T L;
        if (first < nb) L::load(row + (size_t)first * L::SB, s, p.v);
    } else if (FMT == 2) {
        if (first < nb) {
            const u8* b = row + (size_t)first * 176;
            p.v[0] = *(const uint4*)b;
            p.v[1] = *(const uint4*)(b + 16);
            p.v[2] = *(const uint4*)(b + 32);
            p.v[3] = *(const uint4*)(b + 48 + 32 * s);
            p.v[4] = *(const uint4*)(b + 64 + 32 * s);
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
    } else if (FMT >= 3) {
        lane_fmt_dot<typename LaneFmtOf<FMT>::T, NT>(p.v, first, sq, sd, ss, cols, nxb, n, s, acc);
    } else if (FMT == 2) {
        q5k_dot4_smem<NT>(p.v[0], p.v[1], p.v[2], p.v[3], p.v[4], first, sq, sd, ss, cols, nxb, n, s, acc);
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
template <bool SWIGLU, bool ALLF>
__device__ __forceinline__ void prefetch_rows(const GemvSegs& segs, int rg, int rpb, int nb) {
    if (rg >= segs.total_groups) return;
    const GemvSeg g = seg_of(segs, rg);
    const int r0 = (rg - g.groups_before) * rpb;
    const size_t row_bytes = (size_t)nb * seg_block_bytes<ALLF>(g.fmt);
    const size_t off = (size_t)r0 * row_bytes, bytes = (size_t)min(rpb, g.rows - r0) * row_bytes;
    for (size_t at = (size_t)threadIdx.x * 128; at < bytes; at += (size_t)blockDim.x * 128) {
        asm volatile("prefetch.global.L2 [%0];" ::"l"(g.w + off + at));
        if (SWIGLU) asm volatile("prefetch.global.L2 [%0];" ::"l"(g.w2 + off + at));
    }
}

// gemv_row_part and load_round for a format known at run time (a segment's
// fmt), one superblock per round: every format but Q4_K and SwiGLU.
#define FMT_CASES(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8)
template <int NT, bool PRE>
__device__ __forceinline__ void row_part_one(int fmt, const u8* row, int first4, int stride4, int nb, int c4,
                                             const i8* sq, const float* sd, const float* ss, int cols, int nxb, int n,
                                             float* acc, const RoundRegs& pre) {
    float unused[NT];
    switch (fmt) {
#define ROW_CASE(F)                                                                                              \
    case F:                                                                                                      \
        gemv_row_part<NT, F, false, 1, PRE>(row, row, first4, stride4, nb, c4, sq, sd, ss, cols, nxb, n, acc,     \
                                            unused, pre);                                                        \
        break;
        FMT_CASES(ROW_CASE)
#undef ROW_CASE
    default: break;
    }
}
__device__ __forceinline__ void load_round_one(int fmt, RoundRegs& p, const u8* row, int first4, int stride4, int nb,
                                               int c4) {
    switch (fmt) {
#define LOAD_CASE(F)                                                                                             \
    case F: load_round<F, false, 1>(p, row, row, first4, stride4, nb, c4); break;
        FMT_CASES(LOAD_CASE)
#undef LOAD_CASE
    default: break;
    }
}

// Row group rg: this warp's share of its row, then the row's output.
template <int NT, bool SWIGLU, int U4, bool PRE, bool ALLF>
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
        } else if (!ALLF) {
            const u8* row = g.w + (size_t)r * nb * 210;
            gemv_row_part<NT, 1, false, 1, PRE>(row, row, first4, stride4, nb, c4, sq, sd, ss, cols, nxb, n, acc, acc2,
                                                pre);
        } else {
            const u8* row = g.w + (size_t)r * nb * fmt_block_bytes(g.fmt);
            row_part_one<NT, PRE>(g.fmt, row, first4, stride4, nb, c4, sq, sd, ss, cols, nxb, n, acc, pre);
        }
    }
    finish_row<NT, SWIGLU>(g, r, acc, acc2, part, n, wpr, warp, piece, lane, row_in, flags);
}

// Shared memory: n·cols quant bytes, n·cols/32 scales, 2·n·cols/32 half sums
// (Q4_K), then 8 warps × NT × 2 partial sums. SWIGLU segments are Q4_K.
template <int NT, bool SWIGLU, int U, bool ALLF>
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
            else if (!ALLF)
                load_round<1, false, 1>(pre, g.w + (size_t)r * nb * 210, g.w, first4, stride4, nb, c4);
            else
                load_round_one(g.fmt, pre, g.w + (size_t)r * nb * fmt_block_bytes(g.fmt), first4, stride4, nb, c4);
        }
    }
    for (int i = 0; i < prefetch; ++i) prefetch_rows<SWIGLU, ALLF>(segs, blockIdx.x + i * gridDim.x, rpb, nb);
    chain_wait();
    chain_next();
    stage_activations<2>(xq, xd, xs, sq, sd, ss, cols, n);
    // The first row group apart, so that `pre` is dead in the loop.
    int rg = blockIdx.x;
    if (preloaded) {
        gemv_group<NT, SWIGLU, U4, true, ALLF>(segs, rg, rpb, row_in, first4, stride4, nb, c4, sq, sd, ss, cols, nxb, n, part,
                                         wpr, warp, piece, lane, flags, pre);
        rg += gridDim.x;
    }
    for (; rg < segs.total_groups; rg += gridDim.x)
        gemv_group<NT, SWIGLU, U4, false, ALLF>(segs, rg, rpb, row_in, first4, stride4, nb, c4, sq, sd, ss, cols, nxb, n,
                                          part, wpr, warp, piece, lane, flags, pre);
}

// MIN_BLOCKS: resident blocks per SM the register allocation must allow.
// U: Q4_K rounds of U / 2 superblocks per lane group (Q6_K: one).
#define GEMV_SMEM_ENTRY(NAME, NT, SWIGLU, U, MIN_BLOCKS, ALLF)                                             \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS)                                            \
        NAME(const GemvSegs segs, const i8* __restrict__ xq, const float* __restrict__ xd,                   \
             const float* __restrict__ xs, int cols, int n, int wpr, int prefetch, int flags) {              \
        gemv_segs_t<NT, SWIGLU, U, ALLF>(segs, xq, xd, xs, cols, n, wpr, prefetch, flags);                   \
    }
// 1 and 2 tokens, plain and SwiGLU: gemv_smem{SUFFIX}_N, gemv_swiglu_smem{SUFFIX}_N.
#define GEMV_SMEM_ENTRIES(SUFFIX, MIN_BLOCKS)                                                              \
    GEMV_SMEM_ENTRY(gemv_smem##SUFFIX##_1, 1, false, 4, MIN_BLOCKS, false)                                 \
    GEMV_SMEM_ENTRY(gemv_smem##SUFFIX##_2, 2, false, 4, MIN_BLOCKS, false)                                 \
    GEMV_SMEM_ENTRY(gemv_smem_all##SUFFIX##_1, 1, false, 4, MIN_BLOCKS, true)                              \
    GEMV_SMEM_ENTRY(gemv_smem_all##SUFFIX##_2, 2, false, 4, MIN_BLOCKS, true)                              \
    GEMV_SMEM_ENTRY(gemv_swiglu_smem##SUFFIX##_1, 1, true, 2, MIN_BLOCKS, false)                           \
    GEMV_SMEM_ENTRY(gemv_swiglu_smem##SUFFIX##_2, 2, true, 2, MIN_BLOCKS, false)
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
template <bool SWIGLU, bool ALLF>
__device__ __forceinline__ void ring_fill(const GemvSegs& segs, int rg, int rpb, int nb, u8* stage, int half,
                                          u64* bar) {
    const GemvSeg g = seg_of(segs, rg);
    const int r0 = (rg - g.groups_before) * rpb, cnt = min(rpb, g.rows - r0);
    const size_t rb = (size_t)nb * seg_block_bytes<ALLF>(g.fmt);
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
template <int NT, bool SWIGLU, int U, bool ALLF>
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
                ring_fill<SWIGLU, ALLF>(segs, rg, rpb, nb, ring + (size_t)s * stage_bytes, half, &full[s]);
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
            const size_t rb = (size_t)nb * seg_block_bytes<ALLF>(g.fmt);
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
                else if (!ALLF)
                    gemv_row_part<NT, 1, false, 1, false>(row, row, first4, stride4, nb, c4, sq, sd, ss, cols, nxb,
                                                          n, acc, acc2, unused);
                else
                    row_part_one<NT, false>(g.fmt, row, first4, stride4, nb, c4, sq, sd, ss, cols, nxb, n, acc,
                                            unused);
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
                    ring_fill<SWIGLU, ALLF>(segs, next, rpb, nb, ring + (size_t)s * stage_bytes, half, &full[s]);
                }
            }
            if (++s == stages) s = 0, parity ^= 1;
        }
    }
#endif
}

#define GEMV_RING_ENTRY(NAME, NT, SWIGLU, U, ALLF)                                                         \
    extern "C" __global__ void __launch_bounds__(17 * 32, 1)                                                 \
        NAME(const GemvSegs segs, const i8* __restrict__ xq, const float* __restrict__ xd,                   \
             const float* __restrict__ xs, int cols, int n, int wpr, int consumers, int ring_at, int stages, \
             int stage_bytes) {                                                                              \
        gemv_ring_t<NT, SWIGLU, U, ALLF>(segs, xq, xd, xs, cols, n, wpr, consumers, ring_at, stages,        \
                                         stage_bytes);                                                       \
    }
GEMV_RING_ENTRY(gemv_ring_1, 1, false, 4, false)
GEMV_RING_ENTRY(gemv_ring_2, 2, false, 4, false)
GEMV_RING_ENTRY(gemv_ring_all_1, 1, false, 4, true)
GEMV_RING_ENTRY(gemv_ring_all_2, 2, false, 4, true)
GEMV_RING_ENTRY(gemv_swiglu_ring_1, 1, true, 2, false)
GEMV_RING_ENTRY(gemv_swiglu_ring_2, 2, true, 2, false)

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
