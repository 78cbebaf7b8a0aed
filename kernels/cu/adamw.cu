// adamw.cu: one fused AdamW step (torch.optim.AdamW semantics) over the fp32
// master weights and moments, writing the bf16 working copy of the weights
// in the same pass. Reference: kernels/src/adamw.rs (adamw_cpu).
//
//   adamw_step_f32   g = grad·grad_scale           (global-norm clipping folded in)
//                    p ← p·decay                    (decay = 1 − lr·wd, host f32; wd = 0: no decay group)
//                    m ← m + (1 − β1)(g − m)
//                    v ← β2·v + (1 − β2)·g²
//                    p ← p − step_size · m / (sqrt(v)/bc2_sqrt + ε)   (bias corrections from the host)
//                    p_bf16 = bf16(p)
//
// The arithmetic mirrors the CPU kernel operation by operation with the
// _rn intrinsics, which the compiler never contracts into FMAs, so the GPU
// and CPU steps agree to the last bit (sqrt and division are IEEE here: no
// fast math). float4 accesses when every pointer allows them.
#include "common.cuh"

struct AdamHp {
    float one_m_b1, beta2, one_m_b2, eps, decay, step_size, bc2_sqrt, grad_scale;
};

__device__ __forceinline__ void adam1(float& p, float& m, float& v, float gr, const AdamHp& h) {
    const float g = __fmul_rn(gr, h.grad_scale);
    p = __fmul_rn(p, h.decay);
    m = __fadd_rn(m, __fmul_rn(h.one_m_b1, __fsub_rn(g, m)));
    v = __fadd_rn(__fmul_rn(v, h.beta2), __fmul_rn(__fmul_rn(h.one_m_b2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), h.bc2_sqrt), h.eps);
    p = __fsub_rn(p, __fmul_rn(h.step_size, __fdiv_rn(m, denom)));
}

extern "C" __global__ void adamw_step_f32(float* params, bf16* params_bf16, const float* grads, float* m, float* v,
                                          int64_t n, float beta1, float beta2, float eps, float decay,
                                          float step_size, float bc2_sqrt, float grad_scale) {
    const AdamHp h{__fsub_rn(1.f, beta1), beta2, __fsub_rn(1.f, beta2), eps, decay, step_size, bc2_sqrt, grad_scale};
    const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t done = 0;
    if (aligned16(params) && aligned16(grads) && aligned16(m) && aligned16(v) &&
        (reinterpret_cast<uintptr_t>(params_bf16) & 7) == 0) {
        const int64_t nv = n / 4;
        for (int64_t i = tid; i < nv; i += stride) {
            float4 p4 = reinterpret_cast<const float4*>(params)[i];
            const float4 g4 = reinterpret_cast<const float4*>(grads)[i];
            float4 m4 = reinterpret_cast<const float4*>(m)[i];
            float4 v4 = reinterpret_cast<const float4*>(v)[i];
            adam1(p4.x, m4.x, v4.x, g4.x, h);
            adam1(p4.y, m4.y, v4.y, g4.y, h);
            adam1(p4.z, m4.z, v4.z, g4.z, h);
            adam1(p4.w, m4.w, v4.w, g4.w, h);
            reinterpret_cast<float4*>(params)[i] = p4;
            reinterpret_cast<float4*>(m)[i] = m4;
            reinterpret_cast<float4*>(v)[i] = v4;
            __nv_bfloat162 lo = __floats2bfloat162_rn(p4.x, p4.y), hi = __floats2bfloat162_rn(p4.z, p4.w);
            uint2 packed;
            packed.x = *reinterpret_cast<uint32_t*>(&lo);
            packed.y = *reinterpret_cast<uint32_t*>(&hi);
            reinterpret_cast<uint2*>(params_bf16)[i] = packed;
        }
        done = nv * 4;
    }
    for (int64_t i = done + tid; i < n; i += stride) {
        float p = params[i], mm = m[i], vv = v[i];
        adam1(p, mm, vv, grads[i], h);
        params[i] = p;
        m[i] = mm;
        v[i] = vv;
        params_bf16[i] = to_bf(p);
    }
}
