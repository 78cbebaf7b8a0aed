// selftest.cu: kernels that exercise the CPU layer itself (kernels/tests/sim_layer.rs).
// Compiled into the CPU layer's library only (never by nvcc): each checks
// one piece of CUDA semantics against a host reference written from the
// CUDA Programming Guide / PTX ISA, or one error the layer must report.
//
//   selftest_shfl          __shfl{,_up,_down,_xor}_sync with any mask and width (f32 and f64)
//   selftest_vote          __ballot_sync, __any_sync, __all_sync
//   selftest_bar_count     __syncthreads_count/_and/_or
//   selftest_smem_reverse  static shared memory across a barrier (or without one: a race)
//   selftest_dyn_smem      dynamic shared memory: poisoned at block start, then written
//   selftest_atomics       atomicAdd (int, f32), atomicMax across blocks
//   selftest_mma           one mma.m16n8k16 from fragments loaded per the PTX layouts
//   selftest_ldmatrix      ldmatrix x4 (and .trans) of a 16x16 tile vs the A-fragment loads
//   selftest_cp_async      cp.async in two commit groups (zero-fill too): a group lands at
//                          its wait_group, not before (mode 1 reads a group it never waited for)
//   selftest_order         the order in which threads pass two barriers (the schedule)
//   selftest_err_*         a divergent barrier, a deadlock, an exited lane, a lane
//                          read outside the mask, lanes meeting at different shuffles
//   selftest_bounded       __launch_bounds__(64), for the launch check
#include "common.cuh"
#include "mma.cuh"

// mode 0 idx, 1 up, 2 down, 3 xor; b[lane] is the lane / delta / lane mask
extern "C" __global__ void selftest_shfl(float* out, double* out64, const int* b, int mode, int width, unsigned mask) {
    const int lane = threadIdx.x % 32;
    if (!(mask >> lane & 1)) {
        out[threadIdx.x] = -1.f;
        out64[threadIdx.x] = -1.0;
        return;
    }
    const float v = (float)(threadIdx.x * 10 + 1);
    const double d = 1e10 + threadIdx.x;
    float r;
    double r64;
    switch (mode) {
        case 0:
            r = __shfl_sync(mask, v, b[threadIdx.x], width);
            r64 = __shfl_sync(mask, d, b[threadIdx.x], width);
            break;
        case 1:
            r = __shfl_up_sync(mask, v, b[threadIdx.x], width);
            r64 = __shfl_up_sync(mask, d, b[threadIdx.x], width);
            break;
        case 2:
            r = __shfl_down_sync(mask, v, b[threadIdx.x], width);
            r64 = __shfl_down_sync(mask, d, b[threadIdx.x], width);
            break;
        default:
            r = __shfl_xor_sync(mask, v, b[threadIdx.x], width);
            r64 = __shfl_xor_sync(mask, d, b[threadIdx.x], width);
            break;
    }
    out[threadIdx.x] = r;
    out64[threadIdx.x] = r64;
}

extern "C" __global__ void selftest_vote(unsigned* ballot, int* any, int* all, const int* pred, unsigned mask) {
    const int lane = threadIdx.x % 32;
    if (!(mask >> lane & 1)) return;
    const int p = pred[threadIdx.x];
    ballot[threadIdx.x] = __ballot_sync(mask, p);
    any[threadIdx.x] = __any_sync(mask, p);
    all[threadIdx.x] = __all_sync(mask, p);
}

extern "C" __global__ void selftest_bar_count(int* count, int* and_, int* or_, const int* pred) {
    const int p = pred[blockIdx.x * blockDim.x + threadIdx.x];
    const int c = __syncthreads_count(p);
    const int a = __syncthreads_and(p);
    const int o = __syncthreads_or(p);
    if (threadIdx.x == 0) {
        count[blockIdx.x] = c;
        and_[blockIdx.x] = a;
        or_[blockIdx.x] = o;
    }
}

// out[i] = in[n - 1 - i] through shared memory (n = blockDim.x <= 256)
extern "C" __global__ void selftest_smem_reverse(float* out, const float* in, int use_barrier) {
    __shared__ float sh[256];
    const int n = blockDim.x, i = threadIdx.x;
    const int64_t base = (int64_t)blockIdx.x * n;
    sh[i] = in[base + i];
    if (use_barrier) __syncthreads();
    out[base + i] = sh[n - 1 - i];
}

// first[i] = the dynamic shared word i before anyone writes it (poison),
// then[i] = what thread n-1-i wrote
extern "C" __global__ void selftest_dyn_smem(unsigned* first, unsigned* then) {
    SMEM_DYNAMIC(unsigned, w);
    const int n = blockDim.x, i = threadIdx.x;
    first[i] = w[i];
    __syncthreads();
    w[i] = 1000u + (unsigned)i;
    __syncthreads();
    then[i] = w[n - 1 - i];
}

extern "C" __global__ void selftest_atomics(int* count, float* fsum, int* imax) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(count, 1);
    atomicAdd(fsum, 0.5f);
    atomicMax(imax, (t * 7919) % 10007);
}

