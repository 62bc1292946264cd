// ---------------------------------------------------------------------------
// A mixture of experts' decode (a few tokens, each choosing k experts) as
// three launches, llama.cpp's mul_mat_id for small batches: every (token,
// expert) pair's gated MLP row by row, the weighted outputs summed per token
// in slot order. Without it each chosen expert took its own gather, three
// products, activation and scatter: a dozen launches and allocations per
// expert, 8 experts a token in 48 layers of Qwen3-30B-A3B.
//
// A pair p (token-major: p = t·k + s) is described by four words in `pairs`:
// the device addresses of its expert's gate, up and down matrices, then its
// token (low 32 bits) and weight (the float's bits, high 32 bits). Weights of
// any block type, decoded 8 elements a lane (`dequant8`), against f32
// activations; rows of a multiple of 8 elements.

// Σ_c row[c] · x[c] over one warp (the sum in every lane).
__device__ __forceinline__ float moe_row_dot(const u8* row, const float* x, int type, int cols,
                                             int block_elems, int block_bytes, int lane) {
    float acc = 0.0f;
    for (int e0 = lane * 8; e0 < cols; e0 += 256) {
        float v[8];
        if (type == T_BF16) {
            for (int k = 0; k < 8; ++k) v[k] = dequant(type, row + (size_t)(e0 + k) * block_bytes, 0);
        } else if (block_elems == 1) {
            dequant8(type, row + (size_t)e0 * block_bytes, 0, v);
        } else {
            dequant8(type, row + (size_t)(e0 / block_elems) * block_bytes, e0 % block_elems, v);
        }
        const float4* xp = (const float4*)(x + e0);
        float4 a = xp[0], b = xp[1];
        acc += v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w
             + v[4] * b.x + v[5] * b.y + v[6] * b.z + v[7] * b.w;
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
    return acc;
}

// h[p, r] = act(gate_p[r] · x[t]) · (up_p[r] · x[t]) for the ff rows of each
// pair (grid.y = pairs, a warp per row); act 0: SiLU, 1: GELU-tanh (as the
// `swiglu` and `geglu` kernels).
extern "C" __global__ void moe_gate_up(const unsigned long long* pairs, const float* x, float* h,
                                       int type, int ff, int d, int block_elems, int block_bytes,
                                       int act) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    int p = blockIdx.y;
    if (row >= ff) return;
    const unsigned long long* q = pairs + 4 * (size_t)p;
    unsigned token = (unsigned)(q[3] & 0xffffffffu);
    size_t row_bytes = (size_t)(d / block_elems) * block_bytes;
    const float* xt = x + (size_t)token * d;
    float g = moe_row_dot((const u8*)q[0] + row * row_bytes, xt, type, d, block_elems, block_bytes, lane);
    float u = moe_row_dot((const u8*)q[1] + row * row_bytes, xt, type, d, block_elems, block_bytes, lane);
    if (lane != 0) return;
    float y;
    if (act == 0) {
        y = g / (1.0f + expf(-g));
    } else if (g <= -10.0f) {
        y = 0.0f;
    } else if (g >= 10.0f) {
        y = g;
    } else {
        float z = round_half(g);
        float inner = fmaf(0.044715f * z, z, 1.0f);
        y = round_half(0.5f * z * (1.0f + tanhf(0.7978845608028654f * z * inner)));
    }
    h[(size_t)p * ff + row] = y * u;
}

// y[p, r] = weight_p · (down_p[r] · h[p]) for the d rows of each pair.
extern "C" __global__ void moe_down(const unsigned long long* pairs, const float* h, float* y, int type,
                                    int d, int ff, int block_elems, int block_bytes) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    int p = blockIdx.y;
    if (row >= d) return;
    const unsigned long long* q = pairs + 4 * (size_t)p;
    float weight = __uint_as_float((unsigned)(q[3] >> 32));
    size_t row_bytes = (size_t)(ff / block_elems) * block_bytes;
    float s = moe_row_dot((const u8*)q[2] + row * row_bytes, h + (size_t)p * ff, type, ff, block_elems,
                          block_bytes, lane);
    if (lane == 0) y[(size_t)p * d + row] = s * weight;
}

// out[t, c] = y[t·k, c] + y[t·k + 1, c] + … (slot order, as llama.cpp sums).
extern "C" __global__ void moe_sum(const float* y, float* out, int k, int d, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / d, c = i % d;
        const float* yt = y + t * k * (size_t)d + c;
        float s = yt[0];
        for (int j = 1; j < k; ++j) s += yt[(size_t)j * d];
        out[i] = s;
    }
}
