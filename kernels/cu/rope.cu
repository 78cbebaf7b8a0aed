// rope.cu: rotary position embedding, in place, transformers' rotate-half
// convention (element i < hd/2 pairs with i + hd/2).
// Reference: kernels/src/rope.rs (rope_fwd_cpu, rope_bwd_cpu).
//
//   rope_fwd_bf16   x (b, t, heads, hd): y1 = x1·cos − x2·sin, y2 = x2·cos + x1·sin
//   rope_bwd_bf16   dx = Rᵀ dy (rotation by −angle), in place on the gradient
//   rope_{fwd,bwd}_ragged_bf16   the same on a ragged batch: row t of sequence
//                   bi at position rpos0[bi] + t; rows t >= rlen[bi] (padding)
//                   untouched
//   qkv_split_rope_bf16   the epilogue of the fused QKV product (issue 17's fused
//                   step): from qkv (b·t, (n_head + 2·n_kv_head)·hd), rows of
//                   [q heads | k heads | v heads] as one GEMM against the stacked
//                   [Wq; Wk; Wv] writes them, q (b, t, n_head, hd) and k (b, t,
//                   n_kv_head, hd) rotated as rope_fwd_bf16, v (b, t, n_kv_head,
//                   hd) copied (all =). Reference: the unfused composition
//                   (Backend::qkv_fwd's default: three products, rope_fwd on q, k).
//   qkv_rope_bwd_pack_bf16   the prologue of the fused QKV backward: from dq, dk
//                   (gradients of the rotated q, k) and dv, writes the packed
//                   dqkv (b·t, (n_head + 2·n_kv_head)·hd) rows [dq' | dk' | dv]
//                   with dq', dk' rotated back as rope_bwd_bf16 (=), the left
//                   operand of the one dx and the one dW product.
//   qkv_{split_rope,rope_bwd_pack}_ragged_bf16   the same on a ragged batch;
//                   padding rows are copied un-rotated (as the unfused path,
//                   whose products write them and whose ragged RoPE leaves them)
//
// table (max_t, hd/2, 2) f32 holds (cos, sin) per position and pair, built
// on the host by rope_table exactly as transformers builds it. Row t of x has
// position pos0 + t. One thread per pair; f32 arithmetic, bf16 stored once.
// The split/pack kernels take 8 pairs per thread (two 16-byte words from each
// half of a head, four of the table) when hd % 16 == 0 and every pointer is
// 16-byte aligned, one pair otherwise; the rotation is the same function
// (rotate_pair) as the in-place kernels', so they round the same values.
#include "common.cuh"

// One pair (a, b) = (x[i], x[i + hd/2]) rotated by the angle with cosine c
// and sine s (INVERSE: by its negative).
template <bool INVERSE>
__device__ __forceinline__ void rotate_pair(float a, float b, float c, float s, bf16& y1, bf16& y2) {
    if (INVERSE) {
        y1 = to_bf(a * c + b * s);
        y2 = to_bf(b * c - a * s);
    } else {
        y1 = to_bf(a * c - b * s);
        y2 = to_bf(b * c + a * s);
    }
}

template <bool INVERSE>
__device__ __forceinline__ void rope(bf16* x, const float* table, int b, int t, int heads, int hd, int pos0,
                                     const int* rpos0, const int* rlen) {
    const int half = hd / 2;
    const int64_t total = (int64_t)b * t * heads * half;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += stride) {
        const int pair = (int)(i % half);
        const int64_t rest = i / half;  // (bt, head)
        const int64_t bt = rest / heads;
        const int row = (int)(bt % t);
        int pos = pos0 + row;
        if (rlen != nullptr) {  // ragged: per-sequence position, padding untouched
            const int bi = (int)(bt / t);
            if (row >= rlen[bi]) continue;
            pos = rpos0[bi] + row;
        }
        const float c = table[((int64_t)pos * half + pair) * 2];
        const float s = table[((int64_t)pos * half + pair) * 2 + 1];
        bf16* h = x + rest * hd;
        rotate_pair<INVERSE>(to_f(h[pair]), to_f(h[pair + half]), c, s, h[pair], h[pair + half]);
    }
}

extern "C" __global__ void rope_fwd_bf16(bf16* x, const float* table, int b, int t, int heads, int hd, int pos0) {
    rope<false>(x, table, b, t, heads, hd, pos0, nullptr, nullptr);
}
extern "C" __global__ void rope_bwd_bf16(bf16* dx, const float* table, int b, int t, int heads, int hd, int pos0) {
    rope<true>(dx, table, b, t, heads, hd, pos0, nullptr, nullptr);
}
extern "C" __global__ void rope_fwd_ragged_bf16(bf16* x, const float* table, const int* rpos0, const int* rlen, int b,
                                                int t, int heads, int hd) {
    rope<false>(x, table, b, t, heads, hd, 0, rpos0, rlen);
}
extern "C" __global__ void rope_bwd_ragged_bf16(bf16* dx, const float* table, const int* rpos0, const int* rlen, int b,
                                                int t, int heads, int hd) {
    rope<true>(dx, table, b, t, heads, hd, 0, rpos0, rlen);
}

