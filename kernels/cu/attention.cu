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
//   attention_{fwd,bwd_pre,bwd_dq,bwd_dkdv}_ragged_d{64,128}_bf16
//                                      the same on a ragged batch (right padding):
//                                      rlen[bi] valid rows per sequence; forward
//                                      row i sits at position rpos0[bi] + i and
//                                      sees keys 0 ..= rpos0[bi] + i (decode and
//                                      prefill against a cache with one length per
//                                      sequence); padding rows get out 0, lse 0,
//                                      delta 0, dq 0, and dk, dv 0 on padding key
//                                      rows; the backward is the training shape
//                                      (every sequence starts at position 0) and
//                                      reads nothing from padding rows.
//
// The tensor-core versions ("v2") are in attention_mma.cu.
//
// The reference GPU path ("v1"): one warp per query row (forward,
// dq) or per key row (dk/dv); per chunk of 32 keys (queries) each lane
// computes one score with f32 FMAs, the warp merges them with an online
// softmax, then accumulates the 32 value rows with coalesced reads. No
// tensor cores. Exponentials in base 2 (exp2f, accurate to 2 ulp) with the
// scale folded with log2(e).
#include "attention.cuh"

#define ATT_WARPS 4

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
                                         int tq, int tkv, int cap, int nh, int nkv, const int* rpos0,
                                         const int* rlen) {
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
    int vis = tkv - tq + i + 1;  // keys 0..vis are visible (>= 1)
    if (rlen != nullptr) {       // ragged: padding rows are zero; positions per sequence
        if (i >= rlen[bi]) {
            float z[EPT];
#pragma unroll
            for (int e = 0; e < EPT; e++) z[e] = 0.f;
            store_lane<EPT>(out + q_off + lane * EPT, z);
            if (lane == 0) lse[((int64_t)bi * nh + h) * tq + i] = 0.f;
            return;  // the whole warp
        }
        vis = rpos0[bi] + i + 1;
    }
    row_to_shared<HD>(qs[warp], q + q_off, lane);
    __syncwarp();
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
__device__ __forceinline__ void attn_bwd_pre(float* delta, const bf16* dout, const bf16* out, int b, int t, int nh,
                                             const int* rlen) {
    constexpr int EPT = HD / WARP;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int i = blockIdx.x * ATT_WARPS + warp, h = blockIdx.y, bi = blockIdx.z;
    if (i >= t || bi >= b) return;
    if (rlen != nullptr && i >= rlen[bi]) {  // padding row: nothing read
        if (lane == 0) delta[((int64_t)bi * nh + h) * t + i] = 0.f;
        return;
    }
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
                                            const float* lse, const float* delta, int b, int t, int nh, int nkv,
                                            const int* rlen) {
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
    if (rlen != nullptr && i >= rlen[bi]) {  // padding row: dq 0, nothing read
        float z[EPT];
#pragma unroll
        for (int e = 0; e < EPT; e++) z[e] = 0.f;
        store_lane<EPT>(dq + q_off + lane * EPT, z);
        return;
    }
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
                                              int nh, int nkv, const int* rlen) {
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
    const int tend = rlen != nullptr ? rlen[bi] : t;  // query rows 0..tend are valid
    float ak[EPT], av[EPT];
#pragma unroll
    for (int e = 0; e < EPT; e++) ak[e] = av[e] = 0.f;
    if (j >= tend) {  // a padding key row: seen by no valid query
        store_lane<EPT>(dk + kv_off + lane * EPT, ak);
        store_lane<EPT>(dv + kv_off + lane * EPT, av);
        return;
    }
    row_to_shared<HD>(ks[warp], k + kv_off, lane);
    row_to_shared<HD>(vs[warp], v + kv_off, lane);
    __syncwarp();
    for (int h = g * group; h < (g + 1) * group; h++) {
        const bf16* qb = q + ((int64_t)bi * t * nh + h) * HD;  // row i at qb + i*q_rs
        const bf16* ob = dout + ((int64_t)bi * t * nh + h) * HD;
        const int64_t st = ((int64_t)bi * nh + h) * t;
        for (int i0 = j; i0 < tend; i0 += WARP) {
            const int i = i0 + lane;
            float p = 0.f, dsv = 0.f;
            if (i < tend) {
                p = exp2f(dot_row<HD>(qb + i * q_rs, ks[warp]) * sl2 - lse[st + i] * LOG2E);
                const float dp = dot_row<HD>(ob + i * q_rs, vs[warp]);
                dsv = p * (dp - delta[st + i]);
            }
            const int ni = min(WARP, tend - i0);
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
        attn_fwd<HD>(out, lse, q, k, v, b, tq, tkv, cap, nh, nkv, nullptr, nullptr);                              \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP)                                                \
        attention_bwd_pre_d##HD##_bf16(float* delta, const bf16* dout, const bf16* out, int b, int t, int nh) {   \
        attn_bwd_pre<HD>(delta, dout, out, b, t, nh, nullptr);                                                    \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP)                                                \
        attention_bwd_dq_d##HD##_bf16(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,    \
                                      const float* lse, const float* delta, int b, int t, int nh, int nkv) {      \
        attn_bwd_dq<HD>(dq, dout, q, k, v, lse, delta, b, t, nh, nkv, nullptr);                                   \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP) attention_bwd_dkdv_d##HD##_bf16(               \
        bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,      \
        const float* delta, int b, int t, int nh, int nkv) {                                                      \
        attn_bwd_dkdv<HD>(dk, dv, dout, q, k, v, lse, delta, b, t, nh, nkv, nullptr);                             \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP) attention_fwd_ragged_d##HD##_bf16(             \
        bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int* rpos0, const int* rlen,    \
        int b, int tq, int cap, int nh, int nkv) {                                                                \
        attn_fwd<HD>(out, lse, q, k, v, b, tq, cap, cap, nh, nkv, rpos0, rlen);                                   \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP) attention_bwd_pre_ragged_d##HD##_bf16(         \
        float* delta, const bf16* dout, const bf16* out, const int* rlen, int b, int t, int nh) {                 \
        attn_bwd_pre<HD>(delta, dout, out, b, t, nh, rlen);                                                       \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP) attention_bwd_dq_ragged_d##HD##_bf16(          \
        bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,                \
        const float* delta, const int* rlen, int b, int t, int nh, int nkv) {                                     \
        attn_bwd_dq<HD>(dq, dout, q, k, v, lse, delta, b, t, nh, nkv, rlen);                                      \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP) attention_bwd_dkdv_ragged_d##HD##_bf16(        \
        bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,      \
        const float* delta, const int* rlen, int b, int t, int nh, int nkv) {                                     \
        attn_bwd_dkdv<HD>(dk, dv, dout, q, k, v, lse, delta, b, t, nh, nkv, rlen);                                \
    }

DEFINE_ATTN(64)
DEFINE_ATTN(128)
