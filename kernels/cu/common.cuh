// common.cuh: helpers shared by every kernel family.
//
// - bf16 <-> f32 conversion (round-to-nearest-even, as half::bf16::from_f32)
// - 16-byte vector loads/stores of 8 bf16 or 4 f32 (Pack8 / float4)
// - warp and block reductions (sum, max) in f32
// - SMEM_DYNAMIC(T, name): a kernel's dynamic shared memory as `T name[]`
//
// Every kernel of the project computes in f32 and stores bf16 or f32.
// No fast-math: special functions that may be approximate are chosen one
// call at a time in the kernels (and say so).
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

#define WARP 32
#define FULL_MASK 0xffffffffu

// The launch's dynamic shared memory as `T name[]`. A macro so that the CPU
// layer (kernels/sim, which defines it first) can give each block its own.
#ifndef SMEM_DYNAMIC
#define SMEM_DYNAMIC(T, name) extern __shared__ T name[]
#endif

__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ bf16 to_bf(float x) { return __float2bfloat16_rn(x); }

// Stores f32 `x` into an element of type T (bf16: rounded once).
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return to_bf(x); }
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }

// One 16-byte word of elements: 8 bf16 or 4 f32. Loaded and stored with a
// single 128-bit access (the pointer must be 16-byte aligned).
template <typename T>
struct __align__(16) V16 {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};
typedef V16<bf16> Pack8;

template <typename T>
__device__ __forceinline__ V16<T> ldv(const T* p) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    return *reinterpret_cast<V16<T>*>(&u);
}
template <typename T>
__device__ __forceinline__ void stv(T* p, const V16<T>& x) {
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(&x);
}
__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the block; every thread gets the result. `sh` holds 32 floats.
// blockDim.x must be a multiple of 32 (launchers use fixed multiples).
__device__ __forceinline__ float block_sum(float v, float* sh) {
    const int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP, nw = blockDim.x / WARP;
    v = warp_sum(v);
    __syncthreads();  // sh may still be read by a previous reduction
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.f;
    return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* sh) {
    const int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP, nw = blockDim.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return warp_max(v);
}
