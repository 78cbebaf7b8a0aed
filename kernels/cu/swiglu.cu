// swiglu.cu: SwiGLU activation of the Llama MLP, h = silu(gate) ⊙ up.
// Reference: kernels/src/swiglu.rs (swiglu_fwd_cpu, swiglu_bwd_cpu).
//
//   swiglu_fwd_bf16   out = g·σ(g)·u                                  (=)
//   swiglu_bwd_bf16   dgate = dh·u·σ(g)·(1 + g·(1 − σ(g))), dup = dh·silu(g)  (=, both)
//   swiglu_split_fwd_bf16   the epilogue of the fused gate/up product (issue 17's fused
//                     step): from gu (n, 2i), rows [gate (i) | up (i)] as one GEMM
//                     against the stacked [Wgate; Wup] writes them, gate and up (n, i)
//                     copied and h (n, i) = silu(gate)·up (all =), h with
//                     swiglu_fwd_bf16's arithmetic (the same function), so it equals
//                     that kernel's output on the same gate and up bit for bit
//   swiglu_bwd_pack_bf16    the prologue of the fused backward: from dh, gate, up (n, i)
//                     writes dgu (n, 2i), rows [dgate | dup] (=), with swiglu_bwd_bf16's
//                     arithmetic: the left operand of the one dx and the one dW product
//   Reference of both: the unfused composition (Backend::mlp_in_fwd/_bwd's defaults).
//
// σ uses __expf on purpose (≤ 2 ulp plus range effects far below bf16
// resolution; σ saturates correctly: __expf(+large) = inf gives σ = 0).
// 16-byte accesses when every pointer is 16-byte aligned (the split/pack
// kernels: and i % 8 == 0), scalar otherwise.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + __expf(-x)); }
__device__ __forceinline__ float swiglu1(float g, float u) { return g * sigmoidf_(g) * u; }

extern "C" __global__ void swiglu_fwd_bf16(bf16* out, const bf16* gate, const bf16* up, int64_t n) {
    const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t done = 0;
    if (aligned16(out) && aligned16(gate) && aligned16(up)) {
        const int64_t nv = n / 8;
        for (int64_t i = tid; i < nv; i += stride) {
            Pack8 g = ldv(gate + i * 8), u = ldv(up + i * 8), o;
#pragma unroll
            for (int e = 0; e < 8; e++) o.v[e] = to_bf(swiglu1(to_f(g.v[e]), to_f(u.v[e])));
            stv(out + i * 8, o);
        }
        done = nv * 8;
    }
    for (int64_t i = done + tid; i < n; i += stride) out[i] = to_bf(swiglu1(to_f(gate[i]), to_f(up[i])));
}

__device__ __forceinline__ void swiglu_bwd1(float dh, float g, float u, float& dg, float& du) {
    const float s = sigmoidf_(g);
    dg = dh * u * s * (1.f + g * (1.f - s));
    du = dh * (g * s);
}

extern "C" __global__ void swiglu_bwd_bf16(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up,
                                           int64_t n) {
    const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t done = 0;
    if (aligned16(dgate) && aligned16(dup) && aligned16(dout) && aligned16(gate) && aligned16(up)) {
        const int64_t nv = n / 8;
        for (int64_t i = tid; i < nv; i += stride) {
            Pack8 dh = ldv(dout + i * 8), g = ldv(gate + i * 8), u = ldv(up + i * 8), dg, du;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                float a, b;
                swiglu_bwd1(to_f(dh.v[e]), to_f(g.v[e]), to_f(u.v[e]), a, b);
                dg.v[e] = to_bf(a);
                du.v[e] = to_bf(b);
            }
            stv(dgate + i * 8, dg);
            stv(dup + i * 8, du);
        }
        done = nv * 8;
    }
    for (int64_t i = done + tid; i < n; i += stride) {
        float a, b;
        swiglu_bwd1(to_f(dout[i]), to_f(gate[i]), to_f(up[i]), a, b);
        dgate[i] = to_bf(a);
        dup[i] = to_bf(b);
    }
}

// One item: G columns of one row (G = 8: 16-byte words, when i % 8 == 0 and
// every pointer is 16-byte aligned; else 1). The packed row is [gate | up].
template <int G>
__device__ __forceinline__ void swiglu_split_items(bf16* gate, bf16* up, bf16* h, const bf16* gu, int n, int i) {
    const int per_row = i / G;
    const int64_t total = (int64_t)n * per_row;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < total; j += stride) {
        const int64_t row = j / per_row;
        const int col = (int)(j % per_row) * G;
        const bf16* src = gu + row * 2 * i + col;
        const int64_t o = row * i + col;
        if (G == 8) {
            Pack8 g = ldv(src), u = ldv(src + i), y;
#pragma unroll
            for (int e = 0; e < 8; e++) y.v[e] = to_bf(swiglu1(to_f(g.v[e]), to_f(u.v[e])));
            stv(gate + o, g);
            stv(up + o, u);
            stv(h + o, y);
        } else {
            const bf16 g = src[0], u = src[i];
            gate[o] = g;
            up[o] = u;
            h[o] = to_bf(swiglu1(to_f(g), to_f(u)));
        }
    }
}

extern "C" __global__ void swiglu_split_fwd_bf16(bf16* gate, bf16* up, bf16* h, const bf16* gu, int n, int i) {
    // uniform over the grid: every thread takes the same path
    if (i % 8 == 0 && aligned16(gate) && aligned16(up) && aligned16(h) && aligned16(gu)) {
        swiglu_split_items<8>(gate, up, h, gu, n, i);
    } else {
        swiglu_split_items<1>(gate, up, h, gu, n, i);
    }
}

template <int G>
__device__ __forceinline__ void swiglu_pack_items(bf16* dgu, const bf16* dh, const bf16* gate, const bf16* up, int n,
                                                  int i) {
    const int per_row = i / G;
    const int64_t total = (int64_t)n * per_row;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < total; j += stride) {
        const int64_t row = j / per_row;
        const int col = (int)(j % per_row) * G;
        const int64_t o = row * i + col;
        bf16* dst = dgu + row * 2 * i + col;
        if (G == 8) {
            Pack8 d = ldv(dh + o), g = ldv(gate + o), u = ldv(up + o), dg, du;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                float a, b;
                swiglu_bwd1(to_f(d.v[e]), to_f(g.v[e]), to_f(u.v[e]), a, b);
                dg.v[e] = to_bf(a);
                du.v[e] = to_bf(b);
            }
            stv(dst, dg);
            stv(dst + i, du);
        } else {
            float a, b;
            swiglu_bwd1(to_f(dh[o]), to_f(gate[o]), to_f(up[o]), a, b);
            dst[0] = to_bf(a);
            dst[i] = to_bf(b);
        }
    }
}

extern "C" __global__ void swiglu_bwd_pack_bf16(bf16* dgu, const bf16* dh, const bf16* gate, const bf16* up, int n,
                                                int i) {
    if (i % 8 == 0 && aligned16(dgu) && aligned16(dh) && aligned16(gate) && aligned16(up)) {
        swiglu_pack_items<8>(dgu, dh, gate, up, n, i);
    } else {
        swiglu_pack_items<1>(dgu, dh, gate, up, n, i);
    }
}
