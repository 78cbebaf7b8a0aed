// cuda_sim.h: the CUDA names our kernels use, for compiling kernels/cu/*.cu
// unchanged as C++ and running them on the CPU (the "CPU layer", cargo
// feature `cuda-sim`). Written for this project; see docs/kernels.md,
// "The CPU layer", for what it proves and what it cannot.
//
// How the CUDA model maps onto the CPU (runtime in ../runtime.cpp):
// - every CUDA thread of a block is a fiber with its own stack; the fibers of
//   a block run on one OS thread (a worker), blocks run on several workers;
// - __syncthreads / __syncwarp are real barriers, the warp intrinsics
//   (__shfl*_sync, __ballot_sync, __any/__all_sync) and the tensor-core
//   instructions (mma.m16n8k16 bf16, ldmatrix) are warp collectives: each
//   lane deposits its operand and waits until every lane of the mask has
//   arrived, then each gets its result (CUDA's semantics: 32 lanes, masks,
//   widths, PTX fragment layouts);
// - `__shared__` is `static thread_local`: one copy per worker, i.e. per
//   running block, shared by the fibers of that block; dynamic shared memory
//   (SMEM_DYNAMIC in common.cuh) is a per-worker buffer of the launch's size;
// - threadIdx/blockIdx/blockDim/gridDim read the running fiber's context;
// - bf16 conversions round to nearest even (as __float2bfloat16_rn);
// - the math built-ins are the C library's (accurate; the GPU's approximate
//   ones such as __expf differ in the last bits);
// - atomics are the compiler's __atomic builtins (blocks run concurrently).
//
// With CUDA_SIM_SCAN defined (build.rs, preprocessing only) __global__ and
// __launch_bounds__ expand to marks that build.rs reads to find every kernel
// of a .cu file and its thread bound.
#pragma once
#define CUDA_SIM 1

#include <math.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <type_traits>
#include <utility>

// ---- keywords -----------------------------------------------------------
#ifdef CUDA_SIM_SCAN
#define __global__ CUDA_SIM_KERNEL_MARK
#define __launch_bounds__(...) CUDA_SIM_BOUNDS_MARK(__VA_ARGS__)
#else
#define __global__
#define __launch_bounds__(...)
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict
// One copy per worker OS thread = per running block (the block's fibers all
// run on that worker). Kernels cannot initialise __shared__ variables, so a
// static of trivial type is all this needs.
#define __shared__ static thread_local
// Dynamic shared memory (`extern __shared__ T name[]` on the GPU): the
// launch's smem bytes, one buffer per worker, 16-byte aligned, filled with
// 0xff bytes (NaN as f32 and bf16) at the start of every block.
#define SMEM_DYNAMIC(T, name) T* const name = reinterpret_cast<T*>(::cuda_sim::dynamic_smem())

