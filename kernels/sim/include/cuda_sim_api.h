// cuda_sim_api.h: the C interface of the CPU layer's runtime (runtime.cpp),
// used by kernels/src/cuda/sim.rs (which declares the same structs with
// #[repr(C)]) and by the ThreadSanitizer harness (tests/tsan_main.cpp).
#pragma once
#include <stddef.h>
#include <stdint.h>

extern "C" {
struct CudaSimArg {
    int32_t kind;  // 1 pointer, 2 integer, 3 float (cuda_sim::ArgKind)
    int32_t size;  // bytes
};
struct CudaSimLaunch {
    const char* kernel;
    uint32_t grid[3];
    uint32_t block[3];
    uint32_t smem;  // dynamic shared memory, bytes
    void* const* params;
    const CudaSimArg* args;
    int32_t nargs;
    int32_t schedule;     // 0 round robin, 1 lowest first, 2 highest first, 3 random
    uint64_t seed;        // of the random schedule and block order
    int32_t workers;      // OS threads (0: all cores)
    int32_t block_order;  // 0 in order, 1 reversed, 2 shuffled
    int32_t poison_smem;  // fill dynamic shared memory with 0xff at every block start
    int32_t smem_optin;   // the launch raised the kernel's dynamic shared memory limit
                          // (cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES on the GPU)
};
struct CudaSimStats {
    uint64_t blocks, threads, switches, barriers, collectives, mma;
};
int cuda_sim_launch(const CudaSimLaunch* req, CudaSimStats* stats, char* err, size_t errlen);
int cuda_sim_kernel_count(void);
int cuda_sim_kernel_info(int i, const char** name, int* nargs, int* max_threads);
int cuda_sim_kernel_arg(int i, int a, int* kind, int* size);
}

