// elementwise.cu: the small memory-bound kernels of the backend, each in a
// bf16 and an f32 variant (the buffer kinds Act and F32):
//   cast_f32_to_bf16, cast_bf16_to_f32          out = convert(in)
//   add_fwd_{bf16,f32}                          out = a + b       (=)
//   add_assign_{bf16,f32}                       x += y            (+=)
//   scale_{bf16,f32}                            x *= s            (in place)
//   sum_squares_{bf16,f32}                      partial[block] = sum x^2 (f64)
//   gather_rows_{bf16,f32}                      out[i] = src[rows[i]]   (=)
//   scatter_add_rows_{bf16,f32}                 dst[rows[i]] += src[i]  (+=, in row order)
//   kv_write_{bf16,f32}                         cache[:, pos0..pos0+t] = new (=)
//   kv_write_ragged_{bf16,f32}                  cache[bi, rpos0[bi] + r] = new[bi, r] for r < rlen[bi] (=)
// Reference: kernels/src/elementwise.rs (the CPU kernels of the same names).
// Arithmetic in f32; bf16 results rounded once (RNE). Element-wise kernels
// use 16-byte accesses when all their pointers are 16-byte aligned (checked
// once per thread, a uniform branch) and scalar accesses otherwise, so any
// window of a buffer is accepted. Grid-stride loops: any grid is correct.
#include "common.cuh"

struct OpAdd {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct OpScale {
    float s;
    __device__ float operator()(float a, float) const { return a * s; }
};
struct OpCopy {
    __device__ float operator()(float a, float) const { return a; }
};

// out[i] = op(a[i], b[i]) with Ta/Tb/To element types; b may be null (unary).
template <typename To, typename Ti, typename Op>
__device__ __forceinline__ void map2(To* out, const Ti* a, const Ti* b, int64_t n, Op op) {
    const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    // a word of the narrower type: 8 elements when either side is bf16
    constexpr int N = V16<To>::N > V16<Ti>::N ? V16<To>::N : V16<Ti>::N;
    int64_t done = 0;
    if (aligned16(out) && aligned16(a) && (b == nullptr || aligned16(b))) {
        const int64_t nv = n / N;
        for (int64_t i = tid; i < nv; i += stride) {
            float x[N], y[N];
#pragma unroll
            for (int h = 0; h < N / V16<Ti>::N; h++) {
                V16<Ti> va = ldv(a + i * N + h * V16<Ti>::N);
                V16<Ti> vb;
                if (b != nullptr) vb = ldv(b + i * N + h * V16<Ti>::N);
#pragma unroll
                for (int e = 0; e < V16<Ti>::N; e++) {
                    x[h * V16<Ti>::N + e] = to_f(va.v[e]);
                    y[h * V16<Ti>::N + e] = b != nullptr ? to_f(vb.v[e]) : 0.f;
                }
            }
#pragma unroll
            for (int h = 0; h < N / V16<To>::N; h++) {
                V16<To> vo;
#pragma unroll
                for (int e = 0; e < V16<To>::N; e++) vo.v[e] = from_f<To>(op(x[h * V16<To>::N + e], y[h * V16<To>::N + e]));
                stv(out + i * N + h * V16<To>::N, vo);
            }
        }
        done = nv * N;
    }
    for (int64_t i = done + tid; i < n; i += stride) {
        out[i] = from_f<To>(op(to_f(a[i]), b != nullptr ? to_f(b[i]) : 0.f));
    }
}

extern "C" __global__ void cast_f32_to_bf16(bf16* out, const float* in, int64_t n) {
    map2(out, in, (const float*)nullptr, n, OpCopy{});
}
extern "C" __global__ void cast_bf16_to_f32(float* out, const bf16* in, int64_t n) {
    map2(out, in, (const bf16*)nullptr, n, OpCopy{});
}

#define DEFINE_MAPS(T, SUF)                                                                     \
    extern "C" __global__ void add_fwd_##SUF(T* out, const T* a, const T* b, int64_t n) {      \
        map2(out, a, b, n, OpAdd{});                                                            \
    }                                                                                           \
    extern "C" __global__ void add_assign_##SUF(T* x, const T* y, int64_t n) {                 \
        map2(x, (const T*)x, y, n, OpAdd{});                                                    \
    }                                                                                           \
    extern "C" __global__ void scale_##SUF(T* x, float s, int64_t n) {                         \
        map2(x, (const T*)x, (const T*)nullptr, n, OpScale{s});                                 \
    }

DEFINE_MAPS(bf16, bf16)
DEFINE_MAPS(float, f32)

