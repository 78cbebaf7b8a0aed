// attention_mma.cu: causal GQA attention on tensor cores ("v2" of the
// attention family; v1, the warp-per-row reference path, is attention.cu).
// Same layouts, shapes and write rules as attention.cu; reference:
// kernels/src/attention.rs (attention_fwd_cpu, attention_bwd_cpu).
//
//   attention_fwd_mma_d{64,128}_bf16       out (=), lse (=)
//   attention_bwd_dq_mma_d{64,128}_bf16    dq (=)
//   attention_bwd_dkdv_mma_d{64,128}_bf16  dk, dv (=), the GQA sum inside
//   (delta = rowsum(dout ⊙ out) from attention.cu's attention_bwd_pre)
//
// mma.sync m16n8k16 bf16 with f32 accumulation (sm_80 and up).
// Dao 2023, FlashAttention-2. v3 (attention_v3.cu) adds ldmatrix, cp.async
// stages and a single-pass backward.
#include "attention.cuh"
#include "mma.cuh"

// ---------------------------------------------------------------------------
// v2: forward on tensor cores (mma.sync m16n8k16 bf16 -> f32, sm_80 and up),
// FlashAttention-2 work split: a block of 4 warps owns 64 query rows of one
// (batch, head), each warp 16 rows; K and V tiles of 64 keys are staged in
// shared memory; S = Q Kᵀ and O += P V run on mma, the online softmax on
// the S fragments in registers. P is rounded to bf16 for the P V product
// (the row sums l use the f32 P), which gpu-check's reference mirrors.
// Fragment layouts (PTX ISA, mma.m16n8k16): g = lane / 4, c = lane % 4;
//   A (16x16 row): a0 (g, 2c..2c+1), a1 (g+8, 2c..), a2 (g, 2c+8..), a3 (g+8, 2c+8..)
//   B (16x8 col):  b0 (k 2c..2c+1, n g), b1 (k 2c+8..2c+9, n g)
//   C (16x8):      c0,c1 (g, 2c..2c+1), c2,c3 (g+8, 2c..2c+1)
// The C fragments of two neighbouring 8-key tiles are the A fragment of a
// 16-key slice of P (FlashAttention-2's register reuse).
// Unvalidated on a GPU until docs/gpu-validation.md logs a run.
#define MMA_BQ 64
#define MMA_BK 64
#define MMA_PAD 8  // bf16 of padding per shared row (16 bytes): rows start on different banks

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
    return *reinterpret_cast<uint32_t*>(&v);
}
// two bf16 of one row, as one 32-bit word (col even: 4-byte aligned)
__device__ __forceinline__ uint32_t ld_pair(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }
// two bf16 of one column in consecutive rows (the transposed B operand)
__device__ __forceinline__ uint32_t ld_col_pair(const bf16* p, int stride) {
    const uint32_t lo = *reinterpret_cast<const uint16_t*>(p);
    const uint32_t hi = *reinterpret_cast<const uint16_t*>(p + stride);
    return lo | (hi << 16);
}

