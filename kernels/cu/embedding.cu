// embedding.cu: token embedding forward and deterministic backward.
// Reference: kernels/src/embedding.rs (embedding_fwd_cpu, embedding_bwd_cpu).
//
//   embedding_fwd_bf16   out (n, c) = table (v, c)[tokens (n)]            (=)
//   embedding_bwd_f32    dtable (v, c)[tok] += Σ_{i: tokens[i] = tok} dout[i]  (+=, f32)
//
// Backward without atomics: the host groups the rows by token (CSR: the
// distinct tokens `uniq`, `offsets` into `order`, rows in ascending order),
// and one thread per (distinct token, column) adds its rows in that order,
// so the sums never depend on scheduling. Forward copies 16-byte words: the
// launcher requires c % 8 == 0 and 16-byte aligned rows.
#include "common.cuh"

extern "C" __global__ void embedding_fwd_bf16(bf16* out, const uint32_t* tokens, const bf16* table, int n, int c) {
    const int row = blockIdx.x;
    if (row >= n) return;
    const bf16* src = table + (int64_t)tokens[row] * c;
    bf16* dst = out + (int64_t)row * c;
    for (int i = threadIdx.x * 8; i < c; i += blockDim.x * 8) stv(dst + i, ldv(src + i));
}

// grid (n_uniq, ceil(c / blockDim.x)); dout rows are bf16, dtable f32.
extern "C" __global__ void embedding_bwd_f32(float* dtable, const bf16* dout, const uint32_t* uniq,
                                             const uint32_t* offsets, const uint32_t* order, int n_uniq, int c) {
    const int u = blockIdx.x;
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (u >= n_uniq || j >= c) return;
    float s = 0.f;
    for (uint32_t k = offsets[u]; k < offsets[u + 1]; k++) s += to_f(dout[(int64_t)order[k] * c + j]);
    dtable[(int64_t)uniq[u] * c + j] += s;
}