// Sum of squares: each block writes the sum of its grid-stride share to
// partial[blockIdx.x] (f64); the host adds the partials in block order, so
// the result depends only on the grid size (fixed by the launcher).
// Per 16-byte word the squares are added in f32, then into an f64 total.
template <typename T>
__device__ void sum_squares(double* partial, const T* x, int64_t n) {
    __shared__ double sh[32];
    const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    constexpr int N = V16<T>::N;
    double acc = 0.0;
    int64_t done = 0;
    if (aligned16(x)) {
        const int64_t nv = n / N;
        for (int64_t i = tid; i < nv; i += stride) {
            V16<T> w = ldv(x + i * N);
            float s = 0.f;
#pragma unroll
            for (int e = 0; e < N; e++) s += to_f(w.v[e]) * to_f(w.v[e]);
            acc += (double)s;
        }
        done = nv * N;
    }
    for (int64_t i = done + tid; i < n; i += stride) {
        float v = to_f(x[i]);
        acc += (double)(v * v);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(FULL_MASK, acc, o);
    const int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP;
    if (lane == 0) sh[wid] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)(blockDim.x / WARP); w++) t += sh[w];
        partial[blockIdx.x] = t;
    }
}
extern "C" __global__ void sum_squares_bf16(double* partial, const bf16* x, int64_t n) { sum_squares(partial, x, n); }
extern "C" __global__ void sum_squares_f32(double* partial, const float* x, int64_t n) { sum_squares(partial, x, n); }

// out (nrows, c) = src (*, c)[rows]; rows were range-checked on the host.
template <typename T>
__device__ void gather_rows(T* out, const T* src, const uint32_t* rows, int64_t nrows, int64_t c) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nrows * c; i += stride) {
        const int64_t r = i / c, j = i % c;
        out[i] = src[(int64_t)rows[r] * c + j];
    }
}
// dst (*, c)[rows[i]] += src (nrows, c)[i]: one thread per column walks the
// rows in order, so repeated rows add up deterministically without atomics.
template <typename T>
__device__ void scatter_add_rows(T* dst, const T* src, const uint32_t* rows, int64_t nrows, int64_t c) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < c; j += stride) {
        for (int64_t r = 0; r < nrows; r++) {
            T* d = dst + (int64_t)rows[r] * c + j;
            *d = from_f<T>(to_f(*d) + to_f(src[r * c + j]));
        }
    }
}
// cache (b, cap, w)[:, pos0 .. pos0+t] = src (b, t, w)
template <typename T>
__device__ void kv_write(T* cache, const T* src, int64_t b, int64_t t, int64_t cap, int64_t w, int64_t pos0) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t per_b = t * w;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < b * per_b; i += stride) {
        const int64_t bi = i / per_b, rem = i % per_b;
        cache[(bi * cap + pos0) * w + rem] = src[i];
    }
}

// The valid rows of a ragged (b, t, w) into (b, cap, w); padding rows not written.
template <typename T>
__device__ void kv_write_ragged(T* cache, const T* src, const int* rpos0, const int* rlen, int64_t b, int64_t t,
                                int64_t cap, int64_t w) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t per_b = t * w;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < b * per_b; i += stride) {
        const int64_t bi = i / per_b, rem = i % per_b, r = rem / w;
        if (r >= rlen[bi]) continue;
        cache[(bi * cap + rpos0[bi]) * w + rem] = src[i];
    }
}

#define DEFINE_ROWS(T, SUF)                                                                                     \
    extern "C" __global__ void gather_rows_##SUF(T* out, const T* src, const uint32_t* rows, int64_t nrows,    \
                                                 int64_t c) {                                                   \
        gather_rows(out, src, rows, nrows, c);                                                                  \
    }                                                                                                           \
    extern "C" __global__ void scatter_add_rows_##SUF(T* dst, const T* src, const uint32_t* rows,              \
                                                      int64_t nrows, int64_t c) {                               \
        scatter_add_rows(dst, src, rows, nrows, c);                                                             \
    }                                                                                                           \
    extern "C" __global__ void kv_write_##SUF(T* cache, const T* src, int64_t b, int64_t t, int64_t cap,       \
                                              int64_t w, int64_t pos0) {                                        \
        kv_write(cache, src, b, t, cap, w, pos0);                                                               \
    }                                                                                                           \
    extern "C" __global__ void kv_write_ragged_##SUF(T* cache, const T* src, const int* rpos0, const int* rlen, \
                                                     int64_t b, int64_t t, int64_t cap, int64_t w) {            \
        kv_write_ragged(cache, src, rpos0, rlen, b, t, cap, w);                                                 \
    }

DEFINE_ROWS(bf16, bf16)
DEFINE_ROWS(float, f32)
