// cross_entropy.cu: fused softmax + cross-entropy over the vocabulary, the
// loss and (optionally) dlogits written over the logits, as llm.c's
// fused_classifier. Reference: kernels/src/cross_entropy.rs (cross_entropy_cpu).
//
//   cross_entropy_fwd_bwd_bf16   losses (n) = logsumexp(x) − x[y]  (=, f32)
//                                mode 0: logits untouched
//                                mode 1: logits = scale   · (softmax − onehot(y))
//                                mode 2: logits = coef[i] · (softmax − onehot(y))
//   Rows with y < 0 (ignore index) get loss 0 and, in modes 1/2, dlogits 0.
//   cross_entropy_fwd_bwd_ent_bf16   the same, and entropy (n) f32 (=) of each
//                                row's softmax (0 on ignored rows), from the
//                                same pass: with m the max, S0 = Σ e^(x−m),
//                                S1 = Σ e^(x−m)(x−m), H = log S0 − S1/S0 (the
//                                online update rescales S1 with the max as S0).
//
// One block per row. Pass 1 reads the row once with an online max/sum per
// thread (Milakov & Gimelshein 2018), merged over the block; pass 2 (modes
// 1/2) reads it again (from L2 for Llama rows of 64 KB) and writes dlogits.
// expf/logf are the accurate ones. 16-byte accesses when the row is 16-byte
// aligned and v % 8 == 0, scalar otherwise.
#include "common.cuh"

#define CE_THREADS 512

__device__ __forceinline__ void online_add(float& m, float& s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.f;  // m = -inf at first: expf(-inf) = 0
        m = x;
    } else {
        s += expf(x - m);
    }
}

// The online (max, S0, S1) update: S1 = Σ e^(x−m) (x−m) follows a new max
// m' as S1' = e^(m−m') (S1 + (m − m') S0).
__device__ __forceinline__ void online_add_ent(float& m, float& s0, float& s1, float x) {
    if (m == -INFINITY) {
        m = x;
        s0 = 1.f;
        s1 = 0.f;
    } else if (x > m) {
        const float f = expf(m - x);
        s1 = f * (s1 + (m - x) * s0);
        s0 = s0 * f + 1.f;
        m = x;
    } else {
        const float e = expf(x - m);
        s0 += e;
        s1 += e * (x - m);
    }
}

template <bool ENT>
__device__ __forceinline__ void ce_row(bf16* logits, float* losses, float* entropy, const int32_t* targets,
                                       const float* coef, float scale, int mode, int n, int v) {
    __shared__ float sh[32];
    const int row = blockIdx.x;
    if (row >= n) return;  // uniform over the block
    bf16* x = logits + (int64_t)row * v;
    const int y = targets[row];
    if (y < 0) {
        if (threadIdx.x == 0) {
            losses[row] = 0.f;
            if (ENT) entropy[row] = 0.f;
        }
        if (mode != 0)
            for (int j = threadIdx.x; j < v; j += blockDim.x) x[j] = to_bf(0.f);
        return;
    }
    const bool vec = aligned16(x) && (v % 8 == 0);
    float m = -INFINITY, s = 0.f, s1 = 0.f;
    if (vec) {
        for (int j = threadIdx.x * 8; j < v; j += blockDim.x * 8) {
            Pack8 w = ldv(x + j);
#pragma unroll
            for (int e = 0; e < 8; e++) {
                if (ENT)
                    online_add_ent(m, s, s1, to_f(w.v[e]));
                else
                    online_add(m, s, to_f(w.v[e]));
            }
        }
    } else {
        for (int j = threadIdx.x; j < v; j += blockDim.x) {
            if (ENT)
                online_add_ent(m, s, s1, to_f(x[j]));
            else
                online_add(m, s, to_f(x[j]));
        }
    }
    const float bm = block_max(m, sh);
    const float f = m == -INFINITY ? 0.f : expf(m - bm);
    const float bs = block_sum(m == -INFINITY ? 0.f : s * f, sh);
    const float lse = bm + logf(bs);
    if (ENT) {
        const float b1 = block_sum(m == -INFINITY ? 0.f : f * (s1 + (m - bm) * s), sh);
        if (threadIdx.x == 0) entropy[row] = logf(bs) - b1 / bs;
    }
    const float xy = to_f(x[y]);
    if (threadIdx.x == 0) losses[row] = lse - xy;
    if (mode == 0) return;
    const float cf = mode == 1 ? scale : coef[row];
    __syncthreads();  // every thread has read x[y] before it is overwritten
    if (vec) {
        for (int j = threadIdx.x * 8; j < v; j += blockDim.x * 8) {
            Pack8 w = ldv(x + j), d;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                const float g = cf * expf(to_f(w.v[e]) - lse) - (j + e == y ? cf : 0.f);
                d.v[e] = to_bf(g);
            }
            stv(x + j, d);
        }
    } else {
        for (int j = threadIdx.x; j < v; j += blockDim.x) {
            const float g = cf * expf(to_f(x[j]) - lse) - (j == y ? cf : 0.f);
            x[j] = to_bf(g);
        }
    }
}

extern "C" __global__ void __launch_bounds__(CE_THREADS)
cross_entropy_fwd_bwd_bf16(bf16* logits, float* losses, const int32_t* targets, const float* coef, float scale,
                           int mode, int n, int v) {
    ce_row<false>(logits, losses, nullptr, targets, coef, scale, mode, n, v);
}

extern "C" __global__ void __launch_bounds__(CE_THREADS)
cross_entropy_fwd_bwd_ent_bf16(bf16* logits, float* losses, float* entropy, const int32_t* targets, const float* coef,
                               float scale, int mode, int n, int v) {
    ce_row<true>(logits, losses, entropy, targets, coef, scale, mode, n, v);
}
