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
//   attention_fwd_splitk[_ragged]_d{64,128}_bf16 and
//   attention_splitk_combine[_ragged]_d{64,128}_bf16
//                                      split-K decode (flash-decoding), the same
//                                      contract as the forward: the first writes
//                                      per-chunk partials into f32 scratch, the
//                                      second merges them into out (=), lse (=).
//                                      See "split-K decode" below.
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
#include "mma.cuh"  // cp.async (split-K decode)

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

// ---- split-K decode (flash-decoding) ----------------------------------------
// For a few query rows against a long cache, v1 runs one warp per query row:
// at tq = 1 its grid holds n_head·b warps and most of the GPU idles while
// each warp walks every cached key. Here the keys are split into chunks of
// SK_CHUNK; a block owns one (chunk, KV head, batch) and up to SK_ROWS query
// rows of that KV head's group (query heads × query rows: K and V are read
// once per group, not once per query head), and leaves, for each of its rows,
// the chunk's unnormalised result with its own max and sum (log2 domain):
//   m_c = max_j s_j, l_c = Σ_j exp2(s_j − m_c), o_c = Σ_j exp2(s_j − m_c)·v_j
// over the keys j of chunk c the row sees (s_j = q·k_j·scale·log2 e). The
// combine kernel merges the chunks exactly:
//   M = max_c m_c, L = Σ_c l_c·exp2(m_c − M), out = Σ_c o_c·exp2(m_c − M) / L,
//   lse = (M + log2 L)·ln 2
// the same quantities as the unsplit kernels (up to f32 rounding: another
// summation order). A row's chunks are fixed by its own position (chunk c
// holds keys c·SK_CHUNK ..), so its result does not depend on the batch.
//
// Block: SK_WARPS warps; local row lr = rr·SK_WARPS + warp (rr < SK_RPW), so
// a group of 8 rows gives each warp 2. The chunk's two K/V tiles of SK_TILE
// keys are copied by cp.async into their own shared buffers at the start (two
// commit groups: tile 1's copy overlaps tile 0's products; keys past the
// sequence's last position are zero-filled, never read). Per tile and row the
// warp scores two keys a lane (lane, lane + 32) against the row's q in shared
// f32, updates its running max and sum (an online softmax over the chunk's
// tiles), and accumulates the tile's value rows, a lane owning HD/32 columns.
// Shared rows are padded by SK_PAD bf16 so the 16-byte reads of 8 lanes at a
// time (each its own key row) hit distinct banks.
//
// Scratch: opart (b, nh, tq, nchunks, HD) f32 and ml (b, nh, tq, nchunks, 2)
// f32 (m_c, l_c), written for chunk c of row i exactly when c·SK_CHUNK <
// vis(i) (the row sees a key of the chunk) and read by the combine for those
// chunks only, so nothing else of the scratch is ever read (no zeroing).
#define SK_WARPS 4
#define SK_RPW 4
#define SK_ROWS 16  // SK_WARPS * SK_RPW query rows per block
#define SK_TILE 64
#define SK_TILES 2
#define SK_CHUNK 128  // SK_TILE * SK_TILES keys per block
#define SK_PAD 8
static_assert(SK_ROWS == SK_WARPS * SK_RPW && SK_CHUNK == SK_TILE * SK_TILES && SK_TILES == 2, "split-K constants");

template <int HD>
struct SplitK {
    static constexpr int LD = HD + SK_PAD;  // shared row stride, bf16
    // K and V tiles (SK_TILES each), then the block's q rows in f32
    static constexpr int SMEM = 2 * SK_TILES * SK_TILE * LD * 2 + SK_ROWS * HD * 4;
};