template <int HD>
__device__ __forceinline__ void attn_fwd_mma(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int b,
                                             int tq, int tkv, int cap, int nh, int nkv) {
    constexpr int LD = HD + MMA_PAD;  // shared row stride in bf16
    constexpr int KT = HD / 16;       // k-steps of S = Q Kᵀ
    constexpr int NT = MMA_BK / 8;    // 8-key tiles of S
    constexpr int DT = HD / 8;        // 8-dim tiles of O
    __shared__ __align__(16) bf16 ks[MMA_BK * LD];
    __shared__ __align__(16) bf16 vs[MMA_BK * LD];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int g = lane / 4, c = lane % 4;
    const int h = blockIdx.y, bi = blockIdx.z;
    const int q0 = blockIdx.x * MMA_BQ;
    if (q0 >= tq || bi >= b) return;  // uniform over the block
    const int r0 = q0 + warp * 16;    // first query row of this warp
    const int kvh = h / (nh / nkv);
    const int64_t kv_rs = (int64_t)nkv * HD;
    const bf16* kb = k + ((int64_t)bi * cap * nkv + kvh) * HD;
    const bf16* vb = v + ((int64_t)bi * cap * nkv + kvh) * HD;
    const float sl2 = (1.f / sqrtf((float)HD)) * LOG2E;
    const int off = tkv - tq;  // query row i sees keys 0 ..= off + i

    // Q fragments for the warp's 16 rows (rows past tq are zero)
    uint32_t qa[KT][4];
    {
        const int ra = r0 + g, rb = r0 + g + 8;
        const bf16* qra = q + (((int64_t)bi * tq + ra) * nh + h) * HD;
        const bf16* qrb = q + (((int64_t)bi * tq + rb) * nh + h) * HD;
#pragma unroll
        for (int kk = 0; kk < KT; kk++) {
            const int col = kk * 16 + 2 * c;
            qa[kk][0] = ra < tq ? ld_pair(qra + col) : 0u;
            qa[kk][1] = rb < tq ? ld_pair(qrb + col) : 0u;
            qa[kk][2] = ra < tq ? ld_pair(qra + col + 8) : 0u;
            qa[kk][3] = rb < tq ? ld_pair(qrb + col + 8) : 0u;
        }
    }
    float o[DT][4];
#pragma unroll
    for (int d = 0; d < DT; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    const int last_row = min(q0 + MMA_BQ, tq) - 1;
    const int n_tiles = (off + last_row) / MMA_BK + 1;
    const bool warp_has_rows = r0 < tq;
    const int warp_max_key = off + min(r0 + 15, tq - 1);
    for (int tile = 0; tile < n_tiles; tile++) {
        const int j0 = tile * MMA_BK;
        __syncthreads();  // the previous tile is consumed
        for (int ch = threadIdx.x; ch < MMA_BK * (HD / 8); ch += blockDim.x) {
            const int row = ch / (HD / 8), col = (ch % (HD / 8)) * 8;
            uint4 kw = make_uint4(0, 0, 0, 0), vw = make_uint4(0, 0, 0, 0);
            if (j0 + row < tkv) {
                kw = *reinterpret_cast<const uint4*>(kb + (int64_t)(j0 + row) * kv_rs + col);
                vw = *reinterpret_cast<const uint4*>(vb + (int64_t)(j0 + row) * kv_rs + col);
            }
            *reinterpret_cast<uint4*>(ks + row * LD + col) = kw;
            *reinterpret_cast<uint4*>(vs + row * LD + col) = vw;
        }
        __syncthreads();
        if (!warp_has_rows || j0 > warp_max_key) continue;  // warp-uniform: nothing visible
        // S (16 x 64) = Q Kᵀ
        float sacc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) sacc[nt][0] = sacc[nt][1] = sacc[nt][2] = sacc[nt][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KT; kk++) {
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const bf16* kr = ks + (nt * 8 + g) * LD + kk * 16 + 2 * c;
                mma16816(sacc[nt], qa[kk], ld_pair(kr), ld_pair(kr + 8));
            }
        }
        // mask, scale to log2 units, row max
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = r0 + g + (e >= 2 ? 8 : 0);
                const int j = j0 + nt * 8 + 2 * c + (e & 1);
                const bool vis = i < tq && j < tkv && j <= off + i;
                sacc[nt][e] = vis ? sacc[nt][e] * sl2 : -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], sacc[nt][e]);
            }
        }
        float corr[2], mu[2];
#pragma unroll
        for (int rh = 0; rh < 2; rh++) {
            mx[rh] = fmaxf(mx[rh], __shfl_xor_sync(FULL_MASK, mx[rh], 1));
            mx[rh] = fmaxf(mx[rh], __shfl_xor_sync(FULL_MASK, mx[rh], 2));
            const float mn = fmaxf(m[rh], mx[rh]);
            mu[rh] = mn == -INFINITY ? 0.f : mn;  // a row with nothing visible yet
            corr[rh] = exp2f(m[rh] - mu[rh]);     // 0 when m was -inf
            m[rh] = mn;
            l[rh] *= corr[rh];
        }
#pragma unroll
        for (int d = 0; d < DT; d++) {
            o[d][0] *= corr[0];
            o[d][1] *= corr[0];
            o[d][2] *= corr[1];
            o[d][3] *= corr[1];
        }
        // P = exp2(S − m), row sums in f32, then O += bf16(P) V
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                sacc[nt][e] = exp2f(sacc[nt][e] - mu[e >> 1]);
                l[e >> 1] += sacc[nt][e];
            }
        }
#pragma unroll
        for (int js = 0; js < MMA_BK / 16; js++) {
            uint32_t pa[4];
            pa[0] = pack_bf16(sacc[2 * js][0], sacc[2 * js][1]);
            pa[1] = pack_bf16(sacc[2 * js][2], sacc[2 * js][3]);
            pa[2] = pack_bf16(sacc[2 * js + 1][0], sacc[2 * js + 1][1]);
            pa[3] = pack_bf16(sacc[2 * js + 1][2], sacc[2 * js + 1][3]);
#pragma unroll
            for (int d = 0; d < DT; d++) {
                const bf16* vr = vs + (js * 16 + 2 * c) * LD + d * 8 + g;
                mma16816(o[d], pa, ld_col_pair(vr, LD), ld_col_pair(vr + 8 * LD, LD));
            }
        }
    }
    if (!warp_has_rows) return;
    // the 4 threads of a group hold partial row sums of the same rows
#pragma unroll
    for (int rh = 0; rh < 2; rh++) {
        l[rh] += __shfl_xor_sync(FULL_MASK, l[rh], 1);
        l[rh] += __shfl_xor_sync(FULL_MASK, l[rh], 2);
    }
#pragma unroll
    for (int rh = 0; rh < 2; rh++) {
        const int i = r0 + g + 8 * rh;
        if (i >= tq) continue;
        const float inv = 1.f / l[rh];
        bf16* orow = out + (((int64_t)bi * tq + i) * nh + h) * HD;
#pragma unroll
        for (int d = 0; d < DT; d++)
            *reinterpret_cast<__nv_bfloat162*>(orow + d * 8 + 2 * c) =
                __floats2bfloat162_rn(o[d][2 * rh] * inv, o[d][2 * rh + 1] * inv);
        if (c == 0) lse[((int64_t)bi * nh + h) * tq + i] = (m[rh] + log2f(l[rh])) * LN2;
    }
}

#define DEFINE_ATTN_MMA(HD)                                                                                   \
    extern "C" __global__ void __launch_bounds__(4 * WARP) attention_fwd_mma_d##HD##_bf16(                   \
        bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int b, int tq, int tkv, int cap, \
        int nh, int nkv) {                                                                                    \
        attn_fwd_mma<HD>(out, lse, q, k, v, b, tq, tkv, cap, nh, nkv);                                        \
    }

DEFINE_ATTN_MMA(64)
DEFINE_ATTN_MMA(128)

// ---------------------------------------------------------------------------
// v2 backward on tensor cores, as two kernels so that no output needs an
// atomic (FlashAttention-2 accumulates dQ atomically instead):
//  - dq: a block owns 64 query rows (16 per warp) and walks key tiles of 32:
//    S = Q Kᵀ, P = exp2(S·log2e/√d − lse·log2e), dP = dO Vᵀ,
//    dS = P ⊙ (dP − delta), dQ += dS K.
//  - dkdv: a block owns 64 keys of one KV head (16 per warp, K and V staged
//    in shared memory) and walks every query head of its group and every
//    query tile of 16 rows at or after its keys: Sᵀ = K Qᵀ (so Pᵀ and dSᵀ
//    come out in the C layout that is the A operand of the next product),
//    dV += Pᵀ dO, dPᵀ = V dOᵀ, dSᵀ = Pᵀ ⊙ (dPᵀ − delta), dK += dSᵀ Q.
// P and dS are rounded to bf16 as mma operands (gpu-check's naive
// reference does the same). delta comes from attention_bwd_pre.
// Unvalidated on a GPU until docs/gpu-validation.md logs a run.
#define BWD_BK 32  // keys per tile of the dq kernel
#define BWD_BQ 16  // query rows per tile of the dkdv kernel

template <int HD>
__device__ __forceinline__ void attn_bwd_dq_mma(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                                                const float* lse, const float* delta, int b, int t, int nh, int nkv) {
    constexpr int LD = HD + MMA_PAD;
    constexpr int KT = HD / 16;
    constexpr int NT = BWD_BK / 8;
    constexpr int DT = HD / 8;
    __shared__ __align__(16) bf16 ks[BWD_BK * LD];
    __shared__ __align__(16) bf16 vs[BWD_BK * LD];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int g = lane / 4, c = lane % 4;
    const int h = blockIdx.y, bi = blockIdx.z;
    const int q0 = blockIdx.x * MMA_BQ;
    if (q0 >= t || bi >= b) return;  // uniform over the block
    const int r0 = q0 + warp * 16;
    const int kvh = h / (nh / nkv);
    const int64_t kv_rs = (int64_t)nkv * HD;
    const bf16* kb = k + ((int64_t)bi * t * nkv + kvh) * HD;
    const bf16* vb = v + ((int64_t)bi * t * nkv + kvh) * HD;
    const float scale = 1.f / sqrtf((float)HD);
    const float sl2 = scale * LOG2E;
    uint32_t qa[KT][4], da[KT][4];
    float lse2[2], dl[2];
#pragma unroll
    for (int rh = 0; rh < 2; rh++) {
        const int i = r0 + g + 8 * rh;
        const int64_t st = ((int64_t)bi * nh + h) * t + i;
        lse2[rh] = i < t ? lse[st] * LOG2E : 0.f;
        dl[rh] = i < t ? delta[st] : 0.f;
    }
    {
        const int ra = r0 + g, rb = r0 + g + 8;
        const int64_t oa = (((int64_t)bi * t + ra) * nh + h) * HD, ob = (((int64_t)bi * t + rb) * nh + h) * HD;
#pragma unroll
        for (int kk = 0; kk < KT; kk++) {
            const int col = kk * 16 + 2 * c;
            qa[kk][0] = ra < t ? ld_pair(q + oa + col) : 0u;
            qa[kk][1] = rb < t ? ld_pair(q + ob + col) : 0u;
            qa[kk][2] = ra < t ? ld_pair(q + oa + col + 8) : 0u;
            qa[kk][3] = rb < t ? ld_pair(q + ob + col + 8) : 0u;
            da[kk][0] = ra < t ? ld_pair(dout + oa + col) : 0u;
            da[kk][1] = rb < t ? ld_pair(dout + ob + col) : 0u;
            da[kk][2] = ra < t ? ld_pair(dout + oa + col + 8) : 0u;
            da[kk][3] = rb < t ? ld_pair(dout + ob + col + 8) : 0u;
        }
    }
    float acc[DT][4];
#pragma unroll
    for (int d = 0; d < DT; d++) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.f;
    const int last_row = min(q0 + MMA_BQ, t) - 1;
    const int n_tiles = last_row / BWD_BK + 1;  // keys 0 ..= last_row
    const bool warp_has_rows = r0 < t;
    const int warp_max_key = min(r0 + 15, t - 1);
    for (int tile = 0; tile < n_tiles; tile++) {
        const int j0 = tile * BWD_BK;
        __syncthreads();
        for (int ch = threadIdx.x; ch < BWD_BK * (HD / 8); ch += blockDim.x) {
            const int row = ch / (HD / 8), col = (ch % (HD / 8)) * 8;
            uint4 kw = make_uint4(0, 0, 0, 0), vw = make_uint4(0, 0, 0, 0);
            if (j0 + row < t) {
                kw = *reinterpret_cast<const uint4*>(kb + (int64_t)(j0 + row) * kv_rs + col);
                vw = *reinterpret_cast<const uint4*>(vb + (int64_t)(j0 + row) * kv_rs + col);
            }
            *reinterpret_cast<uint4*>(ks + row * LD + col) = kw;
            *reinterpret_cast<uint4*>(vs + row * LD + col) = vw;
        }
        __syncthreads();
        if (!warp_has_rows || j0 > warp_max_key) continue;  // warp-uniform
        float sacc[NT][4], pacc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) sacc[nt][e] = pacc[nt][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KT; kk++) {
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const bf16* kr = ks + (nt * 8 + g) * LD + kk * 16 + 2 * c;
                const bf16* vr = vs + (nt * 8 + g) * LD + kk * 16 + 2 * c;
                mma16816(sacc[nt], qa[kk], ld_pair(kr), ld_pair(kr + 8));  // S = Q Kᵀ
                mma16816(pacc[nt], da[kk], ld_pair(vr), ld_pair(vr + 8));  // dP = dO Vᵀ
            }
        }
        // dS = P ⊙ (dP − delta), masked entries 0
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int rh = e >> 1;
                const int i = r0 + g + 8 * rh;
                const int j = j0 + nt * 8 + 2 * c + (e & 1);
                const bool vis = i < t && j <= i;
                const float p = vis ? exp2f(sacc[nt][e] * sl2 - lse2[rh]) : 0.f;
                sacc[nt][e] = p * (pacc[nt][e] - dl[rh]);
            }
        }
        // dQ += dS K
#pragma unroll
        for (int js = 0; js < BWD_BK / 16; js++) {
            uint32_t a[4];
            a[0] = pack_bf16(sacc[2 * js][0], sacc[2 * js][1]);
            a[1] = pack_bf16(sacc[2 * js][2], sacc[2 * js][3]);
            a[2] = pack_bf16(sacc[2 * js + 1][0], sacc[2 * js + 1][1]);
            a[3] = pack_bf16(sacc[2 * js + 1][2], sacc[2 * js + 1][3]);
#pragma unroll
            for (int d = 0; d < DT; d++) {
                const bf16* kr = ks + (js * 16 + 2 * c) * LD + d * 8 + g;
                mma16816(acc[d], a, ld_col_pair(kr, LD), ld_col_pair(kr + 8 * LD, LD));
            }
        }
    }
    if (!warp_has_rows) return;
#pragma unroll
    for (int rh = 0; rh < 2; rh++) {
        const int i = r0 + g + 8 * rh;
        if (i >= t) continue;
        bf16* row = dq + (((int64_t)bi * t + i) * nh + h) * HD;
#pragma unroll
        for (int d = 0; d < DT; d++)
            *reinterpret_cast<__nv_bfloat162*>(row + d * 8 + 2 * c) =
                __floats2bfloat162_rn(acc[d][2 * rh] * scale, acc[d][2 * rh + 1] * scale);
    }
}

template <int HD>
__device__ __forceinline__ void attn_bwd_dkdv_mma(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                                                  const bf16* v, const float* lse, const float* delta, int b, int t,
                                                  int nh, int nkv) {
    constexpr int LD = HD + MMA_PAD;
    constexpr int KT = HD / 16;
    constexpr int NT = BWD_BQ / 8;  // 8-query tiles of Sᵀ
    constexpr int DT = HD / 8;
    __shared__ __align__(16) bf16 ks[MMA_BQ * LD];  // the block's 64 keys
    __shared__ __align__(16) bf16 vs[MMA_BQ * LD];
    __shared__ __align__(16) bf16 qs[BWD_BQ * LD];  // the current query tile
    __shared__ __align__(16) bf16 os[BWD_BQ * LD];  // and its dO rows
    __shared__ float lse2s[BWD_BQ], dls[BWD_BQ];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int g = lane / 4, c = lane % 4;
    const int kvh = blockIdx.y, bi = blockIdx.z;
    const int k0 = blockIdx.x * MMA_BQ;
    if (k0 >= t || bi >= b) return;  // uniform over the block
    const int kw = k0 + warp * 16;   // first key of this warp
    const int group = nh / nkv;
    const int64_t q_rs = (int64_t)nh * HD;
    const float scale = 1.f / sqrtf((float)HD);
    const float sl2 = scale * LOG2E;
    for (int ch = threadIdx.x; ch < MMA_BQ * (HD / 8); ch += blockDim.x) {
        const int row = ch / (HD / 8), col = (ch % (HD / 8)) * 8;
        uint4 kwd = make_uint4(0, 0, 0, 0), vwd = make_uint4(0, 0, 0, 0);
        if (k0 + row < t) {
            const int64_t o = (((int64_t)bi * t + k0 + row) * nkv + kvh) * HD + col;
            kwd = *reinterpret_cast<const uint4*>(k + o);
            vwd = *reinterpret_cast<const uint4*>(v + o);
        }
        *reinterpret_cast<uint4*>(ks + row * LD + col) = kwd;
        *reinterpret_cast<uint4*>(vs + row * LD + col) = vwd;
    }
    float dka[DT][4], dva[DT][4];
#pragma unroll
    for (int d = 0; d < DT; d++)
#pragma unroll
        for (int e = 0; e < 4; e++) dka[d][e] = dva[d][e] = 0.f;
    const bool warp_has_keys = kw < t;
    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        const bf16* qb = q + ((int64_t)bi * t * nh + h) * HD;  // row i at qb + i*q_rs
        const bf16* ob = dout + ((int64_t)bi * t * nh + h) * HD;
        const int64_t st = ((int64_t)bi * nh + h) * t;
        for (int i0 = k0; i0 < t; i0 += BWD_BQ) {  // queries before k0 see none of these keys
            __syncthreads();  // the previous tile is consumed (and ks/vs are written, first time)
            for (int ch = threadIdx.x; ch < BWD_BQ * (HD / 8); ch += blockDim.x) {
                const int row = ch / (HD / 8), col = (ch % (HD / 8)) * 8;
                uint4 qw = make_uint4(0, 0, 0, 0), ow = make_uint4(0, 0, 0, 0);
                if (i0 + row < t) {
                    qw = *reinterpret_cast<const uint4*>(qb + (int64_t)(i0 + row) * q_rs + col);
                    ow = *reinterpret_cast<const uint4*>(ob + (int64_t)(i0 + row) * q_rs + col);
                }
                *reinterpret_cast<uint4*>(qs + row * LD + col) = qw;
                *reinterpret_cast<uint4*>(os + row * LD + col) = ow;
            }
            if (threadIdx.x < BWD_BQ) {
                const int i = i0 + threadIdx.x;
                lse2s[threadIdx.x] = i < t ? lse[st + i] * LOG2E : 0.f;
                dls[threadIdx.x] = i < t ? delta[st + i] : 0.f;
            }
            __syncthreads();
            if (!warp_has_keys || i0 + BWD_BQ - 1 < kw) continue;  // warp-uniform: no query sees these keys
            // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ (16 keys x 16 queries)
            float sacc[NT][4], pacc[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) sacc[nt][e] = pacc[nt][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KT; kk++) {
                const int col = kk * 16 + 2 * c;
                const bf16* kra = ks + (warp * 16 + g) * LD + col;
                const bf16* vra = vs + (warp * 16 + g) * LD + col;
                const uint32_t ka[4] = {ld_pair(kra), ld_pair(kra + 8 * LD), ld_pair(kra + 8), ld_pair(kra + 8 * LD + 8)};
                const uint32_t va[4] = {ld_pair(vra), ld_pair(vra + 8 * LD), ld_pair(vra + 8), ld_pair(vra + 8 * LD + 8)};
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const bf16* qr = qs + (nt * 8 + g) * LD + col;
                    const bf16* orr = os + (nt * 8 + g) * LD + col;
                    mma16816(sacc[nt], ka, ld_pair(qr), ld_pair(qr + 8));
                    mma16816(pacc[nt], va, ld_pair(orr), ld_pair(orr + 8));
                }
            }
            // Pᵀ and dSᵀ; row = key, column = query
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = kw + g + 8 * (e >> 1);
                    const int qi = nt * 8 + 2 * c + (e & 1);  // in the tile
                    const int i = i0 + qi;
                    const bool vis = i < t && key < t && key <= i;
                    const float p = vis ? exp2f(sacc[nt][e] * sl2 - lse2s[qi]) : 0.f;
                    sacc[nt][e] = p;
                    pacc[nt][e] = p * (pacc[nt][e] - dls[qi]);
                }
            }
            uint32_t pa[4], sa[4];
            pa[0] = pack_bf16(sacc[0][0], sacc[0][1]);
            pa[1] = pack_bf16(sacc[0][2], sacc[0][3]);
            pa[2] = pack_bf16(sacc[1][0], sacc[1][1]);
            pa[3] = pack_bf16(sacc[1][2], sacc[1][3]);
            sa[0] = pack_bf16(pacc[0][0], pacc[0][1]);
            sa[1] = pack_bf16(pacc[0][2], pacc[0][3]);
            sa[2] = pack_bf16(pacc[1][0], pacc[1][1]);
            sa[3] = pack_bf16(pacc[1][2], pacc[1][3]);
            // dV += Pᵀ dO, dK += dSᵀ Q (B operands: columns of dO and Q)
#pragma unroll
            for (int d = 0; d < DT; d++) {
                const bf16* orr = os + (2 * c) * LD + d * 8 + g;
                const bf16* qr = qs + (2 * c) * LD + d * 8 + g;
                mma16816(dva[d], pa, ld_col_pair(orr, LD), ld_col_pair(orr + 8 * LD, LD));
                mma16816(dka[d], sa, ld_col_pair(qr, LD), ld_col_pair(qr + 8 * LD, LD));
            }
        }
    }
    if (!warp_has_keys) return;
#pragma unroll
    for (int rh = 0; rh < 2; rh++) {
        const int key = kw + g + 8 * rh;
        if (key >= t) continue;
        const int64_t o = (((int64_t)bi * t + key) * nkv + kvh) * HD;
#pragma unroll
        for (int d = 0; d < DT; d++) {
            *reinterpret_cast<__nv_bfloat162*>(dk + o + d * 8 + 2 * c) =
                __floats2bfloat162_rn(dka[d][2 * rh] * scale, dka[d][2 * rh + 1] * scale);
            *reinterpret_cast<__nv_bfloat162*>(dv + o + d * 8 + 2 * c) =
                __floats2bfloat162_rn(dva[d][2 * rh], dva[d][2 * rh + 1]);
        }
    }
}

#define DEFINE_ATTN_BWD_MMA(HD)                                                                                  \
    extern "C" __global__ void __launch_bounds__(4 * WARP) attention_bwd_dq_mma_d##HD##_bf16(                   \
        bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,             \
        const float* delta, int b, int t, int nh, int nkv) {                                                     \
        attn_bwd_dq_mma<HD>(dq, dout, q, k, v, lse, delta, b, t, nh, nkv);                                       \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(4 * WARP) attention_bwd_dkdv_mma_d##HD##_bf16(                 \
        bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,   \
        const float* delta, int b, int t, int nh, int nkv) {                                                     \
        attn_bwd_dkdv_mma<HD>(dk, dv, dout, q, k, v, lse, delta, b, t, nh, nkv);                                 \
    }

DEFINE_ATTN_BWD_MMA(64)
DEFINE_ATTN_BWD_MMA(128)