// ---- vector types ---------------------------------------------------------
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3() = default;
    constexpr dim3(unsigned a, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct __align__(8) uint2 {
    unsigned x, y;
};
struct __align__(16) uint4 {
    unsigned x, y, z, w;
};
struct __align__(8) int2 {
    int x, y;
};
struct __align__(16) int4 {
    int x, y, z, w;
};
struct __align__(8) float2 {
    float x, y;
};
struct __align__(16) float4 {
    float x, y, z, w;
};
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

// ---- the runtime's entry points (runtime.cpp) -------------------------------
namespace cuda_sim {

struct ThreadCtx {
    uint3 thread_idx;
};
struct BlockCtx {
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
    void* dyn_smem;
};
// the running fiber and block of this worker (set by the scheduler)
extern __thread const ThreadCtx* tl_thread;
extern __thread const BlockCtx* tl_block;

inline void* dynamic_smem() { return tl_block->dyn_smem; }

enum ShflMode : int { SHFL_IDX = 0, SHFL_UP = 1, SHFL_DOWN = 2, SHFL_BFLY = 3 };
enum VoteMode : int { VOTE_BALLOT = 0, VOTE_ANY = 1, VOTE_ALL = 2 };
enum BarMode : int { BAR_SYNC = 0, BAR_COUNT = 1, BAR_AND = 2, BAR_OR = 3 };

// Collectives (each blocks the calling fiber until the collective completes).
uint64_t shfl(int mode, unsigned mask, uint64_t bits, int b, int width, const char* file, int line);
unsigned vote(int mode, unsigned mask, int pred, const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);
int syncthreads(int mode, int pred, const char* file, int line);
// d (4 f32, C/D fragment) += A (4 x 2 bf16) · B (2 x 2 bf16): mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
void mma_m16n8k16_bf16_f32(float* d, const uint32_t* a, uint32_t b0, uint32_t b1, const char* file, int line);
// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: `row` is the 16 bytes
// this lane's address points at (read by the lane itself); r gets `nmat` words
void ldmatrix(uint32_t* r, int nmat, int trans, const uint32_t* row, const char* file, int line);
// mask of the lanes of the caller's warp that have not exited
unsigned activemask();
// cp.async.cg.shared.global (16 bytes, bytes past src_bytes zero-filled),
// cp.async.commit_group and cp.async.wait_group n, per the PTX ISA: a copy
// lands only when its issuing thread waits for its group (the destination
// is filled with 0xff bytes, NaN, when the copy is issued: a read before the
// wait, or by another thread before the barrier after it, sees NaN); the
// copies still pending when a thread exits land then.
void cp_async(void* dst, const void* src, int src_bytes, const char* file, int line);
void cp_async_commit();
void cp_async_wait(int n, const char* file, int line);

// A call site (file, line), so collectives can check that the lanes of a
// mask meet at the same intrinsic, and deadlock reports can say where.
struct At {
    const char* file;
    int line;
    template <class T>
    T xfer(int mode, unsigned mask, T v, int b, int width) const {
        static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp shuffles move 4- or 8-byte values");
        uint64_t bits = 0;
        memcpy(&bits, &v, sizeof(T));
        bits = shfl(mode, mask, bits, b, width, file, line);
        T r;
        memcpy(&r, &bits, sizeof(T));
        return r;
    }
    template <class T>
    T shfl_idx(unsigned mask, T v, int src_lane, int width = 32) const { return xfer(SHFL_IDX, mask, v, src_lane, width); }
    template <class T>
    T shfl_up(unsigned mask, T v, unsigned delta, int width = 32) const { return xfer(SHFL_UP, mask, v, (int)delta, width); }
    template <class T>
    T shfl_down(unsigned mask, T v, unsigned delta, int width = 32) const { return xfer(SHFL_DOWN, mask, v, (int)delta, width); }
    template <class T>
    T shfl_xor(unsigned mask, T v, int lane_mask, int width = 32) const { return xfer(SHFL_BFLY, mask, v, lane_mask, width); }
    unsigned ballot(unsigned mask, int pred) const { return vote(VOTE_BALLOT, mask, pred, file, line); }
    int any(unsigned mask, int pred) const { return (int)vote(VOTE_ANY, mask, pred, file, line); }
    int all(unsigned mask, int pred) const { return (int)vote(VOTE_ALL, mask, pred, file, line); }
    void warp(unsigned mask = 0xffffffffu) const { syncwarp(mask, file, line); }
    void block() const { syncthreads(BAR_SYNC, 1, file, line); }
    int block_count(int pred) const { return syncthreads(BAR_COUNT, pred, file, line); }
    int block_and(int pred) const { return syncthreads(BAR_AND, pred, file, line); }
    int block_or(int pred) const { return syncthreads(BAR_OR, pred, file, line); }
    void mma(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) const { mma_m16n8k16_bf16_f32(d, a, b0, b1, file, line); }
    void ldm(uint32_t* r, int nmat, int trans, const void* p) const {
        uint32_t row[4];
        memcpy(row, p, 16);  // this lane's row, read by this lane (visible to ThreadSanitizer)
        ldmatrix(r, nmat, trans, row, file, line);
    }
};

}  // namespace cuda_sim

#define CUDA_SIM_AT ::cuda_sim::At{__FILE__, __LINE__}
#define threadIdx (::cuda_sim::tl_thread->thread_idx)
#define blockIdx (::cuda_sim::tl_block->block_idx)
#define blockDim (::cuda_sim::tl_block->block_dim)
#define gridDim (::cuda_sim::tl_block->grid_dim)
#define warpSize 32

#define __syncthreads CUDA_SIM_AT.block
#define __syncthreads_count CUDA_SIM_AT.block_count
#define __syncthreads_and CUDA_SIM_AT.block_and
#define __syncthreads_or CUDA_SIM_AT.block_or
#define __syncwarp CUDA_SIM_AT.warp
#define __shfl_sync CUDA_SIM_AT.shfl_idx
#define __shfl_up_sync CUDA_SIM_AT.shfl_up
#define __shfl_down_sync CUDA_SIM_AT.shfl_down
#define __shfl_xor_sync CUDA_SIM_AT.shfl_xor
#define __ballot_sync CUDA_SIM_AT.ballot
#define __any_sync CUDA_SIM_AT.any
#define __all_sync CUDA_SIM_AT.all
inline unsigned __activemask() { return ::cuda_sim::activemask(); }

// The tensor-core wrappers of kernels/cu/mma.cuh (there: inline PTX).
#define mma16816(d, a, b0, b1) CUDA_SIM_AT.mma(d, a, b0, b1)
#define ldmatrix_x1(r, p) CUDA_SIM_AT.ldm(r, 1, 0, p)
#define ldmatrix_x2(r, p) CUDA_SIM_AT.ldm(r, 2, 0, p)
#define ldmatrix_x4(r, p) CUDA_SIM_AT.ldm(r, 4, 0, p)
#define ldmatrix_x1_trans(r, p) CUDA_SIM_AT.ldm(r, 1, 1, p)
#define ldmatrix_x2_trans(r, p) CUDA_SIM_AT.ldm(r, 2, 1, p)
#define ldmatrix_x4_trans(r, p) CUDA_SIM_AT.ldm(r, 4, 1, p)
#define cp_async16(dst, src, n) ::cuda_sim::cp_async(dst, src, n, __FILE__, __LINE__)
inline void cp_async_commit() { ::cuda_sim::cp_async_commit(); }
template <int N>
inline void cp_async_wait() { ::cuda_sim::cp_async_wait(N, __FILE__, __LINE__); }

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
// a pause in a spin loop (the GPU sleeps about ns nanoseconds; here the OS thread yields)
inline void __nanosleep(unsigned) { sched_yield(); }
// loads and stores that bypass L1 (coherent at L2): plain accesses here
template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline void __stcg(T* p, T v) { *p = v; }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- bf16 (cuda_bf16.h) -----------------------------------------------------
namespace cuda_sim {
// f32 -> bf16 bits, round to nearest even; NaN -> the canonical 0x7fff (as CUDA)
inline uint16_t f32_to_bf16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
inline float bf16_to_f32(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
}  // namespace cuda_sim

struct __align__(2) __nv_bfloat16 {
    uint16_t __x;
    constexpr __nv_bfloat16() : __x(0) {}
    __nv_bfloat16(float f) : __x(::cuda_sim::f32_to_bf16_rn(f)) {}
    __nv_bfloat16(double f) : __x(::cuda_sim::f32_to_bf16_rn((float)f)) {}
    operator float() const { return ::cuda_sim::bf16_to_f32(__x); }
};
struct __align__(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
static_assert(sizeof(__nv_bfloat16) == 2 && sizeof(__nv_bfloat162) == 4, "bf16 layout");

inline float __bfloat162float(__nv_bfloat16 b) { return ::cuda_sim::bf16_to_f32(b.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    __nv_bfloat16 r;
    r.__x = ::cuda_sim::f32_to_bf16_rn(f);
    return r;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)}; }
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return __floats2bfloat162_rn(f, f); }
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) { return __nv_bfloat162{lo, hi}; }

