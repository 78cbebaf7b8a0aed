// swiglu.cu: SwiGLU activation of the Llama MLP, h = silu(gate) ⊙ up.
// Reference: kernels/src/swiglu.rs (swiglu_fwd_cpu, swiglu_bwd_cpu).
//
//   swiglu_fwd_bf16   out = g·σ(g)·u                                  (=)
//   swiglu_bwd_bf16   dgate = dh·u·σ(g)·(1 + g·(1 − σ(g))), dup = dh·silu(g)  (=, both)
//
// σ uses __expf on purpose (≤ 2 ulp plus range effects far below bf16
// resolution; σ saturates correctly: __expf(+large) = inf gives σ = 0).
// 16-byte accesses when every pointer is 16-byte aligned, scalar otherwise.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + __expf(-x)); }

extern "C" __global__ void swiglu_fwd_bf16(bf16* out, const bf16* gate, const bf16* up, int64_t n) {
    const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t done = 0;
    if (aligned16(out) && aligned16(gate) && aligned16(up)) {
        const int64_t nv = n / 8;
        for (int64_t i = tid; i < nv; i += stride) {
            Pack8 g = ldv(gate + i * 8), u = ldv(up + i * 8), o;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                const float gv = to_f(g.v[e]);
                o.v[e] = to_bf(gv * sigmoidf_(gv) * to_f(u.v[e]));
            }
            stv(out + i * 8, o);
        }
        done = nv * 8;
    }
    for (int64_t i = done + tid; i < n; i += stride) {
        const float gv = to_f(gate[i]);
        out[i] = to_bf(gv * sigmoidf_(gv) * to_f(up[i]));
    }
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