// G pairs (i, i + half), i = 0..G from `src` (x1 at src, x2 at src + half) to
// `dst`, rotated with the table entries cs = (cos, sin) × G when `rot`, else
// copied. G = 8: 16-byte words (src, dst, cs 16-byte aligned, the caller's
// check).
template <int G, bool INVERSE>
__device__ __forceinline__ void rotate_or_copy(bf16* dst, const bf16* src, int half, const float* cs, bool rot) {
    if (G == 8) {
        Pack8 x1 = ldv(src), x2 = ldv(src + half);
        if (rot) {
            V16<float> t[4];
#pragma unroll
            for (int j = 0; j < 4; j++) t[j] = ldv(cs + 4 * j);
            Pack8 y1, y2;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                const float c = t[e / 2].v[(e % 2) * 2], s = t[e / 2].v[(e % 2) * 2 + 1];
                rotate_pair<INVERSE>(to_f(x1.v[e]), to_f(x2.v[e]), c, s, y1.v[e], y2.v[e]);
            }
            x1 = y1;
            x2 = y2;
        }
        stv(dst, x1);
        stv(dst + half, x2);
    } else {
#pragma unroll
        for (int e = 0; e < G; e++) {
            const bf16 a = src[e], b = src[e + half];
            if (rot) {
                rotate_pair<INVERSE>(to_f(a), to_f(b), cs[2 * e], cs[2 * e + 1], dst[e], dst[e + half]);
            } else {
                dst[e] = a;
                dst[e + half] = b;
            }
        }
    }
}

// The split (PACK = false: packed → q, k, v) or the pack (PACK = true: q, k,
// v → packed; the gradients dq, dk, dv) of a fused QKV product, rotating the
// q and k heads (INVERSE: back). A packed row holds n_head + 2·n_kv_head
// heads of hd: q's, k's, v's. One item: G pairs of one head of one row.
template <int G, bool INVERSE, bool PACK>
__device__ __forceinline__ void qkv_rope_items(bf16* packed, bf16* q, bf16* k, bf16* v, const float* table, int b,
                                               int t, int nh, int nkv, int hd, int pos0, const int* rpos0,
                                               const int* rlen) {
    const int half = hd / 2, per_head = half / G, heads = nh + 2 * nkv;
    const int64_t total = (int64_t)b * t * heads * per_head;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += stride) {
        const int pair = (int)(i % per_head) * G;
        const int64_t rest = i / per_head;  // (row, head)
        const int head = (int)(rest % heads);
        const int64_t row = rest / heads;
        const int ti = (int)(row % t);
        bool rot = head < nh + nkv;  // q and k heads; v heads are copied
        int pos = pos0 + ti;
        if (rlen != nullptr) {
            const int bi = (int)(row / t);
            if (ti >= rlen[bi]) {
                rot = false;  // padding: copied as it is
            } else {
                pos = rpos0[bi] + ti;
            }
        }
        bf16* sep = head < nh         ? q + (row * nh + head) * hd
                    : head < nh + nkv ? k + (row * nkv + (head - nh)) * hd
                                      : v + (row * nkv + (head - nh - nkv)) * hd;
        bf16* pk = packed + rest * hd;  // rest = row·heads + head
        const float* cs = table + ((int64_t)pos * half + pair) * 2;  // read only when rot
        if (PACK) {
            rotate_or_copy<G, INVERSE>(pk + pair, sep + pair, half, cs, rot);
        } else {
            rotate_or_copy<G, INVERSE>(sep + pair, pk + pair, half, cs, rot);
        }
    }
}

template <bool INVERSE, bool PACK>
__device__ __forceinline__ void qkv_rope(bf16* packed, bf16* q, bf16* k, bf16* v, const float* table, int b, int t,
                                         int nh, int nkv, int hd, int pos0, const int* rpos0, const int* rlen) {
    // uniform over the grid: every thread takes the same path
    if (hd % 16 == 0 && aligned16(packed) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(table)) {
        qkv_rope_items<8, INVERSE, PACK>(packed, q, k, v, table, b, t, nh, nkv, hd, pos0, rpos0, rlen);
    } else {
        qkv_rope_items<1, INVERSE, PACK>(packed, q, k, v, table, b, t, nh, nkv, hd, pos0, rpos0, rlen);
    }
}

extern "C" __global__ void qkv_split_rope_bf16(bf16* q, bf16* k, bf16* v, const bf16* qkv, const float* table, int b,
                                               int t, int nh, int nkv, int hd, int pos0) {
    qkv_rope<false, false>(const_cast<bf16*>(qkv), q, k, v, table, b, t, nh, nkv, hd, pos0, nullptr, nullptr);
}
extern "C" __global__ void qkv_split_rope_ragged_bf16(bf16* q, bf16* k, bf16* v, const bf16* qkv, const float* table,
                                                      const int* rpos0, const int* rlen, int b, int t, int nh, int nkv,
                                                      int hd) {
    qkv_rope<false, false>(const_cast<bf16*>(qkv), q, k, v, table, b, t, nh, nkv, hd, 0, rpos0, rlen);
}
extern "C" __global__ void qkv_rope_bwd_pack_bf16(bf16* dqkv, const bf16* dq, const bf16* dk, const bf16* dv,
                                                  const float* table, int b, int t, int nh, int nkv, int hd, int pos0) {
    qkv_rope<true, true>(dqkv, const_cast<bf16*>(dq), const_cast<bf16*>(dk), const_cast<bf16*>(dv), table, b, t, nh, nkv,
                         hd, pos0, nullptr, nullptr);
}
extern "C" __global__ void qkv_rope_bwd_pack_ragged_bf16(bf16* dqkv, const bf16* dq, const bf16* dk, const bf16* dv,
                                                         const float* table, const int* rpos0, const int* rlen, int b,
                                                         int t, int nh, int nkv, int hd) {
    qkv_rope<true, true>(dqkv, const_cast<bf16*>(dq), const_cast<bf16*>(dk), const_cast<bf16*>(dv), table, b, t, nh, nkv,
                         hd, 0, rpos0, rlen);
}
