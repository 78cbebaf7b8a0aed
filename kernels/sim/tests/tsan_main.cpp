// tsan_main.cpp: runs one kernel on the CPU layer for the ThreadSanitizer
// test (kernels/tests/sim_tsan.rs), which compiles the kernels with
// -fsanitize=thread and the runtime with CUDA_SIM_TSAN (every CUDA thread a
// ThreadSanitizer fiber, barriers and __syncwarp as release/acquire, nothing
// else ordering the threads of a block). A pair of accesses to the same
// shared or global address, one a write, not ordered by a barrier, is then
// reported as a data race.
//
//   tsan_harness <kernel> [arg]     exit 0: the launch succeeded (TSan adds
//                                   its report and exit code 66 on a race)
//
// Shapes are small but take every path that synchronises: several blocks on
// two workers, block reductions, more than one K/V tile in the tensor-core
// kernels (t = 70 > 64), GQA (2 query heads per KV head).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "cuda_sim.h"
#include "cuda_sim_api.h"

namespace {

uint64_t g_rng = 88172645463325252ull;
float rnd() {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) & 0xffffff) / (float)(1 << 24) * 2.0f - 1.0f;
}

template <class T>
T* buf(size_t n) {
    void* p = aligned_alloc(256, ((n * sizeof(T)) + 255) / 256 * 256 + 256);
    memset(p, 0, n * sizeof(T));
    return static_cast<T*>(p);
}
uint16_t* bf16_rand(size_t n) {
    uint16_t* p = buf<uint16_t>(n);
    for (size_t i = 0; i < n; i++) p[i] = cuda_sim::f32_to_bf16_rn(rnd());
    return p;
}
float* f32_rand(size_t n, float lo = -1.f) {
    float* p = buf<float>(n);
    for (size_t i = 0; i < n; i++) p[i] = lo < 0 ? rnd() : lo + 0.5f * (rnd() + 1.f);
    return p;
}

struct Args {
    std::vector<uint64_t> slots;
    std::vector<CudaSimArg> sig;
    void ptr(const void* p) { push((uint64_t)(uintptr_t)p, 1, 8); }
    void i32(int v) {
        uint64_t s = 0;
        memcpy(&s, &v, 4);
        push(s, 2, 4);
    }
    void i64(int64_t v) {
        uint64_t s;
        memcpy(&s, &v, 8);
        push(s, 2, 8);
    }
    void f32(float v) {
        uint64_t s = 0;
        memcpy(&s, &v, 4);
        push(s, 3, 4);
    }
    void push(uint64_t s, int kind, int size) {
        slots.push_back(s);
        sig.push_back(CudaSimArg{kind, size});
    }
    int run(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned block, unsigned smem) {
        std::vector<void*> params;
        for (uint64_t& s : slots) params.push_back(&s);
        CudaSimLaunch req{};
        req.kernel = name;
        req.grid[0] = gx;
        req.grid[1] = gy;
        req.grid[2] = gz;
        req.block[0] = block;
        req.block[1] = 1;
        req.block[2] = 1;
        req.smem = smem;
        req.params = params.data();
        req.args = sig.data();
        req.nargs = (int32_t)sig.size();
        req.schedule = 0;
        req.workers = 2;
        req.poison_smem = 1;
        char err[2048] = {0};
        CudaSimStats st{};
        const int rc = cuda_sim_launch(&req, &st, err, sizeof err);
        if (rc != 0) fprintf(stderr, "launch failed: %s\n", err);
        else printf("%s: %llu blocks, %llu threads, %llu barriers, %llu collectives\n", name, (unsigned long long)st.blocks,
                    (unsigned long long)st.threads, (unsigned long long)st.barriers, (unsigned long long)st.collectives);
        return rc;
    }
};

