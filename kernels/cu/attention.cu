// attention.cu: causal scaled-dot-product attention with grouped-query
// attention, flash-attention style (the (t, t) scores are never stored;
// forward saves the row log-sum-exp, backward recomputes the probabilities).
// Dao et al. 2022 (FlashAttention), Alg. 1 and 2.
// Reference: kernels/src/attention.rs (attention_fwd_cpu, attention_bwd_cpu).
//
// Layouts: q, out, dq, dout (b, tq, n_head, hd); k, v, dk, dv (b, cap, n_kv_head, hd)
// with rows 0..tkv valid; lse, delta (b, n_head, tq) f32. Query head h reads
// KV head h / (n_head / n_kv_head). Query row i sits at position tkv − tq + i
// and sees keys 0 ..= tkv − tq + i. Scale 1/sqrt(hd).
//
// Entry points (hd ∈ {64, 128}, one instantiation each):
//   attention_fwd_d{64,128}_bf16       out (=), lse (=). Also the decode path
//                                      (tq = 1 against tkv cached keys, cap ≥ tkv).
//   attention_bwd_pre_d{64,128}_bf16   delta = rowsum(dout ⊙ out)  (=, f32 scratch)
//   attention_bwd_dq_d{64,128}_bf16    dq (=)
//   attention_bwd_dkdv_d{64,128}_bf16  dk, dv (=); the GQA reduction over the
//                                      query heads of a KV head happens inside
//                                      (one warp owns a key row), no atomics.
//
//   attention_fwd_mma_d{64,128}_bf16   the forward on tensor cores ("v2", below)
//
// The reference GPU path ("v1"): one warp per query row (forward,
// dq) or per key row (dk/dv); per chunk of 32 keys (queries) each lane
// computes one score with f32 FMAs, the warp merges them with an online
// softmax, then accumulates the 32 value rows with coalesced reads. No
// tensor cores. Exponentials in base 2 (exp2f, accurate to 2 ulp) with the
// scale folded with log2(e).
#include "common.cuh"

#define ATT_WARPS 4
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// Loads this lane's EPT = HD/32 consecutive elements of a bf16 row as f32.
template <int EPT>
__device__ __forceinline__ void load_lane(const bf16* p, float* dst) {
    if constexpr (EPT == 2) {
        const __nv_bfloat162 w = *reinterpret_cast<const __nv_bfloat162*>(p);
        dst[0] = __low2float(w);
        dst[1] = __high2float(w);
    } else {
        static_assert(EPT == 4, "EPT is 2 or 4");
        const uint2 u = *reinterpret_cast<const uint2*>(p);
        const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(&u.x);
        const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(&u.y);
        dst[0] = __low2float(a);
        dst[1] = __high2float(a);
        dst[2] = __low2float(b);
        dst[3] = __high2float(b);
    }
}
template <int EPT>
__device__ __forceinline__ void store_lane(bf16* p, const float* src) {
#pragma unroll
    for (int e = 0; e < EPT; e += 2) *reinterpret_cast<__nv_bfloat162*>(p + e) = __floats2bfloat162_rn(src[e], src[e + 1]);
}

// dot(row (bf16, global), s (f32, shared)) over HD elements, 16-byte loads.
template <int HD>
__device__ __forceinline__ float dot_row(const bf16* row, const float* s) {
    float d = 0.f;
#pragma unroll
    for (int e = 0; e < HD; e += 8) {
        const Pack8 w = ldv(row + e);
#pragma unroll
        for (int u = 0; u < 8; u++) d = fmaf(s[e + u], to_f(w.v[u]), d);
    }
    return d;
}

// Copies a bf16 row of HD elements into shared f32 (the whole warp).
template <int HD>
__device__ __forceinline__ void row_to_shared(float* dst, const bf16* src, int lane) {
    constexpr int EPT = HD / WARP;
    float t[EPT];
    load_lane<EPT>(src + lane * EPT, t);
#pragma unroll
    for (int e = 0; e < EPT; e++) dst[lane * EPT + e] = t[e];
}