template <int HD>
__device__ __forceinline__ void attn_fwd_splitk(float* opart, float* ml, const bf16* q, const bf16* k, const bf16* v,
                                                int b, int tq, int tkv, int cap, int nh, int nkv, int nchunks,
                                                const int* rpos0, const int* rlen) {
    constexpr int EPT = HD / WARP, LD = SplitK<HD>::LD, CH = HD / 8;
    SMEM_DYNAMIC(bf16, sm);
    bf16* ks = sm;                                                           // [SK_TILES·SK_TILE][LD]
    bf16* vs = sm + SK_TILES * SK_TILE * LD;                                 // [SK_TILES·SK_TILE][LD]
    float* qs = reinterpret_cast<float*>(sm + 2 * SK_TILES * SK_TILE * LD);  // [SK_ROWS][HD]
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int group = nh / nkv, rows = group * tq, rblocks = (rows + SK_ROWS - 1) / SK_ROWS;
    const int chunk = blockIdx.x, g = blockIdx.y / rblocks, rb = blockIdx.y % rblocks, bi = blockIdx.z;
    if (bi >= b || chunk >= nchunks) return;  // whole block
    int p0 = tkv - tq, len = tq;  // query row i sits at position p0 + i
    if (rlen != nullptr) {
        p0 = rpos0[bi];
        len = rlen[bi];
    }
    const int kv_end = p0 + len;  // keys 0 .. kv_end are seen by some row of the sequence
    const int k0 = chunk * SK_CHUNK;
    if (k0 >= kv_end) return;  // whole block, before any barrier: no row sees this chunk
    const int64_t kv_rs = (int64_t)nkv * HD;
    const bf16* kb = k + ((int64_t)bi * cap * nkv + g) * HD;
    const bf16* vb = v + ((int64_t)bi * cap * nkv + g) * HD;
    for (int t = 0; t < SK_TILES; t++) {
        for (int x = threadIdx.x; x < SK_TILE * CH; x += blockDim.x) {
            const int r = t * SK_TILE + x / CH, col = (x % CH) * 8;
            const bool ok = k0 + r < kv_end;
            const int64_t off = ok ? (int64_t)(k0 + r) * kv_rs + col : 0;
            cp_async16(ks + r * LD + col, kb + off, ok ? 16 : 0);
            cp_async16(vs + r * LD + col, vb + off, ok ? 16 : 0);
        }
        cp_async_commit();
    }
    // this warp's rows: q into shared f32, and how many keys each sees (0: none)
    int vis[SK_RPW];
#pragma unroll
    for (int rr = 0; rr < SK_RPW; rr++) {
        const int r = rb * SK_ROWS + rr * SK_WARPS + warp, i = r / group;
        vis[rr] = (r < rows && i < len) ? p0 + i + 1 : 0;
        if (vis[rr] > k0) {
            const int h = g * group + r % group;
            row_to_shared<HD>(qs + (rr * SK_WARPS + warp) * HD, q + (((int64_t)bi * tq + i) * nh + h) * HD, lane);
        }
    }
    const float sl2 = (1.f / sqrtf((float)HD)) * LOG2E;  // as v1
    float m[SK_RPW], l[SK_RPW], acc[SK_RPW][EPT];
#pragma unroll
    for (int rr = 0; rr < SK_RPW; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.f;
#pragma unroll
        for (int e = 0; e < EPT; e++) acc[rr][e] = 0.f;
    }
#pragma unroll
    for (int t = 0; t < SK_TILES; t++) {
        if (t == 0) {
            cp_async_wait<1>();  // tile 0's group has landed (this thread's copies) ...
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // ... and every thread's, and the q rows
        const int kt = k0 + t * SK_TILE;
        const bf16* kts = ks + t * SK_TILE * LD;
        const bf16* vts = vs + t * SK_TILE * LD;
#pragma unroll
        for (int rr = 0; rr < SK_RPW; rr++) {
            if (vis[rr] <= kt) continue;  // warp-uniform: the row sees no key of this tile
            const int nv = min(SK_TILE, vis[rr] - kt);  // >= 1
            const float* qr = qs + (rr * SK_WARPS + warp) * HD;
            const float s0 = lane < nv ? dot_row<HD>(kts + lane * LD, qr) * sl2 : -INFINITY;
            const float s1 = lane + WARP < nv ? dot_row<HD>(kts + (lane + WARP) * LD, qr) * sl2 : -INFINITY;
            const float m_new = fmaxf(m[rr], warp_max(fmaxf(s0, s1)));  // finite: key kt is visible
            const float corr = exp2f(m[rr] - m_new);                    // 0 on the row's first tile
            const float p0v = lane < nv ? exp2f(s0 - m_new) : 0.f;
            const float p1v = lane + WARP < nv ? exp2f(s1 - m_new) : 0.f;
            l[rr] = l[rr] * corr + warp_sum(p0v + p1v);
#pragma unroll
            for (int e = 0; e < EPT; e++) acc[rr][e] *= corr;
            for (int jj = 0; jj < nv; jj++) {
                const float pj = __shfl_sync(FULL_MASK, jj < WARP ? p0v : p1v, jj % WARP);
                float vr[EPT];
                load_lane<EPT>(vts + jj * LD + lane * EPT, vr);
#pragma unroll
                for (int e = 0; e < EPT; e++) acc[rr][e] = fmaf(pj, vr[e], acc[rr][e]);
            }
            m[rr] = m_new;
        }
    }
#pragma unroll
    for (int rr = 0; rr < SK_RPW; rr++) {
        if (vis[rr] <= k0) continue;  // the combine does not read this chunk for the row
        const int r = rb * SK_ROWS + rr * SK_WARPS + warp, i = r / group, h = g * group + r % group;
        const int64_t pi = (((int64_t)bi * nh + h) * tq + i) * nchunks + chunk;
#pragma unroll
        for (int e = 0; e < EPT; e++) opart[pi * HD + lane * EPT + e] = acc[rr][e];
        if (lane == 0) {
            ml[2 * pi] = m[rr];
            ml[2 * pi + 1] = l[rr];
        }
    }
}

// Merges the chunks of one query row (one warp per (row, head, batch), as
// v1's forward); padding rows of a ragged batch get out 0 and lse 0.
template <int HD>
__device__ __forceinline__ void attn_splitk_combine(bf16* out, float* lse, const float* opart, const float* ml, int b,
                                                    int tq, int tkv, int nh, int nchunks, const int* rpos0,
                                                    const int* rlen) {
    constexpr int EPT = HD / WARP;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int i = blockIdx.x * ATT_WARPS + warp, h = blockIdx.y, bi = blockIdx.z;
    if (i >= tq || bi >= b) return;  // the whole warp
    const int64_t q_off = (((int64_t)bi * tq + i) * nh + h) * HD;
    const int64_t st = ((int64_t)bi * nh + h) * tq + i;
    int vis = tkv - tq + i + 1;
    float acc[EPT];
#pragma unroll
    for (int e = 0; e < EPT; e++) acc[e] = 0.f;
    if (rlen != nullptr) {
        if (i >= rlen[bi]) {  // padding row
            store_lane<EPT>(out + q_off + lane * EPT, acc);
            if (lane == 0) lse[st] = 0.f;
            return;
        }
        vis = rpos0[bi] + i + 1;
    }
    const int nc = min((vis + SK_CHUNK - 1) / SK_CHUNK, nchunks);  // the chunks holding this row's keys
    float mx = -INFINITY;
    for (int c = 0; c < nc; c++) mx = fmaxf(mx, ml[2 * (st * nchunks + c)]);
    float L = 0.f;
    for (int c = 0; c < nc; c++) {
        const int64_t pi = st * nchunks + c;
        const float w = exp2f(ml[2 * pi] - mx);
        L += ml[2 * pi + 1] * w;
#pragma unroll
        for (int e = 0; e < EPT; e++) acc[e] = fmaf(w, opart[pi * HD + lane * EPT + e], acc[e]);
    }
    const float inv = 1.f / L;
#pragma unroll
    for (int e = 0; e < EPT; e++) acc[e] *= inv;
    store_lane<EPT>(out + q_off + lane * EPT, acc);
    if (lane == 0) lse[st] = (mx + log2f(L)) * LN2;
}

#define DEFINE_SPLITK(HD)                                                                                         \
    extern "C" __global__ void __launch_bounds__(SK_WARPS * WARP) attention_fwd_splitk_d##HD##_bf16(              \
        float* opart, float* ml, const bf16* q, const bf16* k, const bf16* v, int b, int tq, int tkv, int cap,    \
        int nh, int nkv, int nchunks) {                                                                           \
        attn_fwd_splitk<HD>(opart, ml, q, k, v, b, tq, tkv, cap, nh, nkv, nchunks, nullptr, nullptr);             \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(SK_WARPS * WARP) attention_fwd_splitk_ragged_d##HD##_bf16(       \
        float* opart, float* ml, const bf16* q, const bf16* k, const bf16* v, const int* rpos0, const int* rlen,  \
        int b, int tq, int cap, int nh, int nkv, int nchunks) {                                                   \
        attn_fwd_splitk<HD>(opart, ml, q, k, v, b, tq, cap, cap, nh, nkv, nchunks, rpos0, rlen);                  \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP) attention_splitk_combine_d##HD##_bf16(         \
        bf16* out, float* lse, const float* opart, const float* ml, int b, int tq, int tkv, int nh, int nchunks) { \
        attn_splitk_combine<HD>(out, lse, opart, ml, b, tq, tkv, nh, nchunks, nullptr, nullptr);                  \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP) attention_splitk_combine_ragged_d##HD##_bf16(  \
        bf16* out, float* lse, const float* opart, const float* ml, const int* rpos0, const int* rlen, int b,     \
        int tq, int nh, int nchunks) {                                                                            \
        attn_splitk_combine<HD>(out, lse, opart, ml, b, tq, 0, nh, nchunks, rpos0, rlen);                         \
    }

DEFINE_SPLITK(64)
DEFINE_SPLITK(128)

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
