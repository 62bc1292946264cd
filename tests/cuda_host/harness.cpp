// The block-type structs of the typed decode GEMVs (kernels/gemv_types.cu),
// compiled for the host with stand-ins for the few CUDA intrinsics they use,
// each item's dot product checked against the dequantized weights
// (tests/cuda_kernels_on_host.rs writes both, from src/quant). Catches a wrong
// layout or bit position without a GPU; the device runs gpu-check.
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <vector>
#include <string>
#include <fstream>
typedef unsigned char u8; typedef signed char i8; typedef unsigned short u16; typedef unsigned int u32; typedef unsigned long long u64;
struct uint2 { u32 x, y; };
struct uint4 { u32 x, y, z, w; };
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
#define __device__
#define __forceinline__ inline
#define __restrict__
static float half_to_float(u16 h) {
    u32 s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023; float v;
    if (e == 0) v = std::ldexp((float)m, -24); else if (e == 31) v = m ? NAN : INFINITY; else v = std::ldexp((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}
// One warp run lane by lane, lane 31 first: warp_sum keeps each lane's
// value and gives lane 0 (run last) the sum of all 32, as the shuffles do.
struct Dim3 { unsigned x; };
static Dim3 blockIdx, threadIdx, blockDim{32}, gridDim{1};
static float lane_values[32][8];
static int sum_calls[32];
static float warp_sum(float v) {
    int lane = threadIdx.x % 32, k = sum_calls[lane]++;
    lane_values[lane][k] = v;
    if (lane != 0) return v;
    float s = 0;
    for (int l = 31; l >= 0; --l) s += lane_values[l][k];
    return s;
}
static float __uint_as_float(u32 u) { float f; memcpy(&f, &u, 4); return f; }
// PTX prmt (default mode): byte k of the result is byte (s >> 4k) & 7 of {b, a}.
static u32 __byte_perm(u32 a, u32 b, u32 s) {
    u64 v = ((u64)b << 32) | a; u32 r = 0;
    for (int k = 0; k < 4; ++k) r |= (u32)((v >> (8 * ((s >> (4 * k)) & 7))) & 0xFF) << (8 * k);
    return r;
}
// f32 -> f16 bits, round to nearest even (the PTX cvt.rn.f16.f32).
static u16 float_to_half(float f) {
    u32 x; memcpy(&x, &f, 4);
    u32 sign = (x >> 16) & 0x8000; int e = (int)((x >> 23) & 0xFF) - 127 + 15; u32 m = x & 0x7FFFFF;
    if (((x >> 23) & 0xFF) == 0xFF) return (u16)(sign | 0x7C00 | (m ? 0x200 : 0));
    if (e >= 31) return (u16)(sign | 0x7C00);
    if (e <= 0) {
        if (e < -10) return (u16)sign;
        m |= 0x800000; int shift = 14 - e; u32 h = m >> shift, rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (h & 1))) ++h;
        return (u16)(sign | h);
    }
    u32 h = ((u32)e << 10) | (m >> 13), rem = m & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
    return (u16)(sign | h);
}
static u32 __funnelshift_r(u32 lo, u32 hi, u32 sh) { return (u32)((((u64)hi << 32) | lo) >> (sh & 31)); }
static int __popc(u32 v) { return __builtin_popcount(v); }
static int dp4a(int a, int b, int c) { for (int i = 0; i < 4; ++i) c += (int)(i8)(a >> (8*i)) * (int)(i8)(b >> (8*i)); return c; }
// The kernels' own definitions, cut from the .cu files by the test.
#include "kernel_parts.h"
template <class T>
int check(const char* name, int type_id) {
    std::string base = std::string(DATA_DIR) + "/" + name;
    int rows, cols; { std::ifstream f(base + ".shape"); f >> rows >> cols; }
    std::ifstream fr(base + ".raw", std::ios::binary); std::vector<u8> raw((std::istreambuf_iterator<char>(fr)), {});
    std::ifstream ff(base + ".f32", std::ios::binary); std::vector<char> fb((std::istreambuf_iterator<char>(ff)), {});
    const float* deq = (const float*)fb.data();
    // activations: random, quantized per 32 as quantize_q8
    std::vector<float> x(cols); u64 s = 88172645463325252ull;
    for (auto& v : x) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; v = (float)((s >> 11) % 2000001) / 1e6f - 1.0f; }
    std::vector<i8> xq(cols); std::vector<float> xd(cols / 32);
    for (int b = 0; b < cols / 32; ++b) { float amax = 0; for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[32*b+i]));
        float d = amax / 127.0f; xd[b] = d; for (int i = 0; i < 32; ++i) xq[32*b+i] = (i8)(amax > 0 ? std::lrintf(x[32*b+i] / d) : 0); }
    int nb = cols / T::QK; double worst = 0; int bad = 0;
    // The element decoder (`dequant`) against the dequantized weights, bit for bit.
    for (int r = 0; r < rows && bad < 3; ++r)
        for (int c = 0; c < cols; ++c) {
            const u8* blk = raw.data() + ((size_t)r * nb + c / T::QK) * T::BYTES;
            float got = dequant(type_id, blk, c % T::QK), want = deq[(size_t)r * cols + c];
            if (memcmp(&got, &want, 4) != 0) {
                if (bad < 3) printf("%s dequant row %d col %d: got %g want %g\n", name, r, c, got, want);
                ++bad;
                break;
            }
        }
    // The whole kernel (gemv_typed_t) for 1 and 4 tokens (the second token's
    // activations reversed, the others scaled), against the item sums.
    for (int nt : {1, 4}) {
        std::vector<i8> xq4(nt * cols); std::vector<float> xd4(nt * cols / 32);
        for (int t = 0; t < nt; ++t) for (int c = 0; c < cols; ++c) {
            xq4[t * cols + c] = t == 1 ? xq[cols - 1 - c] : xq[c];
            if (c % 32 == 0) xd4[t * cols / 32 + c / 32] = (t == 1 ? xd[(cols - 1 - c) / 32] : xd[c / 32]) * (float)(1 + t);
        }
        std::vector<float> out(nt * rows, 0.0f);
        for (int r = 0; r < rows; ++r) {
            memset(sum_calls, 0, sizeof sum_calls);
            for (int lane = 31; lane >= 0; --lane) {
                blockIdx.x = r; threadIdx.x = lane; blockDim.x = 32;
                if (nt == 1) gemv_typed_t<T, 1>(raw.data(), xq4.data(), xd4.data(), out.data(), rows, cols, nt);
                else gemv_typed_t<T, 4>(raw.data(), xq4.data(), xd4.data(), out.data(), rows, cols, nt);
            }
            for (int t = 0; t < nt; ++t) {
                double want = 0, mag = 0;
                for (int c = 0; c < cols; ++c) {
                    double a = (double)deq[(size_t)r * cols + c] * xq4[t * cols + c] * xd4[t * cols / 32 + c / 32];
                    want += a; mag += std::fabs(a);
                }
                double rel = std::fabs(out[t * rows + r] - want) / (mag + 1e-12);
                if (rel > 1e-5) { if (bad < 3) printf("%s kernel, %d tokens, row %d token %d: got %g want %g\n", name, nt, r, t, out[t * rows + r], want); ++bad; }
            }
        }
    }
    if ((size_t)rows * nb * T::BYTES != raw.size()) { printf("%s: size mismatch %zu vs %d\n", name, raw.size(), rows*nb*T::BYTES); return 1; }
    for (int r = 0; r < rows; ++r) {
        const u8* row = raw.data() + (size_t)r * nb * T::BYTES;
        double got = 0, want = 0, mag = 0;
        for (int blk = 0; blk < nb; ++blk) for (int it = 0; it < T::ITEMS; ++it) {
            auto ld = T::load(row + (size_t)blk * T::BYTES, it);
            got += T::dot(ld, it, xq.data() + (size_t)blk * T::QK, xd.data() + (size_t)blk * (T::QK / 32));
        }
        for (int c = 0; c < cols; ++c) { double a = (double)deq[(size_t)r*cols+c] * (double)xq[c] * (double)xd[c/32]; want += a; mag += std::fabs(a); }
        double rel = std::fabs(got - want) / (mag + 1e-12);
        if (rel > worst) worst = rel;
        if (rel > 1e-5) { if (bad < 3) printf("%s row %d: got %g want %g\n", name, r, got, want); ++bad; }
    }
    printf("%-5s rows %d cols %d: worst |diff|/sum|terms| %.2e %s\n", name, rows, cols, worst, bad ? "FAIL" : "ok");
    return bad != 0;
}
// The prefill conversion of Q4_K / Q5_K rows to f16 (dequant_k4_f16), run
// as one warp lane by lane, against the dequantized weights rounded to f16.
int check_k4(const char* name, bool q5) {
    std::string base = std::string(DATA_DIR) + "/" + name;
    int rows, cols; { std::ifstream f(base + ".shape"); f >> rows >> cols; }
    std::ifstream fr(base + ".raw", std::ios::binary); std::vector<u8> raw((std::istreambuf_iterator<char>(fr)), {});
    std::ifstream ff(base + ".f32", std::ios::binary); std::vector<char> fb((std::istreambuf_iterator<char>(ff)), {});
    const float* deq = (const float*)fb.data();
    size_t n_blocks = (size_t)rows * cols / 256;
    std::vector<u16> out(n_blocks * 256, 0xFFFF);
    for (int lane = 0; lane < 32; ++lane) {
        blockIdx.x = 0; threadIdx.x = lane; blockDim.x = 32; gridDim.x = 1;
        if (q5) dequant_k4_f16<true>(raw.data(), out.data(), n_blocks);
        else dequant_k4_f16<false>(raw.data(), out.data(), n_blocks);
    }
    int bad = 0;
    for (size_t i = 0; i < out.size(); ++i)
        if (out[i] != float_to_half(deq[i])) { if (bad < 3) printf("%s f16 element %zu: got %04x want %04x\n", name, i, out[i], float_to_half(deq[i])); ++bad; }
    printf("%-5s prefill conversion to f16: %s\n", name, bad ? "FAIL" : "ok");
    return bad != 0;
}