int ends_with(const std::string& s, const char* t) {
    const size_t n = strlen(t);
    return s.size() >= n && s.compare(s.size() - n, n, t) == 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: tsan_harness <kernel> [arg]\n");
        return 2;
    }
    const std::string k = argv[1];
    const int arg = argc > 2 ? atoi(argv[2]) : 0;
    Args a;
    // attention: b 1, t 70, 2 query heads on 1 KV head, hd 64
    const int b = 1, t = 70, nh = 2, nkv = 1, hd = 64;
    if (ends_with(k, "cross_entropy_fwd_bwd_bf16")) {
        const int n = 4, v = 97;  // v % 8 != 0: the scalar path
        uint16_t* logits = bf16_rand((size_t)n * v);
        float* losses = buf<float>(n);
        int32_t* targets = buf<int32_t>(n);
        for (int i = 0; i < n; i++) targets[i] = (i * 37 + 11) % v;
        a.ptr(logits), a.ptr(losses), a.ptr(targets), a.ptr(nullptr), a.f32(1.0f / n), a.i32(1), a.i32(n), a.i32(v);
        return a.run(k.c_str(), n, 1, 1, 512, 0);
    }
    if (k == "rmsnorm_fwd_bf16") {
        const int n = 3, c = 512;
        a.ptr(buf<uint16_t>((size_t)n * c)), a.ptr(buf<float>(n)), a.ptr(bf16_rand((size_t)n * c)), a.ptr(bf16_rand(c)), a.i32(n), a.i32(c), a.f32(1e-5f);
        return a.run(k.c_str(), n, 1, 1, 256, 0);
    }
    if (k == "rmsnorm_bwd_bf16") {
        const int n = 3, c = 512;
        a.ptr(buf<uint16_t>((size_t)n * c)), a.ptr(buf<float>((size_t)n * c)), a.ptr(bf16_rand((size_t)n * c)), a.ptr(bf16_rand((size_t)n * c));
        a.ptr(bf16_rand(c)), a.ptr(f32_rand(n, 0.5f)), a.i32(n), a.i32(c), a.i32(0);
        return a.run(k.c_str(), n, 1, 1, 256, c * 4);
    }
    if (k == "sum_squares_f32") {
        const int64_t n = 5003;
        a.ptr(buf<double>(3)), a.ptr(f32_rand(n)), a.i64(n);
        return a.run(k.c_str(), 3, 1, 1, 256, 0);
    }
    if (ends_with(k, "attention_fwd_d64_bf16") || ends_with(k, "attention_fwd_mma_d64_bf16")) {
        const size_t ql = (size_t)b * t * nh * hd, kl = (size_t)b * t * nkv * hd;
        a.ptr(buf<uint16_t>(ql)), a.ptr(buf<float>((size_t)b * nh * t)), a.ptr(bf16_rand(ql)), a.ptr(bf16_rand(kl)), a.ptr(bf16_rand(kl));
        a.i32(b), a.i32(t), a.i32(t), a.i32(t), a.i32(nh), a.i32(nkv);
        const bool mma = k.find("mma") != std::string::npos;
        return a.run(k.c_str(), mma ? (t + 63) / 64 : (t + 3) / 4, nh, b, 128, 0);
    }
    if (ends_with(k, "attention_bwd_dq_mma_d64_bf16") || ends_with(k, "attention_bwd_dq_d64_bf16")) {
        const size_t ql = (size_t)b * t * nh * hd, kl = (size_t)b * t * nkv * hd;
        a.ptr(buf<uint16_t>(ql)), a.ptr(bf16_rand(ql)), a.ptr(bf16_rand(ql)), a.ptr(bf16_rand(kl)), a.ptr(bf16_rand(kl));
        a.ptr(f32_rand((size_t)b * nh * t, 1.0f)), a.ptr(f32_rand((size_t)b * nh * t));
        a.i32(b), a.i32(t), a.i32(nh), a.i32(nkv);
        const bool mma = k.find("mma") != std::string::npos;
        return a.run(k.c_str(), mma ? (t + 63) / 64 : (t + 3) / 4, nh, b, 128, 0);
    }
    if (ends_with(k, "attention_bwd_dkdv_mma_d64_bf16") || ends_with(k, "attention_bwd_dkdv_d64_bf16")) {
        const size_t ql = (size_t)b * t * nh * hd, kl = (size_t)b * t * nkv * hd;
        a.ptr(buf<uint16_t>(kl)), a.ptr(buf<uint16_t>(kl)), a.ptr(bf16_rand(ql)), a.ptr(bf16_rand(ql)), a.ptr(bf16_rand(kl));
        a.ptr(bf16_rand(kl)), a.ptr(f32_rand((size_t)b * nh * t, 1.0f)), a.ptr(f32_rand((size_t)b * nh * t));
        a.i32(b), a.i32(t), a.i32(nh), a.i32(nkv);
        const bool mma = k.find("mma") != std::string::npos;
        return a.run(k.c_str(), mma ? (t + 63) / 64 : (t + 3) / 4, nkv, b, 128, 0);
    }
    if (k == "selftest_smem_reverse") {
        const int n = 128, blocks = 2;
        a.ptr(buf<float>((size_t)n * blocks)), a.ptr(f32_rand((size_t)n * blocks)), a.i32(arg);
        return a.run(k.c_str(), blocks, 1, 1, n, 0);
    }
    fprintf(stderr, "tsan_harness: no setup for kernel `%s`\n", k.c_str());
    return 2;
}