// D (16x8 f32, row-major) = A (16x16 bf16, row-major) · B (16x8 bf16, row-major k x n) + C,
// one warp; the fragments are loaded as the PTX ISA lays them out
extern "C" __global__ void selftest_mma(float* D, const bf16* A, const bf16* B, const float* C) {
    const int lane = threadIdx.x, g = lane / 4, c = lane % 4;
    auto pair = [](bf16 lo, bf16 hi) -> uint32_t {
        __nv_bfloat162 v;
        v.x = lo;
        v.y = hi;
        return *reinterpret_cast<uint32_t*>(&v);
    };
    uint32_t a[4];
    a[0] = pair(A[g * 16 + 2 * c], A[g * 16 + 2 * c + 1]);
    a[1] = pair(A[(g + 8) * 16 + 2 * c], A[(g + 8) * 16 + 2 * c + 1]);
    a[2] = pair(A[g * 16 + 2 * c + 8], A[g * 16 + 2 * c + 9]);
    a[3] = pair(A[(g + 8) * 16 + 2 * c + 8], A[(g + 8) * 16 + 2 * c + 9]);
    const uint32_t b0 = pair(B[(2 * c) * 8 + g], B[(2 * c + 1) * 8 + g]);
    const uint32_t b1 = pair(B[(2 * c + 8) * 8 + g], B[(2 * c + 9) * 8 + g]);
    float d[4] = {C[g * 8 + 2 * c], C[g * 8 + 2 * c + 1], C[(g + 8) * 8 + 2 * c], C[(g + 8) * 8 + 2 * c + 1]};
    mma16816(d, a, b0, b1);
    D[g * 8 + 2 * c] = d[0];
    D[g * 8 + 2 * c + 1] = d[1];
    D[(g + 8) * 8 + 2 * c] = d[2];
    D[(g + 8) * 8 + 2 * c + 1] = d[3];
}

// M (16x16 bf16, row-major) into shared memory; per lane: ldmatrix x4 with
// the row addresses of the four 8x8 quadrants (lanes 0-15 rows 0-15 at
// column 0, lanes 16-31 at column 8), the same with .trans, and the A
// fragment of M loaded directly (ldmatrix x4 of these addresses must equal it)
extern "C" __global__ void selftest_ldmatrix(uint32_t* plain, uint32_t* trans, uint32_t* frag, const bf16* M) {
    __shared__ __align__(16) bf16 sm[16 * 16];
    const int lane = threadIdx.x, g = lane / 4, c = lane % 4;
    for (int i = lane; i < 256; i += 32) sm[i] = M[i];
    __syncwarp();
    const bf16* row = sm + (lane % 16) * 16 + (lane / 16) * 8;
    uint32_t r[4], t[4];
    ldmatrix_x4(r, row);
    ldmatrix_x4_trans(t, row);
    const uint32_t f[4] = {*reinterpret_cast<const uint32_t*>(sm + g * 16 + 2 * c), *reinterpret_cast<const uint32_t*>(sm + (g + 8) * 16 + 2 * c),
                           *reinterpret_cast<const uint32_t*>(sm + g * 16 + 2 * c + 8),
                           *reinterpret_cast<const uint32_t*>(sm + (g + 8) * 16 + 2 * c + 8)};
    for (int k = 0; k < 4; k++) {
        plain[lane * 4 + k] = r[k];
        trans[lane * 4 + k] = t[k];
        frag[lane * 4 + k] = f[k];
    }
}

// 8 threads copy 16 chunks of 16 bytes from `in` into shared memory: chunk t
// in group 0, chunk t + 8 in group 1; chunk 5 with src-size 6 (bytes 6..15
// zero-filled), chunk 13 with src-size 0 (all zero). out[0..32) is read after
// wait_group 1 (group 0 has landed), out[32..64) after wait_group 0 (mode 0)
// or with no wait for group 1 at all (mode 1: the copies have not landed;
// on the layer a thread's pending copies land when it exits, so every
// thread waits at a last barrier before exiting).
extern "C" __global__ void selftest_cp_async(float* out, const float* in, int mode) {
    __shared__ __align__(16) float sh[64];
    const int t = threadIdx.x;
    cp_async16(sh + 4 * t, in + 4 * t, t == 5 ? 6 : 16);
    cp_async_commit();
    cp_async16(sh + 4 * (t + 8), in + 4 * (t + 8), t == 5 ? 0 : 16);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    for (int i = t; i < 32; i += 8) out[i] = sh[i];
    if (mode == 0) cp_async_wait<0>();
    __syncthreads();
    for (int i = 32 + t; i < 64; i += 8) out[i] = sh[i];
    __syncthreads();  // no thread exits (which lands its copies) before every read is done
}

// log[k] = the k-th thread to pass a point (two barriers, so two rounds)
extern "C" __global__ void selftest_order(unsigned* log, unsigned* counter) {
    log[atomicAdd(counter, 1u)] = threadIdx.x;
    __syncthreads();
    log[atomicAdd(counter, 1u)] = threadIdx.x;
    __syncthreads();
}

extern "C" __global__ void selftest_err_divergent_barrier(int* out) {
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

// lane 0 waits at a shuffle for lanes that wait at the barrier for it
extern "C" __global__ void selftest_err_deadlock(int* out) {
    int v = threadIdx.x;
    if (threadIdx.x == 0) v = __shfl_sync(FULL_MASK, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}

extern "C" __global__ void selftest_err_exited_lane(int* out) {
    if (threadIdx.x == 5) return;
    out[threadIdx.x] = __shfl_sync(FULL_MASK, (int)threadIdx.x, 0);
}

extern "C" __global__ void selftest_err_outside_mask(int* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_sync(0x0000ffffu, (int)threadIdx.x, 20);
}

extern "C" __global__ void selftest_err_split_shuffle(int* out) {
    int v = threadIdx.x;
    if (threadIdx.x < 16) {
        v = __shfl_xor_sync(FULL_MASK, v, 16);
    } else {
        v = __shfl_xor_sync(FULL_MASK, v, 16);
    }
    out[threadIdx.x] = v;
}

extern "C" __global__ void __launch_bounds__(64) selftest_bounded(int* out) { out[threadIdx.x] = 1; }