// The persistent decode GEMVs' Q4_K / Q5_K superblock arithmetic (four lanes
// per superblock on the swizzled shared-memory activations: q4k_dot4_smem,
// q5k_dot4_smem), each row's lane sums against the dequantized weights.
int check_k4_smem(const char* name, bool q5) {
    std::string base = std::string(DATA_DIR) + "/" + name;
    int rows, cols; { std::ifstream f(base + ".shape"); f >> rows >> cols; }
    std::ifstream fr(base + ".raw", std::ios::binary); std::vector<u8> raw((std::istreambuf_iterator<char>(fr)), {});
    std::ifstream ff(base + ".f32", std::ios::binary); std::vector<char> fb((std::istreambuf_iterator<char>(ff)), {});
    const float* deq = (const float*)fb.data();
    std::vector<float> x(cols); u64 s = 0x2545F4914F6CDD1Dull;
    for (auto& v : x) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; v = (float)((s >> 11) % 2000001) / 1e6f - 1.0f; }
    int nxb = cols / 32, nb = cols / 256, bytes = q5 ? 176 : 144;
    std::vector<i8> xq(cols), sq(cols); std::vector<float> xd(nxb), ss(2 * nxb);
    for (int b = 0; b < nxb; ++b) { float amax = 0; for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[32*b+i]));
        float d = amax / 127.0f; xd[b] = d; for (int i = 0; i < 32; ++i) xq[32*b+i] = (i8)(amax > 0 ? std::lrintf(x[32*b+i] / d) : 0);
        for (int h = 0; h < 2; ++h) { int sum = 0; for (int i = 0; i < 16; ++i) sum += xq[32*b+16*h+i]; ss[2*b+h] = d * (float)sum; } }
    for (int e = 0; e < cols; e += 8) memcpy(&sq[xq_at(0, cols, e)], &xq[e], 8);
    int bad = 0; double worst = 0;
    for (int r = 0; r < rows; ++r) {
        float acc = 0;
        for (int blk = 0; blk < nb; ++blk) for (int c = 0; c < 4; ++c) {
            const u8* b = raw.data() + ((size_t)r * nb + blk) * bytes;
            uint4 hdr, h0, h1, qa, qb; memcpy(&hdr, b, 16);
            if (q5) { memcpy(&h0, b + 16, 16); memcpy(&h1, b + 32, 16); memcpy(&qa, b + 48 + 32*c, 16); memcpy(&qb, b + 64 + 32*c, 16);
                q5k_dot4_smem<1>(hdr, h0, h1, qa, qb, blk, sq.data(), xd.data(), ss.data(), cols, nxb, 1, c, &acc); }
            else { memcpy(&qa, b + 16 + 32*c, 16); memcpy(&qb, b + 32 + 32*c, 16);
                q4k_dot4_smem<1>(hdr, qa, qb, blk, sq.data(), xd.data(), ss.data(), cols, nxb, 1, c, &acc); }
        }
        double want = 0, mag = 0;
        for (int c = 0; c < cols; ++c) { double a = (double)deq[(size_t)r*cols+c] * xq[c] * xd[c/32]; want += a; mag += std::fabs(a); }
        double rel = std::fabs(acc - want) / (mag + 1e-12);
        if (rel > worst) worst = rel;
        if (rel > 1e-5) { if (bad < 3) printf("%s smem row %d: got %g want %g\n", name, r, acc, want); ++bad; }
    }
    printf("%-5s persistent GEMV superblocks: worst |diff|/sum|terms| %.2e %s\n", name, worst, bad ? "FAIL" : "ok");
    return bad != 0;
}

