// rope.cu: rotary position embedding, in place, transformers' rotate-half
// convention (element i < hd/2 pairs with i + hd/2).
// Reference: kernels/src/rope.rs (rope_fwd_cpu, rope_bwd_cpu).
//
//   rope_fwd_bf16   x (b, t, heads, hd): y1 = x1·cos − x2·sin, y2 = x2·cos + x1·sin
//   rope_bwd_bf16   dx = Rᵀ dy (rotation by −angle), in place on the gradient
//   rope_{fwd,bwd}_ragged_bf16   the same on a ragged batch: row t of sequence
//                   bi at position rpos0[bi] + t; rows t >= rlen[bi] (padding)
//                   untouched
//
// table (max_t, hd/2, 2) f32 holds (cos, sin) per position and pair, built
// on the host by rope_table exactly as transformers builds it. Row t of x has
// position pos0 + t. One thread per pair; f32 arithmetic, bf16 stored once.
#include "common.cuh"

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
        const float a = to_f(h[pair]), bb = to_f(h[pair + half]);
        if (INVERSE) {
            h[pair] = to_bf(a * c + bb * s);
            h[pair + half] = to_bf(bb * c - a * s);
        } else {
            h[pair] = to_bf(a * c - bb * s);
            h[pair + half] = to_bf(bb * c + a * s);
        }
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
