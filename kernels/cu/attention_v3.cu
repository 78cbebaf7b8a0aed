// attention_v3.cu: causal GQA attention on tensor cores, "v3" of the
// attention family (v1: attention.cu, warp per row; v2: attention_mma.cu).
// Same layouts, shapes and write rules as attention.cu; reference:
// kernels/src/attention.rs (attention_fwd_cpu, attention_bwd_cpu).
//
//   attention_fwd_v3[_ragged]_d{64,128}_bf16   out (=), lse (=)
//   attention_bwd_v3[_ragged]_d{64,128}_bf16   dk, dv (=), dq_acc (+=, f32)
//   attention_bwd_v3_dq_bf16                   dq (=) = bf16(dq_acc · scale)
//   (delta = rowsum(dout ⊙ out) from attention.cu's attention_bwd_pre[_ragged])
//
// What changed against v2 (each is in the code below; none is measured yet):
// - shared memory is read with ldmatrix (Q and K as A/B fragments, V and dO
//   with .trans as the B operand of P·V and Pᵀ·dO) instead of 32-bit loads;
// - K/V tiles (forward) and Q/dO tiles (backward) are copied global -> shared
//   with cp.async, several stages deep, so the next tile's copy overlaps the
//   current tile's products;
// - the forward block owns 128 query rows (8 warps of 16), and the grid puts
//   the query tile in its slowest dimension in reverse, so the heaviest
//   causal tiles (the last rows, which see the most keys) start first;
// - the backward is one kernel in FlashAttention-2's order (Dao 2023, Alg. 2):
//   a block owns 64 keys of a KV head, keeps their dK and dV in registers,
//   walks every query head of its group and every query tile that sees its
//   keys, and computes S, P, dP and dS once per (query tile, key tile): no
//   recomputation. dQ is accumulated in f32 in global memory without
//   atomics: the blocks of one query tile add their parts in the order of
//   their key tiles (a counter per query tile and head that block j waits to
//   read j, then sets to j + 1), so the sum is the same on every run. A block
//   takes its key tile from a ticket (an atomic counter at its start), so a
//   block only ever waits for blocks that started before it (forward
//   progress whatever order the hardware starts blocks in); tickets run
//   over key tiles first, so key tile 0, the heaviest, starts first.
//
// Dynamic shared memory beyond 48 KiB (the launchers opt in): V3Fwd::SMEM,
// V3Bwd::SMEM. P and dS are rounded to bf16 as mma operands, as in v2
// (gpu-check's naive references round at the same points).
// Unvalidated on a GPU until docs/gpu-validation.md logs a run.
#include "attention.cuh"
#include "mma.cuh"

#define V3_BQ 128      // query rows per forward block
#define V3_BK 64       // keys per forward K/V tile
#define V3_FWD_WARPS 8
#define V3_PAD 8       // bf16 of padding per shared row: 16-byte rows of ldmatrix hit distinct banks
#define V3_BWD_BK 64   // keys per backward block
#define V3_BWD_BQ 32   // query rows per backward step
#define V3_BWD_WARPS 4
#define V3_DQ_THREADS 256

template <int HD>
struct V3Fwd {
    static constexpr int LD = HD + V3_PAD;       // shared row stride, bf16
    static constexpr int NS = HD == 64 ? 3 : 2;  // K/V pipeline stages
    // Q tile, then NS stages of K and of V
    static constexpr int SMEM = (V3_BQ * LD + 2 * NS * V3_BK * LD) * 2;
};

template <int HD>
struct V3Bwd {
    static constexpr int LD = HD + V3_PAD;
    static constexpr int LDS = V3_BWD_BQ + V3_PAD;  // dSᵀ row stride (a row per key)
    // K, V; 2 stages of Q and dO; dSᵀ; 2 stages of lse·log2e and delta; the ticket
    static constexpr int SMEM = (2 * V3_BWD_BK * LD + 2 * 2 * V3_BWD_BQ * LD + V3_BWD_BK * LDS) * 2 + 2 * 2 * V3_BWD_BQ * 4 + 16;
};

__device__ __forceinline__ uint32_t v3_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
    return *reinterpret_cast<uint32_t*>(&v);
}