// The persistent GEMVs' lane formats of the 32-element types and IQ4_XS
// (LQ4_0 ... LIQ4_XS: four lanes per 256 elements, their loads and values),
// each row's lane sums against the dequantized weights.
template <class L>
int check_lanes(const char* name) {
    std::string base = std::string(DATA_DIR) + "/" + name;
    int rows, cols; { std::ifstream f(base + ".shape"); f >> rows >> cols; }
    std::ifstream fr(base + ".raw", std::ios::binary); std::vector<u8> raw((std::istreambuf_iterator<char>(fr)), {});
    std::ifstream ff(base + ".f32", std::ios::binary); std::vector<char> fb((std::istreambuf_iterator<char>(ff)), {});
    const float* deq = (const float*)fb.data();
    std::vector<float> x(cols); u64 s = 0x5851F42D4C957F2Dull;
    for (auto& v : x) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; v = (float)((s >> 11) % 2000001) / 1e6f - 1.0f; }
    int nxb = cols / 32, nb = cols / 256;
    std::vector<i8> xq(cols), sq(cols); std::vector<float> xd(nxb), ss(2 * nxb);
    for (int b = 0; b < nxb; ++b) { float amax = 0; for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[32*b+i]));
        float d = amax / 127.0f; xd[b] = d; for (int i = 0; i < 32; ++i) xq[32*b+i] = (i8)(amax > 0 ? std::lrintf(x[32*b+i] / d) : 0);
        for (int h = 0; h < 2; ++h) { int sum = 0; for (int i = 0; i < 16; ++i) sum += xq[32*b+16*h+i]; ss[2*b+h] = d * (float)sum; } }
    for (int e = 0; e < cols; e += 8) memcpy(&sq[xq_at(0, cols, e)], &xq[e], 8);
    if ((size_t)rows * nb * L::SB != raw.size()) { printf("%s: size mismatch\n", name); return 1; }
    int bad = 0; double worst = 0;
    for (int r = 0; r < rows; ++r) {
        float acc = 0;
        for (int blk = 0; blk < nb; ++blk) for (int c = 0; c < 4; ++c) {
            // Each superblock copied to a 16-byte-aligned buffer (8-byte for
            // IQ4_XS's 136-byte superblocks at odd positions, as on the device).
            alignas(16) u8 buf[16 + 288];
            u8* sb = buf + (L::SB % 16 ? 8 * (blk % 2) : 0);
            memcpy(sb, raw.data() + ((size_t)r * nb + blk) * L::SB, L::SB);
            uint4 v[6];
            L::load(sb, c, v);
            lane_fmt_dot<L, 1>(v, blk, sq.data(), xd.data(), ss.data(), cols, nxb, 1, c, &acc);
        }
        double want = 0, mag = 0;
        for (int c = 0; c < cols; ++c) { double a = (double)deq[(size_t)r*cols+c] * xq[c] * xd[c/32]; want += a; mag += std::fabs(a); }
        double rel = std::fabs(acc - want) / (mag + 1e-12);
        if (rel > worst) worst = rel;
        if (rel > 1e-5) { if (bad < 3) printf("%s lanes row %d: got %g want %g\n", name, r, acc, want); ++bad; }
    }
    printf("%-5s persistent GEMV lanes: worst |diff|/sum|terms| %.2e %s\n", name, worst, bad ? "FAIL" : "ok");
    return bad != 0;
}

