// rmsnorm.cu: RMSNorm forward and backward (transformers' LlamaRMSNorm).
// Reference: kernels/src/rmsnorm.rs (rmsnorm_fwd_cpu, rmsnorm_bwd_cpu).
//
//   rmsnorm_fwd_bf16         out (n, c) = w ⊙ x·r,  r = 1/sqrt(mean(x²)+eps); rstd (n) = r (f32)
//   rmsnorm_bwd_bf16         dinp (n, c) = r·g − (r³/c)·x·Σ g⊙x, g = w ⊙ dy   (= or += per `accumulate`)
//                            partial (grid, c) = Σ_{rows of the block} dy ⊙ x·r  (=, f32 scratch)
//   rmsnorm_bwd_dweight_f32  dweight (c) += Σ_blocks partial, in block order (deterministic)
//   add_rmsnorm_fwd_bf16     the residual add fused with the next norm (issue 17's fused step):
//                            res (n, c) = bf16(a + b) (=, the residual stream), then out and
//                            rstd of rmsnorm_fwd_bf16 on that res (=): one launch, a and b read
//                            once, res written once and read back by the thread that wrote it
//                            (no second pass over a, b). The same arithmetic as add_fwd_bf16 then
//                            rmsnorm_fwd_bf16 (res rounded to bf16 before the sum of squares, the
//                            same per-thread order and block reduction). Reference: the
//                            composition (Backend::add_rmsnorm_fwd's default).
//
// Layout: one block of RMS_THREADS threads per row (forward) or per strided
// set of rows (backward); 16-byte accesses of 8 bf16, so the launcher
// requires c % 8 == 0 and 16-byte aligned rows. Statistics in f32.
// rsqrtf (≤ 2 ulp) is used on purpose for r: far below bf16 resolution.
#include "common.cuh"

#define RMS_THREADS 256

extern "C" __global__ void __launch_bounds__(RMS_THREADS)
rmsnorm_fwd_bf16(bf16* out, float* rstd, const bf16* inp, const bf16* weight, int n, int c, float eps) {
    __shared__ float sh[32];
    const int row = blockIdx.x;
    if (row >= n) return;  // uniform over the block
    const bf16* x = inp + (int64_t)row * c;
    bf16* o = out + (int64_t)row * c;
    float ss = 0.f;
    for (int i = threadIdx.x * 8; i < c; i += blockDim.x * 8) {
        Pack8 v = ldv(x + i);
#pragma unroll
        for (int e = 0; e < 8; e++) ss += to_f(v.v[e]) * to_f(v.v[e]);
    }
    ss = block_sum(ss, sh);
    const float r = rsqrtf(ss / (float)c + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    for (int i = threadIdx.x * 8; i < c; i += blockDim.x * 8) {
        Pack8 v = ldv(x + i), w = ldv(weight + i), y;
#pragma unroll
        for (int e = 0; e < 8; e++) y.v[e] = to_bf(to_f(w.v[e]) * (to_f(v.v[e]) * r));
        stv(o + i, y);
    }
}

extern "C" __global__ void __launch_bounds__(RMS_THREADS)
add_rmsnorm_fwd_bf16(bf16* res, bf16* out, float* rstd, const bf16* a, const bf16* b, const bf16* weight, int n, int c,
                     float eps) {
    __shared__ float sh[32];
    const int row = blockIdx.x;
    if (row >= n) return;  // uniform over the block
    const int64_t base = (int64_t)row * c;
    float ss = 0.f;
    for (int i = threadIdx.x * 8; i < c; i += blockDim.x * 8) {
        Pack8 x = ldv(a + base + i), y = ldv(b + base + i), s;
#pragma unroll
        for (int e = 0; e < 8; e++) s.v[e] = to_bf(to_f(x.v[e]) + to_f(y.v[e]));
#pragma unroll
        for (int e = 0; e < 8; e++) ss += to_f(s.v[e]) * to_f(s.v[e]);
        stv(res + base + i, s);
    }
    ss = block_sum(ss, sh);
    const float r = rsqrtf(ss / (float)c + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    // the same columns as the first loop: each thread reads back its own stores
    for (int i = threadIdx.x * 8; i < c; i += blockDim.x * 8) {
        Pack8 v = ldv(res + base + i), w = ldv(weight + i), y;
#pragma unroll
        for (int e = 0; e < 8; e++) y.v[e] = to_bf(to_f(w.v[e]) * (to_f(v.v[e]) * r));
        stv(out + base + i, y);
    }
}

// Each thread owns the columns i = threadIdx.x*8 + k*blockDim.x*8 .. +8 of
// `dw` (shared, c floats) for the whole kernel, so dw needs no barrier.
extern "C" __global__ void __launch_bounds__(RMS_THREADS)
rmsnorm_bwd_bf16(bf16* dinp, float* partial, const bf16* dout, const bf16* inp, const bf16* weight,
                 const float* rstd, int n, int c, int accumulate) {
    SMEM_DYNAMIC(float, dw);  // (c)
    __shared__ float sh[32];
    for (int i = threadIdx.x * 8; i < c; i += blockDim.x * 8) {
#pragma unroll
        for (int e = 0; e < 8; e++) dw[i + e] = 0.f;
    }
    for (int row = blockIdx.x; row < n; row += gridDim.x) {  // uniform over the block
        const int64_t base = (int64_t)row * c;
        const float r = rstd[row];
        float gx = 0.f;
        for (int i = threadIdx.x * 8; i < c; i += blockDim.x * 8) {
            Pack8 dy = ldv(dout + base + i), x = ldv(inp + base + i), w = ldv(weight + i);
#pragma unroll
            for (int e = 0; e < 8; e++) gx += to_f(dy.v[e]) * to_f(w.v[e]) * to_f(x.v[e]);
        }
        gx = block_sum(gx, sh);
        const float k = r * r * r * gx / (float)c;
        for (int i = threadIdx.x * 8; i < c; i += blockDim.x * 8) {
            Pack8 dy = ldv(dout + base + i), x = ldv(inp + base + i), w = ldv(weight + i), dx;
            Pack8 old;
            if (accumulate) old = ldv(dinp + base + i);
#pragma unroll
            for (int e = 0; e < 8; e++) {
                const float xv = to_f(x.v[e]), dyv = to_f(dy.v[e]);
                float d = r * dyv * to_f(w.v[e]) - k * xv;
                if (accumulate) d += to_f(old.v[e]);
                dx.v[e] = to_bf(d);
                dw[i + e] += dyv * (xv * r);
            }
            stv(dinp + base + i, dx);
        }
    }
    float* p = partial + (int64_t)blockIdx.x * c;
    for (int i = threadIdx.x * 8; i < c; i += blockDim.x * 8) {
#pragma unroll
        for (int e = 0; e < 8; e++) p[i + e] = dw[i + e];
    }
}

extern "C" __global__ void rmsnorm_bwd_dweight_f32(float* dweight, const float* partial, int nparts, int c) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float s = 0.f;
    for (int p = 0; p < nparts; p++) s += partial[(int64_t)p * c + j];
    dweight[j] += s;
}