template <int HD>
__device__ __forceinline__ void attn_fwd(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int b,
                                         int tq, int tkv, int cap, int nh, int nkv) {
    constexpr int EPT = HD / WARP;
    __shared__ float qs[ATT_WARPS][HD];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int i = blockIdx.x * ATT_WARPS + warp, h = blockIdx.y, bi = blockIdx.z;
    if (i >= tq || bi >= b) return;  // the whole warp; only warp-level sync below
    const int g = h / (nh / nkv);
    const int64_t q_off = (((int64_t)bi * tq + i) * nh + h) * HD;
    const int64_t kv_rs = (int64_t)nkv * HD;
    const bf16* kb = k + ((int64_t)bi * cap * nkv + g) * HD;
    const bf16* vb = v + ((int64_t)bi * cap * nkv + g) * HD;
    const float sl2 = (1.f / sqrtf((float)HD)) * LOG2E;  // 1/sqrt(hd) exactly as the CPU computes it
    row_to_shared<HD>(qs[warp], q + q_off, lane);
    __syncwarp();
    const int vis = tkv - tq + i + 1;  // keys 0..vis are visible (>= 1)
    float m = -INFINITY, l = 0.f, acc[EPT];
#pragma unroll
    for (int e = 0; e < EPT; e++) acc[e] = 0.f;
    for (int j0 = 0; j0 < vis; j0 += WARP) {
        const int j = j0 + lane;
        const float s = j < vis ? dot_row<HD>(kb + j * kv_rs, qs[warp]) * sl2 : -INFINITY;
        const float m_new = fmaxf(m, warp_max(s));  // finite: lane 0 is visible
        const float p = j < vis ? exp2f(s - m_new) : 0.f;
        const float corr = exp2f(m - m_new);  // 0 on the first chunk
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int e = 0; e < EPT; e++) acc[e] *= corr;
        const int nj = min(WARP, vis - j0);
        for (int jj = 0; jj < nj; jj++) {
            const float pj = __shfl_sync(FULL_MASK, p, jj);
            float vr[EPT];
            load_lane<EPT>(vb + (int64_t)(j0 + jj) * kv_rs + lane * EPT, vr);
#pragma unroll
            for (int e = 0; e < EPT; e++) acc[e] = fmaf(pj, vr[e], acc[e]);
        }
        m = m_new;
    }
    const float inv = 1.f / l;
#pragma unroll
    for (int e = 0; e < EPT; e++) acc[e] *= inv;
    store_lane<EPT>(out + q_off + lane * EPT, acc);
    if (lane == 0) lse[((int64_t)bi * nh + h) * tq + i] = (m + log2f(l)) * LN2;
}

// delta (b, nh, t) = Σ_d dout ⊙ out: one warp per (row, head).
template <int HD>
__device__ __forceinline__ void attn_bwd_pre(float* delta, const bf16* dout, const bf16* out, int b, int t, int nh) {
    constexpr int EPT = HD / WARP;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int i = blockIdx.x * ATT_WARPS + warp, h = blockIdx.y, bi = blockIdx.z;
    if (i >= t || bi >= b) return;
    const int64_t off = (((int64_t)bi * t + i) * nh + h) * HD + lane * EPT;
    float a[EPT], c[EPT];
    load_lane<EPT>(dout + off, a);
    load_lane<EPT>(out + off, c);
    float d = 0.f;
#pragma unroll
    for (int e = 0; e < EPT; e++) d = fmaf(a[e], c[e], d);
    d = warp_sum(d);
    if (lane == 0) delta[((int64_t)bi * nh + h) * t + i] = d;
}

// dq row i of head h: Σ_{j ≤ i} ds_ij k_j · scale, ds = p ⊙ (dp − delta), dp = dout_i·v_j.
template <int HD>
__device__ __forceinline__ void attn_bwd_dq(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                                            const float* lse, const float* delta, int b, int t, int nh, int nkv) {
    constexpr int EPT = HD / WARP;
    __shared__ float qs[ATT_WARPS][HD];
    __shared__ float ds_[ATT_WARPS][HD];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int i = blockIdx.x * ATT_WARPS + warp, h = blockIdx.y, bi = blockIdx.z;
    if (i >= t || bi >= b) return;
    const int g = h / (nh / nkv);
    const int64_t q_off = (((int64_t)bi * t + i) * nh + h) * HD;
    const int64_t kv_rs = (int64_t)nkv * HD;
    const bf16* kb = k + ((int64_t)bi * t * nkv + g) * HD;
    const bf16* vb = v + ((int64_t)bi * t * nkv + g) * HD;
    const float scale = 1.f / sqrtf((float)HD);
    const float sl2 = scale * LOG2E;
    row_to_shared<HD>(qs[warp], q + q_off, lane);
    row_to_shared<HD>(ds_[warp], dout + q_off, lane);
    __syncwarp();
    const int64_t st = ((int64_t)bi * nh + h) * t + i;
    const float lse2 = lse[st] * LOG2E, di = delta[st];
    float acc[EPT];
#pragma unroll
    for (int e = 0; e < EPT; e++) acc[e] = 0.f;
    const int vis = i + 1;
    for (int j0 = 0; j0 < vis; j0 += WARP) {
        const int j = j0 + lane;
        float dsv = 0.f;
        if (j < vis) {
            const float p = exp2f(dot_row<HD>(kb + j * kv_rs, qs[warp]) * sl2 - lse2);
            const float dp = dot_row<HD>(vb + j * kv_rs, ds_[warp]);
            dsv = p * (dp - di);
        }
        const int nj = min(WARP, vis - j0);
        for (int jj = 0; jj < nj; jj++) {
            const float d = __shfl_sync(FULL_MASK, dsv, jj);
            float kr[EPT];
            load_lane<EPT>(kb + (int64_t)(j0 + jj) * kv_rs + lane * EPT, kr);
#pragma unroll
            for (int e = 0; e < EPT; e++) acc[e] = fmaf(d, kr[e], acc[e]);
        }
    }
#pragma unroll
    for (int e = 0; e < EPT; e++) acc[e] *= scale;
    store_lane<EPT>(dq + q_off + lane * EPT, acc);
}