// cp.async of rows row0 .. row0 + ROWS of a bf16 matrix (row r at src + r·rs,
// HD columns) into shared memory (row stride HD + V3_PAD); rows at or past
// `valid` are zero-filled without reading. Every thread of the block takes part.
template <int HD, int ROWS>
__device__ __forceinline__ void v3_load_rows(bf16* dst, const bf16* src, int64_t rs, int row0, int valid, int tid, int nthreads) {
    constexpr int LD = HD + V3_PAD, CH = HD / 8;
    for (int x = tid; x < ROWS * CH; x += nthreads) {
        const int r = x / CH, col = (x % CH) * 8;
        const bool ok = row0 + r < valid;
        cp_async16(dst + r * LD + col, ok ? src + (int64_t)(row0 + r) * rs + col : src, ok ? 16 : 0);
    }
}

// ---------------------------------------------------------------------------
// forward: a block of 8 warps owns 128 query rows of one (batch, head), each
// warp 16 rows (Q fragments in registers, loaded once by ldmatrix); K/V tiles
// of 64 keys stream through NS cp.async stages. Query row i sits at position
// off + i (off = tkv − tq, or the sequence's pos0 when ragged) and sees keys
// 0 ..= off + i; ragged rows at or past len are written as zeros.
// Fragment layouts: attention_mma.cu (PTX ISA, mma.m16n8k16).
template <int HD>
__device__ __forceinline__ void attn_fwd_v3(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int b, int tq, int tkv,
                                            int cap, int nh, int nkv, const int* rpos0, const int* rlen) {
    using C = V3Fwd<HD>;
    constexpr int LD = C::LD, NS = C::NS;
    constexpr int KT = HD / 16;    // k-steps of S = Q Kᵀ
    constexpr int NT = V3_BK / 8;  // 8-key tiles of S
    constexpr int DT = HD / 8;     // 8-dim tiles of O
    SMEM_DYNAMIC(bf16, sm);
    bf16* qs = sm;
    bf16* ks = sm + V3_BQ * LD;
    bf16* vs = ks + NS * V3_BK * LD;
    const int tid = threadIdx.x, warp = tid / WARP, lane = tid % WARP;
    const int g = lane / 4, c = lane % 4;
    const int h = blockIdx.x, bi = blockIdx.y;
    const int q0 = (int)(gridDim.z - 1 - blockIdx.z) * V3_BQ;  // heaviest tiles first
    if (bi >= b || h >= nh) return;  // uniform over the block
    int len = tq, off = tkv - tq, kv_valid = tkv;
    if (rlen != nullptr) {
        len = rlen[bi];
        off = rpos0[bi];
        kv_valid = off + len;
    }
    const int64_t q_rs = (int64_t)nh * HD, kv_rs = (int64_t)nkv * HD;
    if (q0 >= len) {  // ragged: a tile of padding rows only (uniform over the block)
        for (int x = tid; x < V3_BQ * (HD / 8); x += blockDim.x) {
            const int i = q0 + x / (HD / 8);
            if (i < tq) *reinterpret_cast<uint4*>(out + (((int64_t)bi * tq + i) * nh + h) * HD + (x % (HD / 8)) * 8) = make_uint4(0, 0, 0, 0);
        }
        for (int r = tid; r < V3_BQ; r += blockDim.x)
            if (q0 + r < tq) lse[((int64_t)bi * nh + h) * tq + q0 + r] = 0.f;
        return;
    }
    const int kvh = h / (nh / nkv);
    const bf16* qb = q + ((int64_t)bi * tq * nh + h) * HD;
    const bf16* kb = k + ((int64_t)bi * cap * nkv + kvh) * HD;
    const bf16* vb = v + ((int64_t)bi * cap * nkv + kvh) * HD;
    const float sl2 = (1.f / sqrtf((float)HD)) * LOG2E;
    const int last_row = min(q0 + V3_BQ, len) - 1;
    const int n_tiles = (off + last_row) / V3_BK + 1;

    // the Q tile, then the first NS - 1 K/V tiles, one commit group each
    v3_load_rows<HD, V3_BQ>(qs, qb, q_rs, q0, len, tid, blockDim.x);
    cp_async_commit();
#pragma unroll
    for (int st = 0; st < NS - 1; st++) {
        if (st < n_tiles) {
            v3_load_rows<HD, V3_BK>(ks + st * V3_BK * LD, kb, kv_rs, st * V3_BK, kv_valid, tid, blockDim.x);
            v3_load_rows<HD, V3_BK>(vs + st * V3_BK * LD, vb, kv_rs, st * V3_BK, kv_valid, tid, blockDim.x);
        }
        cp_async_commit();
    }
    cp_async_wait<NS - 1>();  // the Q group has landed
    __syncthreads();
    const int r0 = q0 + warp * 16;  // first query row of this warp
    uint32_t qa[KT][4];
    {
        const bf16* p = qs + (warp * 16 + (lane & 15)) * LD + (lane >> 4) * 8;
#pragma unroll
        for (int kk = 0; kk < KT; kk++) ldmatrix_x4(qa[kk], p + kk * 16);
    }
    float o[DT][4];
#pragma unroll
    for (int d = 0; d < DT; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const bool warp_has_rows = r0 < len;
    const int warp_max_key = off + min(r0 + 15, len - 1);

    for (int tile = 0; tile < n_tiles; tile++) {
        cp_async_wait<NS - 2>();  // this tile's group has landed (for this thread) ...
        __syncthreads();          // ... and for all; every warp is done with the stage refilled next
        {
            const int nxt = tile + NS - 1;
            if (nxt < n_tiles) {
                const int st = nxt % NS;
                v3_load_rows<HD, V3_BK>(ks + st * V3_BK * LD, kb, kv_rs, nxt * V3_BK, kv_valid, tid, blockDim.x);
                v3_load_rows<HD, V3_BK>(vs + st * V3_BK * LD, vb, kv_rs, nxt * V3_BK, kv_valid, tid, blockDim.x);
            }
            cp_async_commit();  // possibly empty: keeps one group per tile
        }
        const int j0 = tile * V3_BK;
        if (!warp_has_rows || j0 > warp_max_key) continue;  // warp-uniform: nothing visible
        const bf16* kt = ks + (tile % NS) * V3_BK * LD;
        const bf16* vt = vs + (tile % NS) * V3_BK * LD;
        // S (16 x 64) = Q Kᵀ; one ldmatrix.x4 gives the B fragments of two 8-key tiles
        float sacc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) sacc[nt][0] = sacc[nt][1] = sacc[nt][2] = sacc[nt][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KT; kk++) {
#pragma unroll
            for (int np = 0; np < NT; np += 2) {
                uint32_t bb[4];
                ldmatrix_x4(bb, kt + (np * 8 + (lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
                mma16816(sacc[np], qa[kk], bb[0], bb[1]);
                mma16816(sacc[np + 1], qa[kk], bb[2], bb[3]);
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
                const bool vis = i < len && j <= off + i;
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
        // P = exp2(S − m), row sums in f32, then O += bf16(P) V (V by ldmatrix.trans)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                sacc[nt][e] = exp2f(sacc[nt][e] - mu[e >> 1]);
                l[e >> 1] += sacc[nt][e];
            }
        }
#pragma unroll
        for (int js = 0; js < V3_BK / 16; js++) {
            uint32_t pa[4];
            pa[0] = v3_pack(sacc[2 * js][0], sacc[2 * js][1]);
            pa[1] = v3_pack(sacc[2 * js][2], sacc[2 * js][3]);
            pa[2] = v3_pack(sacc[2 * js + 1][0], sacc[2 * js + 1][1]);
            pa[3] = v3_pack(sacc[2 * js + 1][2], sacc[2 * js + 1][3]);
#pragma unroll
            for (int d = 0; d < DT; d += 2) {
                uint32_t bb[4];
                ldmatrix_x4_trans(bb, vt + (js * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + (d + (lane >> 4)) * 8);
                mma16816(o[d], pa, bb[0], bb[1]);
                mma16816(o[d + 1], pa, bb[2], bb[3]);
            }
        }
    }
    cp_async_wait<0>();
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
        bf16* orow = out + (((int64_t)bi * tq + i) * nh + h) * HD;
        const bool valid = i < len;  // ragged padding rows: zeros
        const float inv = valid ? 1.f / l[rh] : 0.f;
#pragma unroll
        for (int d = 0; d < DT; d++)
            *reinterpret_cast<__nv_bfloat162*>(orow + d * 8 + 2 * c) = __floats2bfloat162_rn(o[d][2 * rh] * inv, o[d][2 * rh + 1] * inv);
        if (c == 0) lse[((int64_t)bi * nh + h) * tq + i] = valid ? (m[rh] + log2f(l[rh])) * LN2 : 0.f;
    }
}

// ---------------------------------------------------------------------------
// backward: a block of 4 warps owns 64 keys of one KV head (16 per warp, K
// and V in shared memory, dK and dV in registers) and walks, for every query
// head of its group, the query tiles of 32 rows at or after its first key,
// their Q and dO rows streamed by cp.async two stages deep. Per step:
//   Sᵀ = K Qᵀ, dPᵀ = V dOᵀ (16 keys x 32 queries per warp),
//   Pᵀ = exp2(Sᵀ·scale·log2e − lse·log2e), dSᵀ = Pᵀ ⊙ (dPᵀ − delta),
//   dV += Pᵀ dO, dK += dSᵀ Q (dO and Q by ldmatrix.trans),
//   dSᵀ to shared memory, dQ (32 x HD) = dS K split over the 4 warps, added
//   to dq_acc in key-tile order (see the header).
// sync: [0] the ticket counter, [1 + (bi·nh + h)·n_qt + i] the counter of
// query tile i of (bi, h); all zero before the launch, as dq_acc.
// Ragged (rlen): query rows and keys at or past len are neither read nor
// seen; their dq_acc rows stay 0, their dk, dv rows are written as 0.
template <int HD>
__device__ __forceinline__ void attn_bwd_v3(bf16* dk, bf16* dv, float* dqa, int* sync, const bf16* dout, const bf16* q, const bf16* k,
                                            const bf16* v, const float* lse, const float* delta, const int* rlen, int b, int t, int nh,
                                            int nkv) {
    using C = V3Bwd<HD>;
    constexpr int LD = C::LD, LDS = C::LDS;
    constexpr int BQ = V3_BWD_BQ, BK = V3_BWD_BK;
    constexpr int KT = HD / 16;  // k-steps of Sᵀ = K Qᵀ
    constexpr int NT = BQ / 8;   // 8-query tiles of Sᵀ
    constexpr int DT = HD / 8;   // 8-dim tiles of dK, dV
    constexpr int QDT = DT / 2;  // 8-dim tiles of a warp's dQ slab (half the dims)
    SMEM_DYNAMIC(bf16, sm);
    bf16* ks = sm;
    bf16* vs = ks + BK * LD;
    bf16* qs = vs + BK * LD;      // 2 stages of BQ rows
    bf16* os = qs + 2 * BQ * LD;  // 2 stages of BQ rows
    bf16* dss = os + 2 * BQ * LD; // dSᵀ: BK rows of BQ
    float* lse2s = reinterpret_cast<float*>(dss + BK * LDS);  // 2 stages of BQ
    float* dls = lse2s + 2 * BQ;
    int* ticket_s = reinterpret_cast<int*>(dls + 2 * BQ);
    const int tid = threadIdx.x, warp = tid / WARP, lane = tid % WARP;
    const int g = lane / 4, c = lane % 4;
    if (tid == 0) *ticket_s = atomicAdd(sync, 1);
    __syncthreads();
    const int ticket = *ticket_s;
    const int per = nkv * b;
    const int jt = ticket / per, kvh = (ticket % per) % nkv, bi = (ticket % per) / nkv;
    const int n_qt = (t + BQ - 1) / BQ;
    const int len = rlen != nullptr ? rlen[bi] : t;
    const int k0 = jt * BK, group = nh / nkv;
    const float scale = 1.f / sqrtf((float)HD);
    const float sl2 = scale * LOG2E;
    const int64_t q_rs = (int64_t)nh * HD, kv_rs = (int64_t)nkv * HD;
    const bf16* kb = k + ((int64_t)bi * t * nkv + kvh) * HD;
    const bf16* vb = v + ((int64_t)bi * t * nkv + kvh) * HD;
    const int i_first = k0 / BQ;                                // query tiles before it see none of these keys
    const int n_i = max(0, (len + BQ - 1) / BQ - i_first);      // query tiles with valid rows
    const int nsteps = group * n_i;
    // one step = (query head, query tile): rows, lse·log2e and delta into stage st
    auto issue = [&](int s, int st) {
        const int h = kvh * group + s / n_i, i0 = (i_first + s % n_i) * BQ;
        const int64_t hb = ((int64_t)bi * t * nh + h) * HD;
        v3_load_rows<HD, BQ>(qs + st * BQ * LD, q + hb, q_rs, i0, len, tid, blockDim.x);
        v3_load_rows<HD, BQ>(os + st * BQ * LD, dout + hb, q_rs, i0, len, tid, blockDim.x);
        if (tid < BQ) {
            const int i = i0 + tid;
            const int64_t sidx = ((int64_t)bi * nh + h) * t + i;
            lse2s[st * BQ + tid] = i < len ? lse[sidx] * LOG2E : 0.f;
            dls[st * BQ + tid] = i < len ? delta[sidx] : 0.f;
        }
    };
    v3_load_rows<HD, BK>(ks, kb, kv_rs, k0, len, tid, blockDim.x);
    v3_load_rows<HD, BK>(vs, vb, kv_rs, k0, len, tid, blockDim.x);
    if (nsteps > 0) issue(0, 0);
    cp_async_commit();
    float dka[DT][4], dva[DT][4];
#pragma unroll
    for (int d = 0; d < DT; d++)
#pragma unroll
        for (int e = 0; e < 4; e++) dka[d][e] = dva[d][e] = 0.f;
    const int kw = k0 + warp * 16;  // this warp's first key
    const int qr = (warp & 1) * 16, dc = (warp >> 1) * (HD / 2);  // this warp's dQ slab
    for (int s = 0; s < nsteps; s++) {
        const int st = s & 1;
        const int h = kvh * group + s / n_i, it = i_first + s % n_i, i0 = it * BQ;
        cp_async_wait<0>();  // this step's rows (and, at s = 0, K and V) have landed ...
        __syncthreads();     // ... for all; every warp is done with the other stage and with dSᵀ
        if (s + 1 < nsteps) issue(s + 1, st ^ 1);
        cp_async_commit();
        const bf16* qt = qs + st * BQ * LD;
        const bf16* ot = os + st * BQ * LD;
        const float* l2 = lse2s + st * BQ;
        const float* dl = dls + st * BQ;
        if (kw < len && i0 + BQ - 1 >= kw) {  // warp-uniform: some query of the tile sees a key of the warp
            float sacc[NT][4], pacc[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) sacc[nt][e] = pacc[nt][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KT; kk++) {
                uint32_t ka[4], va[4];
                const int arow = (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8;
                ldmatrix_x4(ka, ks + arow);
                ldmatrix_x4(va, vs + arow);
#pragma unroll
                for (int np = 0; np < NT; np += 2) {
                    uint32_t bq[4], bo[4];
                    const int brow = (np * 8 + (lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 + ((lane >> 3) & 1) * 8;
                    ldmatrix_x4(bq, qt + brow);
                    ldmatrix_x4(bo, ot + brow);
                    mma16816(sacc[np], ka, bq[0], bq[1]);
                    mma16816(sacc[np + 1], ka, bq[2], bq[3]);
                    mma16816(pacc[np], va, bo[0], bo[1]);
                    mma16816(pacc[np + 1], va, bo[2], bo[3]);
                }
            }
            // Pᵀ and dSᵀ; row = key, column = query
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = kw + g + 8 * (e >> 1);
                    const int qi = nt * 8 + 2 * c + (e & 1);
                    const int i = i0 + qi;
                    const bool vis = i < len && key <= i;
                    const float p = vis ? exp2f(sacc[nt][e] * sl2 - l2[qi]) : 0.f;
                    sacc[nt][e] = p;
                    pacc[nt][e] = p * (pacc[nt][e] - dl[qi]);
                }
            }
            // dV += Pᵀ dO, dK += dSᵀ Q over 16-query slices
#pragma unroll
            for (int kq = 0; kq < BQ / 16; kq++) {
                uint32_t pa[4], sa[4];
                pa[0] = v3_pack(sacc[2 * kq][0], sacc[2 * kq][1]);
                pa[1] = v3_pack(sacc[2 * kq][2], sacc[2 * kq][3]);
                pa[2] = v3_pack(sacc[2 * kq + 1][0], sacc[2 * kq + 1][1]);
                pa[3] = v3_pack(sacc[2 * kq + 1][2], sacc[2 * kq + 1][3]);
                sa[0] = v3_pack(pacc[2 * kq][0], pacc[2 * kq][1]);
                sa[1] = v3_pack(pacc[2 * kq][2], pacc[2 * kq][3]);
                sa[2] = v3_pack(pacc[2 * kq + 1][0], pacc[2 * kq + 1][1]);
                sa[3] = v3_pack(pacc[2 * kq + 1][2], pacc[2 * kq + 1][3]);
#pragma unroll
                for (int d = 0; d < DT; d += 2) {
                    uint32_t bo[4], bq[4];
                    const int trow = (kq * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + (d + (lane >> 4)) * 8;
                    ldmatrix_x4_trans(bo, ot + trow);
                    ldmatrix_x4_trans(bq, qt + trow);
                    mma16816(dva[d], pa, bo[0], bo[1]);
                    mma16816(dva[d + 1], pa, bo[2], bo[3]);
                    mma16816(dka[d], sa, bq[0], bq[1]);
                    mma16816(dka[d + 1], sa, bq[2], bq[3]);
                }
            }
            // dSᵀ (bf16, as the mma operand it becomes) for dQ
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int rh = 0; rh < 2; rh++)
                    *reinterpret_cast<uint32_t*>(dss + (warp * 16 + g + 8 * rh) * LDS + nt * 8 + 2 * c) =
                        v3_pack(pacc[nt][2 * rh], pacc[nt][2 * rh + 1]);
        } else {
            // no query of the tile sees these keys: their dSᵀ rows are 0
            for (int x = lane; x < 16 * (BQ / 8); x += WARP)
                *reinterpret_cast<uint4*>(dss + (warp * 16 + x / (BQ / 8)) * LDS + (x % (BQ / 8)) * 8) = make_uint4(0, 0, 0, 0);
        }
        __syncthreads();  // dSᵀ is complete
        // dQ slab (16 queries x HD/2) = dS (16 x 64 keys) K (64 x HD/2); dS by ldmatrix.trans of dSᵀ
        float qacc[QDT][4];
#pragma unroll
        for (int d = 0; d < QDT; d++) qacc[d][0] = qacc[d][1] = qacc[d][2] = qacc[d][3] = 0.f;
#pragma unroll
        for (int kb16 = 0; kb16 < BK / 16; kb16++) {
            uint32_t a[4];
            ldmatrix_x4_trans(a, dss + (kb16 * 16 + (lane >> 4) * 8 + (lane & 7)) * LDS + qr + ((lane >> 3) & 1) * 8);
#pragma unroll
            for (int d = 0; d < QDT; d += 2) {
                uint32_t bk[4];
                ldmatrix_x4_trans(bk, ks + (kb16 * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + dc + (d + (lane >> 4)) * 8);
                mma16816(qacc[d], a, bk[0], bk[1]);
                mma16816(qacc[d + 1], a, bk[2], bk[3]);
            }
        }
        // add to dq_acc after the block of the previous key tile (no atomics: a fixed order)
        int* sem = sync + 1 + ((int64_t)bi * nh + h) * n_qt + it;
        if (tid == 0) {
            while (atomicAdd(sem, 0) != jt) __nanosleep(64);
            __threadfence();
        }
        __syncthreads();
#pragma unroll
        for (int rh = 0; rh < 2; rh++) {
            const int i = i0 + qr + g + 8 * rh;
            if (i >= len) continue;  // padding (or past t): nothing to add
            float* row = dqa + (((int64_t)bi * t + i) * nh + h) * HD + dc + 2 * c;
#pragma unroll
            for (int d = 0; d < QDT; d++) {
                float2 x = __ldcg(reinterpret_cast<const float2*>(row + d * 8));
                x.x += qacc[d][2 * rh];
                x.y += qacc[d][2 * rh + 1];
                __stcg(reinterpret_cast<float2*>(row + d * 8), x);
            }
        }
        __threadfence();  // the adds are visible device-wide before the counter moves on
        __syncthreads();
        if (tid == 0) atomicExch(sem, jt + 1);
    }
    cp_async_wait<0>();
#pragma unroll
    for (int rh = 0; rh < 2; rh++) {
        const int key = kw + g + 8 * rh;
        if (key >= t) continue;
        const int64_t o = (((int64_t)bi * t + key) * nkv + kvh) * HD;
#pragma unroll
        for (int d = 0; d < DT; d++) {
            *reinterpret_cast<__nv_bfloat162*>(dk + o + d * 8 + 2 * c) = __floats2bfloat162_rn(dka[d][2 * rh] * scale, dka[d][2 * rh + 1] * scale);
            *reinterpret_cast<__nv_bfloat162*>(dv + o + d * 8 + 2 * c) = __floats2bfloat162_rn(dva[d][2 * rh], dva[d][2 * rh + 1]);
        }
    }
}

// dq = bf16(dq_acc · scale), 8 elements a thread-trip (n a multiple of 8, 16-byte aligned)
extern "C" __global__ void __launch_bounds__(V3_DQ_THREADS) attention_bwd_v3_dq_bf16(bf16* dq, const float* dqa, int64_t n, float scale) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x * 8;
    for (int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8; i < n; i += stride) {
        const float4 a = *reinterpret_cast<const float4*>(dqa + i);
        const float4 b = *reinterpret_cast<const float4*>(dqa + i + 4);
        Pack8 w;
        w.v[0] = to_bf(a.x * scale);
        w.v[1] = to_bf(a.y * scale);
        w.v[2] = to_bf(a.z * scale);
        w.v[3] = to_bf(a.w * scale);
        w.v[4] = to_bf(b.x * scale);
        w.v[5] = to_bf(b.y * scale);
        w.v[6] = to_bf(b.z * scale);
        w.v[7] = to_bf(b.w * scale);
        stv(dq + i, w);
    }
}

#define DEFINE_ATTN_V3(HD)                                                                                                         \
    extern "C" __global__ void __launch_bounds__(V3_FWD_WARPS * WARP, 1) attention_fwd_v3_d##HD##_bf16(                           \
        bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int b, int tq, int tkv, int cap, int nh, int nkv) {  \
        attn_fwd_v3<HD>(out, lse, q, k, v, b, tq, tkv, cap, nh, nkv, nullptr, nullptr);                                          \
    }                                                                                                                              \
    extern "C" __global__ void __launch_bounds__(V3_FWD_WARPS * WARP, 1) attention_fwd_v3_ragged_d##HD##_bf16(                    \
        bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int* rpos0, const int* rlen, int b, int tq,     \
        int cap, int nh, int nkv) {                                                                                                \
        attn_fwd_v3<HD>(out, lse, q, k, v, b, tq, cap, cap, nh, nkv, rpos0, rlen);                                                \
    }                                                                                                                              \
    extern "C" __global__ void __launch_bounds__(V3_BWD_WARPS * WARP) attention_bwd_v3_d##HD##_bf16(                              \
        bf16* dk, bf16* dv, float* dqa, int* sync, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse, \
        const float* delta, int b, int t, int nh, int nkv) {                                                                       \
        attn_bwd_v3<HD>(dk, dv, dqa, sync, dout, q, k, v, lse, delta, nullptr, b, t, nh, nkv);                                    \
    }                                                                                                                              \
    extern "C" __global__ void __launch_bounds__(V3_BWD_WARPS * WARP) attention_bwd_v3_ragged_d##HD##_bf16(                       \
        bf16* dk, bf16* dv, float* dqa, int* sync, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse, \
        const float* delta, const int* rlen, int b, int t, int nh, int nkv) {                                                      \
        attn_bwd_v3<HD>(dk, dv, dqa, sync, dout, q, k, v, lse, delta, rlen, b, t, nh, nkv);                                       \
    }

DEFINE_ATTN_V3(64)
DEFINE_ATTN_V3(128)