// ---- math built-ins -----------------------------------------------------------
// Integer min/max as CUDA's device overloads (host C++ has none in the
// global namespace); float ones as fminf/fmaxf.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// rsqrtf is <= 2 ulp on the GPU; here the correctly rounded 1/sqrt
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
// the GPU's fast approximations: here the accurate functions
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
// IEEE round-to-nearest operations, never contracted: the library is built
// with -ffp-contract=off, so plain operators round once each, as these do
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
template <class T>
inline T __ldg(const T* p) { return *p; }

// ---- atomics (relaxed, as CUDA's; blocks run on concurrent workers) ----------
namespace cuda_sim {
template <class T, class U, class F>
inline T atomic_cas_loop(T* p, F f) {
    static_assert(sizeof(T) == sizeof(U), "same width");
    U* q = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(q, __ATOMIC_RELAXED);
    for (;;) {
        T o;
        memcpy(&o, &old, sizeof(T));
        const T n = f(o);
        U nu;
        memcpy(&nu, &n, sizeof(T));
        if (__atomic_compare_exchange_n(q, &old, nu, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return o;
    }
}
}  // namespace cuda_sim
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline float atomicAdd(float* p, float v) {
    return ::cuda_sim::atomic_cas_loop<float, uint32_t>(p, [v](float o) { return o + v; });
}
inline double atomicAdd(double* p, double v) {
    return ::cuda_sim::atomic_cas_loop<double, uint64_t>(p, [v](double o) { return o + v; });
}
inline int atomicSub(int* p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicExch(unsigned long long* p, unsigned long long v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline float atomicExch(float* p, float v) {
    return ::cuda_sim::atomic_cas_loop<float, uint32_t>(p, [v](float) { return v; });
}
inline int atomicCAS(int* p, int cmp, int v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
inline int atomicMax(int* p, int v) {
    return ::cuda_sim::atomic_cas_loop<int, int>(p, [v](int o) { return o > v ? o : v; });
}
inline int atomicMin(int* p, int v) {
    return ::cuda_sim::atomic_cas_loop<int, int>(p, [v](int o) { return o < v ? o : v; });
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
    return ::cuda_sim::atomic_cas_loop<unsigned, unsigned>(p, [v](unsigned o) { return o > v ? o : v; });
}
inline unsigned atomicMin(unsigned* p, unsigned v) {
    return ::cuda_sim::atomic_cas_loop<unsigned, unsigned>(p, [v](unsigned o) { return o < v ? o : v; });
}
inline int atomicAnd(int* p, int v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }
inline int atomicOr(int* p, int v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAnd(unsigned* p, unsigned v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicOr(unsigned* p, unsigned v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