// The element decoder `dequant` of a type against src/quant's dequantization,
// bit for bit (the prefill conversions and the generic GEMVs read it).
static int check_dequant(const char* name, int type_id, int block_elems, int block_bytes) {
    std::string base = std::string(DATA_DIR) + "/" + name;
    std::ifstream fr(base + ".raw", std::ios::binary); std::vector<u8> raw((std::istreambuf_iterator<char>(fr)), {});
    std::ifstream ff(base + ".f32", std::ios::binary); std::vector<char> fb((std::istreambuf_iterator<char>(ff)), {});
    const float* deq = (const float*)fb.data();
    size_t n = raw.size() / block_bytes * block_elems; int bad = 0;
    for (size_t e = 0; e < n; ++e) {
        float got = dequant(type_id, raw.data() + e / block_elems * block_bytes, (int)(e % block_elems));
        if (memcmp(&got, &deq[e], 4) != 0) { if (bad < 3) printf("%s element %zu: got %g want %g\n", name, e, got, deq[e]); ++bad; }
    }
    printf("%-7s dequant: %d of %zu elements differ %s\n", name, bad, n, bad ? "FAIL" : "ok");
    return bad != 0;
}

int main() {
    int f = 0;
    f += check_dequant("iq2_xxs", T_IQ2_XXS, 256, 66); f += check_dequant("iq2_xs", T_IQ2_XS, 256, 74);
    f += check_dequant("iq2_s", T_IQ2_S, 256, 82); f += check_dequant("iq3_xxs", T_IQ3_XXS, 256, 98);
    f += check_dequant("iq3_s", T_IQ3_S, 256, 110); f += check_dequant("iq1_s", T_IQ1_S, 256, 50);
    f += check_dequant("iq1_m", T_IQ1_M, 256, 56);
    f += check<TQ4_0>("q4_0", T_Q4_0); f += check<TQ4_1>("q4_1", T_Q4_1); f += check<TQ5_0>("q5_0", T_Q5_0);
    f += check<TQ5_1>("q5_1", T_Q5_1); f += check<TQ8_0>("q8_0", T_Q8_0); f += check<TQ2_K>("q2_k", T_Q2_K);
    f += check<TQ3_K>("q3_k", T_Q3_K); f += check<TQ5_K>("q5_k", T_Q5_K); f += check<TIQ4_NL>("iq4_nl", T_IQ4_NL);
    f += check<TIQ4_XS>("iq4_xs", T_IQ4_XS); f += check<TMXFP4>("mxfp4", T_MXFP4);
    f += check<TIQ2_XXS>("iq2_xxs", T_IQ2_XXS); f += check<TIQ2_XS>("iq2_xs", T_IQ2_XS);
    f += check<TIQ2_S>("iq2_s", T_IQ2_S); f += check<TIQ3_XXS>("iq3_xxs", T_IQ3_XXS);
    f += check<TIQ3_S>("iq3_s", T_IQ3_S); f += check<TIQ1_S>("iq1_s", T_IQ1_S); f += check<TIQ1_M>("iq1_m", T_IQ1_M);
    f += check_k4("q4_k", false); f += check_k4("q5_k", true);
    f += check_k4_smem("q4_k", false); f += check_k4_smem("q5_k", true);
    f += check_lanes<LQ4_0>("q4_0"); f += check_lanes<LQ4_1>("q4_1"); f += check_lanes<LQ5_0>("q5_0");
    f += check_lanes<LQ8_0>("q8_0"); f += check_lanes<LIQ4_NL>("iq4_nl"); f += check_lanes<LIQ4_XS>("iq4_xs");
    return f;
}