// dk, dv row j of KV head g: sums over every query head of the group and
// every query row i ≥ j. dv = Σ p_ij dout_i, dk = scale · Σ ds_ij q_i.
template <int HD>
__device__ __forceinline__ void attn_bwd_dkdv(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                                              const bf16* v, const float* lse, const float* delta, int b, int t,
                                              int nh, int nkv) {
    constexpr int EPT = HD / WARP;
    __shared__ float ks[ATT_WARPS][HD];
    __shared__ float vs[ATT_WARPS][HD];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int j = blockIdx.x * ATT_WARPS + warp, g = blockIdx.y, bi = blockIdx.z;
    if (j >= t || bi >= b) return;
    const int group = nh / nkv;
    const int64_t kv_off = (((int64_t)bi * t + j) * nkv + g) * HD;
    const int64_t q_rs = (int64_t)nh * HD;
    const float scale = 1.f / sqrtf((float)HD);
    const float sl2 = scale * LOG2E;
    row_to_shared<HD>(ks[warp], k + kv_off, lane);
    row_to_shared<HD>(vs[warp], v + kv_off, lane);
    __syncwarp();
    float ak[EPT], av[EPT];
#pragma unroll
    for (int e = 0; e < EPT; e++) ak[e] = av[e] = 0.f;
    for (int h = g * group; h < (g + 1) * group; h++) {
        const bf16* qb = q + ((int64_t)bi * t * nh + h) * HD;  // row i at qb + i*q_rs
        const bf16* ob = dout + ((int64_t)bi * t * nh + h) * HD;
        const int64_t st = ((int64_t)bi * nh + h) * t;
        for (int i0 = j; i0 < t; i0 += WARP) {
            const int i = i0 + lane;
            float p = 0.f, dsv = 0.f;
            if (i < t) {
                p = exp2f(dot_row<HD>(qb + i * q_rs, ks[warp]) * sl2 - lse[st + i] * LOG2E);
                const float dp = dot_row<HD>(ob + i * q_rs, vs[warp]);
                dsv = p * (dp - delta[st + i]);
            }
            const int ni = min(WARP, t - i0);
            for (int ii = 0; ii < ni; ii++) {
                const float pi = __shfl_sync(FULL_MASK, p, ii);
                const float di = __shfl_sync(FULL_MASK, dsv, ii);
                float orow[EPT], qrow[EPT];
                load_lane<EPT>(ob + (int64_t)(i0 + ii) * q_rs + lane * EPT, orow);
                load_lane<EPT>(qb + (int64_t)(i0 + ii) * q_rs + lane * EPT, qrow);
#pragma unroll
                for (int e = 0; e < EPT; e++) {
                    av[e] = fmaf(pi, orow[e], av[e]);
                    ak[e] = fmaf(di, qrow[e], ak[e]);
                }
            }
        }
    }
#pragma unroll
    for (int e = 0; e < EPT; e++) ak[e] *= scale;
    store_lane<EPT>(dk + kv_off + lane * EPT, ak);
    store_lane<EPT>(dv + kv_off + lane * EPT, av);
}

#define DEFINE_ATTN(HD)                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP)                                                \
        attention_fwd_d##HD##_bf16(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int b,     \
                                   int tq, int tkv, int cap, int nh, int nkv) {                                   \
        attn_fwd<HD>(out, lse, q, k, v, b, tq, tkv, cap, nh, nkv);                                                \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP)                                                \
        attention_bwd_pre_d##HD##_bf16(float* delta, const bf16* dout, const bf16* out, int b, int t, int nh) {   \
        attn_bwd_pre<HD>(delta, dout, out, b, t, nh);                                                             \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP)                                                \
        attention_bwd_dq_d##HD##_bf16(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,    \
                                      const float* lse, const float* delta, int b, int t, int nh, int nkv) {      \
        attn_bwd_dq<HD>(dq, dout, q, k, v, lse, delta, b, t, nh, nkv);                                            \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP) attention_bwd_dkdv_d##HD##_bf16(               \
        bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,      \
        const float* delta, int b, int t, int nh, int nkv) {                                                      \
        attn_bwd_dkdv<HD>(dk, dv, dout, q, k, v, lse, delta, b, t, nh, nkv);                                      \
    }

DEFINE_ATTN(64)
DEFINE_ATTN(128)

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

__device__ __forceinline__ void mma16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

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
