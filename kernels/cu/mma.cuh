// mma.cuh: the tensor-core instructions the kernels use, one wrapper each.
//
//   mma16816(d, a, b0, b1)   d (4 f32) += A (4 x bf16x2) · B (2 x bf16x2):
//                            mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32,
//                            fragments as the PTX ISA lays them out (attention_mma.cu)
//   ldmatrix_x{1,2,4}[_trans](r, p)
//                            ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16:
//                            r gets 1, 2 or 4 words; lanes 8i..8i+7 pass the row
//                            addresses of matrix i (16-byte rows in shared memory).
//                            (attention_v3.cu; `.trans` gives the B operand of P·V
//                            from V stored key-major)
//   cp_async16(dst, src, n)  cp.async.cg.shared.global [dst], [src], 16, n: an
//                            asynchronous 16-byte global -> shared copy, bytes n..15
//                            zero-filled (n = 0: nothing is read); both 16-byte aligned
//   cp_async_commit()        cp.async.commit_group: the copies issued since the last
//                            commit form a group
//   cp_async_wait<N>()       cp.async.wait_group N: every group but the N most recent
//                            has landed (for this thread; other threads see the data
//                            after a barrier)
//
// On the GPU each wrapper is its PTX instruction (inline asm). The CPU layer
// (kernels/sim, which defines CUDA_SIM) provides the same names, emulated
// warp-collectively from the PTX ISA fragment layouts.
#pragma once
#include "common.cuh"

#ifndef CUDA_SIM
__device__ __forceinline__ void mma16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x1(uint32_t* r, const void* p) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t* r, const void* p) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t* r, const void* p) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t* r, const void* p) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* p) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif
