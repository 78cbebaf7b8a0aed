// runtime.cpp: the runtime of the CPU layer (cargo feature `cuda-sim`): it
// launches a kernel compiled from kernels/cu/*.cu as C++ (with
// include/cuda_sim.h) over a grid of blocks, every CUDA thread a fiber with
// its own stack, and implements the block barrier, the warp collectives
// (shuffles, votes, __syncwarp) and the tensor-core instructions
// (mma.m16n8k16 bf16 -> f32, ldmatrix) with CUDA's semantics.
//
// Why one file of ~1000 lines: the fiber scheduler, the barrier and the warp
// collectives share the scheduler's private state (the block's fiber table,
// the wait queues); splitting them would put that state in a header for
// every kernel translation unit to see.
//
// Execution model
// - A launch hands its blocks to W workers (OS threads; the calling thread is
//   worker 0). A worker runs one block at a time: one fiber per thread, all on
//   the worker's OS thread, switched by a small scheduler. A fiber runs until
//   it reaches a barrier or a warp collective (or exits); the scheduler then
//   picks the next ready fiber by the launch's schedule:
//     0 round robin (thread order, one run per thread per pass: lockstep-like)
//     1 lowest thread first (warp 0 runs ahead as far as it can)
//     2 highest thread first (the last warp runs ahead)
//     3 random (a seeded pick among the ready threads at every switch)
//   Different schedules give different interleavings at the granularity of
//   the synchronisation points; a kernel whose result depends on them has a
//   race (the Rust side's race mode runs several and compares every byte).
// - __syncthreads completes when every thread of the block that has not
//   exited has arrived; threads waiting at different __syncthreads lines are
//   reported as divergent (undefined behaviour on the GPU).
// - A warp collective completes when every lane of its mask has arrived;
//   lanes of one mask must meet at the same intrinsic and line, the caller
//   must be in its mask, a lane of the mask must not have exited, and a
//   shuffle must not read a lane outside the mask. Each is a launch error.
// - No thread able to run while some wait: a deadlock, reported with where
//   each thread waits.
// - mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 and ldmatrix gather
//   the 32 lanes' fragments with the PTX ISA layouts (section "Matrix
//   Fragments for mma.m16n8k16" and "ldmatrix"), compute the whole tile, and
//   hand each lane its fragment of the result. The products are exact and
//   the 16-term sums are accumulated in f64 and rounded once to f32: the
//   GPU's internal rounding inside the tensor core is not reproduced.
//
// Fibers switch with a few lines of x86-64 assembly (callee-saved registers,
// MXCSR and the x87 control word); other targets, or CUDA_SIM_UCONTEXT, use
// ucontext. With CUDA_SIM_TSAN the switches and the barriers are annotated
// for ThreadSanitizer (fibers as threads, no implied synchronisation between
// them; barriers and __syncwarp as release/acquire), so a shared-memory
// access pair not ordered by a barrier is reported as a data race.
#include "cuda_sim_api.h"
#include "cuda_sim_registry.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) && !defined(CUDA_SIM_UCONTEXT)
#define CUDA_SIM_ASM_SWITCH 1
#include <xmmintrin.h>
#else
#include <ucontext.h>
#endif

#ifdef CUDA_SIM_TSAN
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_set_fiber_name(void* fiber, const char* name);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#define TSAN_ACQUIRE(p) __tsan_acquire((void*)(p))
#define TSAN_RELEASE(p) __tsan_release((void*)(p))
#else
#define TSAN_ACQUIRE(p) ((void)0)
#define TSAN_RELEASE(p) ((void)0)
#endif

#ifdef CUDA_SIM_ASM_SWITCH
// void cuda_sim_switch(void** save_sp, void* to_sp): saves the callee-saved
// registers, MXCSR and the x87 control word on the current stack, stores the
// stack pointer in *save_sp, and resumes the context saved at to_sp.
// cuda_sim_fiber_entry: where a new fiber starts (r12 = argument, r13 = function).
extern "C" void cuda_sim_switch(void** save_sp, void* to_sp);
extern "C" void cuda_sim_fiber_entry(void);
asm(R"(
    .text
    .p2align 4
    .globl cuda_sim_switch
    .hidden cuda_sim_switch
    .type cuda_sim_switch,@function
cuda_sim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuda_sim_switch, .-cuda_sim_switch

    .p2align 4
    .globl cuda_sim_fiber_entry
    .hidden cuda_sim_fiber_entry
    .type cuda_sim_fiber_entry,@function
cuda_sim_fiber_entry:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size cuda_sim_fiber_entry, .-cuda_sim_fiber_entry
)");
#endif

namespace cuda_sim {

__thread const ThreadCtx* tl_thread = nullptr;
__thread const BlockCtx* tl_block = nullptr;

namespace {

constexpr int MAX_THREADS = 1024;
constexpr uint32_t FULL = 0xffffffffu;
// Dynamic shared memory a launch may ask for without the GPU's opt-in
// (cudaFuncAttributeMaxDynamicSharedMemorySize): 48 KiB.
constexpr uint32_t MAX_DYN_SMEM = 48 * 1024;
// With the opt-in: the most one block may have on sm_90 (227 KiB; sm_80: 163 KiB).
constexpr uint32_t MAX_DYN_SMEM_OPTIN = 227 * 1024;
#ifdef CUDA_SIM_TSAN
constexpr size_t STACK_BYTES = 512 * 1024;  // instrumented frames are larger
#else
constexpr size_t STACK_BYTES = 64 * 1024;
#endif

enum : uint8_t { F_READY, F_RUNNING, F_BLOCKED, F_EXITED };
enum : uint8_t { W_NONE, W_BAR, W_WARP };
enum : int { C_SHFL = 1, C_VOTE, C_SYNCWARP, C_MMA, C_LDM };

const char* coll_name(int kind, int sub) {
    switch (kind) {
        case C_SHFL:
            return sub == SHFL_IDX ? "__shfl_sync" : sub == SHFL_UP ? "__shfl_up_sync" : sub == SHFL_DOWN ? "__shfl_down_sync" : "__shfl_xor_sync";
        case C_VOTE:
            return sub == VOTE_BALLOT ? "__ballot_sync" : sub == VOTE_ANY ? "__any_sync" : "__all_sync";
        case C_SYNCWARP:
            return "__syncwarp";
        case C_MMA:
            return "mma.sync.m16n8k16";
        case C_LDM:
            return "ldmatrix";
    }
    return "?";
}

// the file name without its directories, for messages
const char* base(const char* f) {
    const char* s = strrchr(f, '/');
    return s ? s + 1 : f;
}

// One cp.async of a thread that has not landed yet.
struct CpAsync {
    void* dst;
    const void* src;
    int src_bytes;
    int group;  // the commit group it belongs to (-1: not committed yet)
};

struct Fiber {
    void* sp = nullptr;  // saved stack pointer (asm switch)
#ifndef CUDA_SIM_ASM_SWITCH
    ucontext_t uc;
#endif
    ThreadCtx ctx{};
    uint32_t tid = 0;
    uint8_t state = F_EXITED;
    uint8_t wait = W_NONE;
    const char* wfile = "";
    int wline = 0;
    int wkind = 0;
    unsigned wmask = 0;
    uint64_t out64 = 0;   // result of a shuffle, vote or barrier
    uint32_t out[4] = {}; // result of an mma (as f32 bits) or ldmatrix
    std::vector<CpAsync> cp_pending;  // this thread's cp.async copies that have not landed
    int cp_groups = 0;                // commit groups closed so far
    char* stack_lo = nullptr;  // lowest usable byte (a guard page below)
    char* stack_hi = nullptr;  // one past the highest, 16-byte aligned
    void* tsan = nullptr;
};

// One lane's operands of a pending collective.
struct Slot {
    uint64_t v;
    int32_t b, width;
    uint32_t a[4];
    uint32_t bb[2];
    float c[4];
};

struct Collective {
    int kind = 0, sub = 0;
    unsigned mask = 0, arrived = 0;
    const char* file = "";
    int line = 0;
    Slot slot[32];
};

struct Launch;

struct Rng {
    uint64_t s;
    uint64_t next() {
        // splitmix64
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
};

struct Worker {
    std::vector<Fiber> fibers;
#ifdef CUDA_SIM_ASM_SWITCH
    void* sched_sp = nullptr;
#else
    ucontext_t sched_uc;
#endif
    void* tsan_sched = nullptr;
    BlockCtx bctx{};
    Launch* L = nullptr;
    int nthreads = 0, live = 0, nwarps = 0;
    std::vector<uint64_t> ready;
    int rr = 0;
    // the block barrier
    int bar_count = 0, bar_mode = 0, bar_pop = 0;
    const char* bar_file = "";
    int bar_line = 0;
    std::vector<std::vector<Collective>> warps;  // pending collectives per warp
    unsigned char* dyn = nullptr;
    size_t dyn_cap = 0;
    Rng rng{0};
    bool abort_block = false;
    CudaSimStats st{};
    // ThreadSanitizer synchronisation objects (their addresses): the worker
    // releases block_start before a block, each fiber acquires it as it
    // starts; each fiber releases block_end as it exits, the worker acquires
    // it after the block. So one block's threads are ordered after the
    // previous block's on the worker (shared memory is reused), but never
    // after one another (a thread that exits does not order a later one).
    char sync_block_start = 0, sync_block_end = 0, sync_bar = 0, sync_warp[32] = {};
    ~Worker() {
        for (Fiber& f : fibers)
            if (f.stack_lo) munmap(f.stack_lo - getpagesize(), STACK_BYTES + getpagesize());
        free(dyn);
    }
};

struct Launch {
    const KernelEntry* k = nullptr;
    void* const* params = nullptr;
    dim3 grid, block;
    uint32_t smem = 0;
    int schedule = 0;
    uint64_t seed = 0;
    bool poison = true;
    std::vector<uint32_t> order;
    std::atomic<size_t> next{0};
    std::atomic<bool> abort{false};
    std::mutex err_m;
    std::string err;
    void fail(const std::string& msg) {
        std::lock_guard<std::mutex> g(err_m);
        if (err.empty()) err = msg;
        abort = true;
    }
};

__thread Worker* tl_worker = nullptr;
__thread Fiber* tl_fiber = nullptr;

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

// ---- fibers ------------------------------------------------------------------

void fiber_main(Fiber* f);

#ifndef CUDA_SIM_ASM_SWITCH
void fiber_main_uc(unsigned hi, unsigned lo) {
    fiber_main(reinterpret_cast<Fiber*>(((uintptr_t)hi << 32) | (uintptr_t)lo));
}
#endif

void ensure_fibers(Worker& w, int n) {
    const size_t page = (size_t)getpagesize();
    while ((int)w.fibers.size() < n) {
        w.fibers.emplace_back();
        Fiber& f = w.fibers.back();
        void* m = mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "cuda_sim: cannot map a fiber stack\n");
            abort();
        }
        mprotect(m, page, PROT_NONE);  // guard: an overflow faults instead of corrupting
        f.stack_lo = (char*)m + page;
        f.stack_hi = f.stack_lo + STACK_BYTES;
#ifdef CUDA_SIM_TSAN
        f.tsan = __tsan_create_fiber(0);
#endif
    }
}

// Prepares fiber f to start in fiber_main at its next switch.
void arm(Fiber& f) {
#ifdef CUDA_SIM_ASM_SWITCH
    uint64_t* sp = reinterpret_cast<uint64_t*>(f.stack_hi - 80);
    const uint64_t mxcsr = _mm_getcsr();
    const uint64_t fpucw = 0x037f;  // the x86-64 default: all exceptions masked, 64-bit, nearest
    sp[0] = mxcsr | (fpucw << 32);
    sp[1] = 0;                                                      // r15
    sp[2] = 0;                                                      // r14
    sp[3] = reinterpret_cast<uint64_t>(&fiber_main);                // r13: the function
    sp[4] = reinterpret_cast<uint64_t>(&f);                         // r12: its argument
    sp[5] = 0;                                                      // rbx
    sp[6] = 0;                                                      // rbp
    sp[7] = reinterpret_cast<uint64_t>(&cuda_sim_fiber_entry);      // return address
    f.sp = sp;  // after the pops and ret: rsp = stack_hi - 16, 16-byte aligned
#else
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = f.stack_lo;
    f.uc.uc_stack.ss_size = STACK_BYTES;
    f.uc.uc_link = nullptr;
    const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
    makecontext(&f.uc, (void (*)())fiber_main_uc, 2, (unsigned)(p >> 32), (unsigned)(p & 0xffffffffu));
#endif
}

// scheduler -> fiber f
void enter(Worker& w, Fiber& f) {
#ifdef CUDA_SIM_TSAN
    __tsan_switch_to_fiber(f.tsan, 1 /* no sync */);
#endif
#ifdef CUDA_SIM_ASM_SWITCH
    cuda_sim_switch(&w.sched_sp, f.sp);
#else
    swapcontext(&w.sched_uc, &f.uc);
#endif
}

// fiber f -> scheduler (returns when the scheduler resumes f)
void leave(Worker& w, Fiber& f) {
    w.st.switches++;
#ifdef CUDA_SIM_TSAN
    __tsan_switch_to_fiber(w.tsan_sched, 1 /* no sync */);
#endif
#ifdef CUDA_SIM_ASM_SWITCH
    cuda_sim_switch(&f.sp, w.sched_sp);
#else
    swapcontext(&f.uc, &w.sched_uc);
#endif
}

inline void set_ready(Worker& w, int i) {
    w.fibers[i].state = F_READY;
    w.ready[i >> 6] |= 1ull << (i & 63);
}

// The calling fiber gives the scheduler a choice (it stays ready).
void yield(Worker& w, Fiber& f) {
    set_ready(w, (int)f.tid);
    leave(w, f);
}

// A launch error found by fiber f: the launch stops, f never runs again.
[[noreturn]] void fail(Worker& w, Fiber& f, const std::string& msg) {
    const uint3 b = w.bctx.block_idx;
    const uint3 t = f.ctx.thread_idx;
    w.L->fail(fmt("block (%u,%u,%u) thread (%u,%u,%u): ", b.x, b.y, b.z, t.x, t.y, t.z) + msg);
    w.abort_block = true;
    f.state = F_BLOCKED;
    leave(w, f);
    __builtin_trap();  // the scheduler never resumes a failed fiber
}

int pick(Worker& w) {
    const int nw = (int)w.ready.size();
    switch (w.L->schedule) {
        case 1:  // lowest first
            for (int i = 0; i < nw; i++)
                if (w.ready[i]) return i * 64 + __builtin_ctzll(w.ready[i]);
            return -1;
        case 2:  // highest first
            for (int i = nw - 1; i >= 0; i--)
                if (w.ready[i]) return i * 64 + 63 - __builtin_clzll(w.ready[i]);
            return -1;
        case 3: {  // random among the ready
            int total = 0;
            for (int i = 0; i < nw; i++) total += __builtin_popcountll(w.ready[i]);
            if (total == 0) return -1;
            int k = (int)(w.rng.next() % (uint64_t)total);
            for (int i = 0; i < nw; i++) {
                uint64_t m = w.ready[i];
                const int c = __builtin_popcountll(m);
                if (k >= c) {
                    k -= c;
                    continue;
                }
                while (k-- > 0) m &= m - 1;
                return i * 64 + __builtin_ctzll(m);
            }
            return -1;
        }
        default: {  // round robin from the cursor
            const int n = w.nthreads;
            auto first_in = [&](int from, int to) -> int {  // first ready thread in [from, to)
                for (int i = from; i < to;) {
                    const uint64_t m = w.ready[i >> 6] >> (i & 63);
                    if (m) {
                        const int j = i + __builtin_ctzll(m);
                        return j < to ? j : -1;
                    }
                    i = (i | 63) + 1;
                }
                return -1;
            };
            int j = first_in(w.rr, n);
            if (j < 0) j = first_in(0, w.rr < n ? w.rr : n);
            if (j >= 0) w.rr = j + 1;
            return j;
        }
    }
}

// ---- the block barrier ---------------------------------------------------------

void release_barrier(Worker& w) {
    const int mode = w.bar_mode, pop = w.bar_pop, n = w.bar_count;
    const uint64_t res = mode == BAR_COUNT ? (uint64_t)pop : mode == BAR_AND ? (uint64_t)(pop == n) : mode == BAR_OR ? (uint64_t)(pop > 0) : 0;
    for (int i = 0; i < w.nthreads; i++) {
        Fiber& f = w.fibers[i];
        if (f.wait == W_BAR && f.state != F_EXITED) {  // the waiting ones and the caller
            f.out64 = res;
            f.wait = W_NONE;
            set_ready(w, i);
        }
    }
    w.bar_count = 0;
    w.bar_pop = 0;
    w.st.barriers++;
}

// ---- warp collectives ------------------------------------------------------------

// lanes of warp `warp` that exist (a partial last warp has fewer than 32)
unsigned warp_lanes(const Worker& w, int warp) {
    const int n = w.nthreads - warp * 32;
    return n >= 32 ? FULL : ((1u << n) - 1);
}

// fills out64 / out[] of every lane of a complete collective
void complete(Worker& w, Fiber& self, Collective& op, int warp) {
    const int base_tid = warp * 32;
    auto lane_fiber = [&](int l) -> Fiber& { return w.fibers[base_tid + l]; };
    switch (op.kind) {
        case C_SHFL: {
            for (int l = 0; l < 32; l++) {
                if (!(op.mask >> l & 1)) continue;
                const int width = op.slot[l].width;
                // PTX shfl.sync: c = ((32 - width) << 8) | clamp (0x1f; 0 for .up)
                const int segmask = (32 - width) & 0x1f;
                const int cval = op.sub == SHFL_UP ? 0 : 0x1f;
                const int bval = op.slot[l].b & 0x1f;
                const int maxl = (l & segmask) | (cval & ~segmask);
                const int minl = l & segmask;
                int j;
                bool p;
                switch (op.sub) {
                    case SHFL_UP:
                        j = l - bval;
                        p = j >= maxl;
                        break;
                    case SHFL_DOWN:
                        j = l + bval;
                        p = j <= maxl;
                        break;
                    case SHFL_BFLY:
                        j = l ^ bval;
                        p = j <= maxl;
                        break;
                    default:
                        j = minl | (bval & ~segmask);
                        p = j <= maxl;
                        break;
                }
                if (!p) j = l;
                if (!(op.mask >> j & 1))
                    fail(w, self, fmt("%s at %s:%d: lane %d reads lane %d, which is not in the mask %08x (undefined on the GPU)",
                                      coll_name(op.kind, op.sub), base(op.file), op.line, l, j, op.mask));
                lane_fiber(l).out64 = op.slot[j].v;
            }
            break;
        }
        case C_VOTE: {
            unsigned ballot = 0;
            for (int l = 0; l < 32; l++)
                if ((op.mask >> l & 1) && op.slot[l].b) ballot |= 1u << l;
            const uint64_t r = op.sub == VOTE_BALLOT ? ballot : op.sub == VOTE_ANY ? (ballot != 0) : (ballot == op.mask);
            for (int l = 0; l < 32; l++)
                if (op.mask >> l & 1) lane_fiber(l).out64 = r;
            break;
        }
        case C_SYNCWARP:
            break;
        case C_MMA: {
            // PTX ISA, mma.m16n8k16 with .bf16: groupID g = lane >> 2,
            // threadID_in_group c = lane % 4. Register r of a lane holds two
            // bf16, the lower-numbered element in the low half.
            //   A (16x16, row): a0 (g, 2c..2c+1)  a1 (g+8, 2c..)  a2 (g, 2c+8..)  a3 (g+8, 2c+8..)
            //   B (16x8, col):  b0 (k 2c..2c+1, n g)  b1 (k 2c+8..2c+9, n g)
            //   C, D (16x8 f32): c0, c1 (g, 2c..2c+1)  c2, c3 (g+8, 2c..2c+1)
            float A[16][16], B[16][8], C[16][8];
            for (int l = 0; l < 32; l++) {
                const int g = l >> 2, c = l & 3;
                const Slot& s = op.slot[l];
                for (int r = 0; r < 4; r++) {
                    const int row = g + ((r & 1) ? 8 : 0);
                    const int col = 2 * c + ((r & 2) ? 8 : 0);
                    A[row][col] = bf16_to_f32((uint16_t)(s.a[r] & 0xffff));
                    A[row][col + 1] = bf16_to_f32((uint16_t)(s.a[r] >> 16));
                }
                for (int r = 0; r < 2; r++) {
                    const int k = 2 * c + (r ? 8 : 0);
                    B[k][g] = bf16_to_f32((uint16_t)(s.bb[r] & 0xffff));
                    B[k + 1][g] = bf16_to_f32((uint16_t)(s.bb[r] >> 16));
                }
                C[g][2 * c] = s.c[0];
                C[g][2 * c + 1] = s.c[1];
                C[g + 8][2 * c] = s.c[2];
                C[g + 8][2 * c + 1] = s.c[3];
            }
            float D[16][8];
            for (int i = 0; i < 16; i++)
                for (int j = 0; j < 8; j++) {
                    double acc = 0.0;  // products of bf16 are exact in f64, and so is this sum
                    for (int k = 0; k < 16; k++) acc += (double)A[i][k] * (double)B[k][j];
                    D[i][j] = (float)(acc + (double)C[i][j]);
                }
            for (int l = 0; l < 32; l++) {
                const int g = l >> 2, c = l & 3;
                const float d[4] = {D[g][2 * c], D[g][2 * c + 1], D[g + 8][2 * c], D[g + 8][2 * c + 1]};
                memcpy(lane_fiber(l).out, d, 16);
            }
            w.st.mma++;
            break;
        }
        case C_LDM: {
            // ldmatrix .m8n8 .b16: lanes 8i..8i+7 give the row addresses of
            // matrix i (i < number of matrices); each row is 8 b16 (16 bytes).
            // Without .trans lane l gets, of every matrix, row l/4 elements
            // 2(l%4), 2(l%4)+1; with .trans, column l/4 rows 2(l%4), 2(l%4)+1.
            const int nmat = op.sub & 7, trans = op.sub >> 3;
            auto elem = [&](int m, int row, int col) -> uint32_t {
                const uint32_t word = op.slot[m * 8 + row].a[col / 2];
                return (col & 1) ? (word >> 16) : (word & 0xffff);
            };
            for (int l = 0; l < 32; l++) {
                Fiber& f = lane_fiber(l);
                for (int m = 0; m < nmat; m++) {
                    const int r = l / 4, c2 = 2 * (l % 4);
                    f.out[m] = trans ? (elem(m, c2, r) | (elem(m, c2 + 1, r) << 16)) : (elem(m, r, c2) | (elem(m, r, c2 + 1) << 16));
                }
            }
            break;
        }
    }
    w.st.collectives++;
}

// The calling lane joins the collective of its mask (starting it if it is
// the first), waits for the others, and returns once its result is in its
// fiber (out64 / out).
void collective(int kind, int sub, unsigned mask, const char* file, int line, const Slot& mine) {
    Worker& w = *tl_worker;
    Fiber& f = *tl_fiber;
    const int lane = (int)(f.tid & 31), warp = (int)(f.tid >> 5);
    const unsigned bit = 1u << lane;
    const char* name = coll_name(kind, sub);
    if (!(mask & bit))
        fail(w, f, fmt("%s at %s:%d with mask %08x that does not include the calling lane %d", name, base(file), line, mask, lane));
    const unsigned exist = warp_lanes(w, warp);
    if (mask & ~exist)
        fail(w, f, fmt("%s at %s:%d: mask %08x names lanes the block does not have (warp %d has %08x)", name, base(file), line, mask, warp, exist));
    if ((kind == C_MMA || kind == C_LDM) && mask != FULL)
        fail(w, f, fmt("%s at %s:%d needs all 32 lanes of the warp (.aligned), mask %08x", name, base(file), line, mask));
    std::vector<Collective>& ops = w.warps[warp];
    Collective* op = nullptr;
    for (Collective& o : ops) {
        if (!(o.mask & bit)) continue;
        if (o.mask != mask || o.kind != kind || o.sub != sub || o.line != line || strcmp(o.file, file) != 0)
            fail(w, f, fmt("lane %d reaches %s (mask %08x) at %s:%d while lanes %08x wait at %s (mask %08x) at %s:%d: the lanes of a mask must meet at the same intrinsic",
                           lane, name, mask, base(file), line, o.arrived, coll_name(o.kind, o.sub), o.mask, base(o.file), o.line));
        op = &o;
        break;
    }
    if (!op) {
        for (int l = 0; l < 32; l++)
            if ((mask >> l & 1) && w.fibers[warp * 32 + l].state == F_EXITED)
                fail(w, f, fmt("%s at %s:%d: lane %d of the mask %08x has exited", name, base(file), line, l, mask));
        ops.emplace_back();
        op = &ops.back();
        op->kind = kind;
        op->sub = sub;
        op->mask = mask;
        op->arrived = 0;
        op->file = file;
        op->line = line;
    }
    if (kind == C_SHFL && op->arrived && op->slot[__builtin_ctz(op->arrived)].width != mine.width)
        fail(w, f, fmt("%s at %s:%d: lanes pass different widths", name, base(file), line));
    op->slot[lane] = mine;
    op->arrived |= bit;
    f.wait = W_WARP;
    f.wfile = file;
    f.wline = line;
    f.wkind = kind;
    f.wmask = mask;
    if (op->arrived == op->mask) {
        complete(w, f, *op, warp);
        for (int l = 0; l < 32; l++) {
            if (!(mask >> l & 1)) continue;
            Fiber& o = w.fibers[warp * 32 + l];
            o.wait = W_NONE;
            if (l != lane) set_ready(w, warp * 32 + l);
        }
        ops.erase(ops.begin() + (op - ops.data()));
        yield(w, f);
    } else {
        f.state = F_BLOCKED;
        leave(w, f);
    }
}

// ---- one block -----------------------------------------------------------------------

void land(const CpAsync& c) {
    if (c.src_bytes > 0) memcpy(c.dst, c.src, (size_t)c.src_bytes);
    if (c.src_bytes < 16) memset((char*)c.dst + c.src_bytes, 0, (size_t)(16 - c.src_bytes));
}

void fiber_main(Fiber* f) {
    Worker& w = *tl_worker;
    TSAN_ACQUIRE(&w.sync_block_start);
    w.L->k->call(w.L->k->fn, w.L->params);
    // copies still in flight land (the hardware completes them after the thread exits)
    for (const CpAsync& c : f->cp_pending) land(c);
    f->cp_pending.clear();
    // the thread has exited
    TSAN_RELEASE(&w.sync_block_end);
    f->state = F_EXITED;
    f->wait = W_NONE;
    w.live--;
    const int lane = (int)(f->tid & 31), warp = (int)(f->tid >> 5);
    for (const Collective& o : w.warps[warp])
        if ((o.mask >> lane & 1) && !(o.arrived >> lane & 1)) {
            const uint3 b = w.bctx.block_idx;
            w.L->fail(fmt("block (%u,%u,%u): lane %d of warp %d exits while lanes %08x wait for it at %s (mask %08x) at %s:%d",
                          b.x, b.y, b.z, lane, warp, o.arrived, coll_name(o.kind, o.sub), o.mask, base(o.file), o.line));
            w.abort_block = true;
        }
    if (w.bar_count > 0 && w.bar_count == w.live) release_barrier(w);
    leave(w, *f);
    __builtin_trap();  // an exited fiber is never resumed
}

std::string ranges(const std::vector<int>& ids) {
    std::string s;
    for (size_t i = 0; i < ids.size();) {
        size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) j++;
        if (!s.empty()) s += ",";
        s += j == i ? fmt("%d", ids[i]) : fmt("%d-%d", ids[i], ids[j]);
        i = j + 1;
    }
    return s;
}

void report_deadlock(Worker& w) {
    // group the waiting threads by where they wait
    struct Group {
        int wait, kind;
        const char* file;
        int line;
        unsigned mask;
        std::vector<int> ids;
    };
    std::vector<Group> gs;
    for (int i = 0; i < w.nthreads; i++) {
        const Fiber& f = w.fibers[i];
        if (f.state != F_BLOCKED) continue;
        Group* g = nullptr;
        for (Group& x : gs)
            if (x.wait == f.wait && x.kind == f.wkind && x.line == f.wline && x.mask == f.wmask && strcmp(x.file, f.wfile) == 0) g = &x;
        if (!g) {
            gs.push_back(Group{f.wait, f.wkind, f.wfile, f.wline, f.wmask, {}});
            g = &gs.back();
        }
        g->ids.push_back(i);
    }
    const uint3 b = w.bctx.block_idx;
    std::string msg = fmt("deadlock in block (%u,%u,%u), %d threads alive:", b.x, b.y, b.z, w.live);
    for (const Group& g : gs) {
        if (g.wait == W_BAR)
            msg += fmt(" threads %s wait at __syncthreads (%s:%d);", ranges(g.ids).c_str(), base(g.file), g.line);
        else
            msg += fmt(" threads %s wait at %s (mask %08x, %s:%d);", ranges(g.ids).c_str(), coll_name(g.kind, 0), g.mask, base(g.file), g.line);
    }
    w.L->fail(msg);
}

void run_block(Worker& w, Launch& L, uint32_t lb) {
    const dim3 g = L.grid, bd = L.block;
    w.bctx.block_idx = uint3{lb % g.x, (lb / g.x) % g.y, lb / (g.x * g.y)};
    w.bctx.block_dim = bd;
    w.bctx.grid_dim = g;
    w.bctx.dyn_smem = w.dyn;
    tl_block = &w.bctx;
    const int n = (int)(bd.x * bd.y * bd.z);
    w.nthreads = n;
    w.live = n;
    w.nwarps = (n + 31) / 32;
    w.ready.assign((size_t)(n + 63) / 64, 0);
    w.rr = 0;
    w.bar_count = 0;
    w.bar_pop = 0;
    w.abort_block = false;
    for (int i = 0; i < w.nwarps; i++) w.warps[i].clear();
    w.rng.s = L.seed ^ (0x5851F42D4C957F2Dull * (uint64_t)(lb + 1));
    if (L.poison && L.smem) memset(w.dyn, 0xff, L.smem);
    for (int i = 0; i < n; i++) {
        Fiber& f = w.fibers[i];
        f.tid = (uint32_t)i;
        f.ctx.thread_idx = uint3{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
        f.wait = W_NONE;
        f.cp_pending.clear();
        f.cp_groups = 0;
        arm(f);
        set_ready(w, i);
    }
    TSAN_RELEASE(&w.sync_block_start);
    for (;;) {
        const int i = pick(w);
        if (i < 0) break;
        Fiber& f = w.fibers[i];
        w.ready[i >> 6] &= ~(1ull << (i & 63));
        f.state = F_RUNNING;
        tl_fiber = &f;
        tl_thread = &f.ctx;
        enter(w, f);
        if (w.abort_block || L.abort) break;
    }
    TSAN_ACQUIRE(&w.sync_block_end);
    tl_fiber = nullptr;
    tl_thread = nullptr;
    if (!w.abort_block && !L.abort && w.live > 0) report_deadlock(w);
    w.st.blocks++;
    w.st.threads += (uint64_t)n;
}

void run_worker(Worker& w, Launch& L) {
    tl_worker = &w;
    w.L = &L;
#ifdef CUDA_SIM_TSAN
    w.tsan_sched = __tsan_get_current_fiber();
#endif
    const int n = (int)(L.block.x * L.block.y * L.block.z);
    ensure_fibers(w, n);
    if ((int)w.warps.size() < (n + 31) / 32) w.warps.resize((size_t)(n + 31) / 32);
    if (w.dyn_cap < L.smem) {
        free(w.dyn);
        w.dyn_cap = (L.smem + 127) & ~127u;
        if (posix_memalign(reinterpret_cast<void**>(&w.dyn), 128, w.dyn_cap) != 0) {
            L.fail("cannot allocate dynamic shared memory");
            return;
        }
    }
    for (;;) {
        if (L.abort) break;
        const size_t i = L.next.fetch_add(1);
        if (i >= L.order.size()) break;
        run_block(w, L, L.order[i]);
    }
    tl_worker = nullptr;
    tl_block = nullptr;
}

std::mutex g_launch;                             // one launch at a time (one device)
std::vector<std::unique_ptr<Worker>> g_workers;  // kept: fiber stacks are reused

const KernelEntry* find_kernel(const char* name) {
    int nt = 0;
    const TableFn* tables = cuda_sim_tables(&nt);
    for (int t = 0; t < nt; t++) {
        int n = 0;
        const KernelEntry* e = tables[t](&n);
        for (int i = 0; i < n; i++)
            if (strcmp(e[i].name, name) == 0) return &e[i];
    }
    return nullptr;
}

const KernelEntry* kernel_at(int i) {
    int nt = 0;
    const TableFn* tables = cuda_sim_tables(&nt);
    for (int t = 0; t < nt; t++) {
        int n = 0;
        const KernelEntry* e = tables[t](&n);
        if (i < n) return &e[i];
        i -= n;
    }
    return nullptr;
}

const char* kind_name(int k) { return k == ARG_PTR ? "pointer" : k == ARG_INT ? "integer" : k == ARG_FLOAT ? "float" : "other"; }

}  // namespace

// ---- collectives called from the kernels (cuda_sim.h) ------------------------------

uint64_t shfl(int mode, unsigned mask, uint64_t bits, int b, int width, const char* file, int line) {
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail(*tl_worker, *tl_fiber, fmt("%s at %s:%d: width %d is not a power of two in 1..32", coll_name(C_SHFL, mode), base(file), line, width));
    Slot s{};
    s.v = bits;
    s.b = b;
    s.width = width;
    collective(C_SHFL, mode, mask, file, line, s);
    return tl_fiber->out64;
}

unsigned vote(int mode, unsigned mask, int pred, const char* file, int line) {
    Slot s{};
    s.b = pred != 0;
    collective(C_VOTE, mode, mask, file, line, s);
    return (unsigned)tl_fiber->out64;
}

void syncwarp(unsigned mask, const char* file, int line) {
    Worker& w = *tl_worker;
    const int warp = (int)(tl_fiber->tid >> 5);
    (void)w;
    (void)warp;
    TSAN_RELEASE(&w.sync_warp[warp]);
    Slot s{};
    collective(C_SYNCWARP, 0, mask, file, line, s);
    TSAN_ACQUIRE(&w.sync_warp[warp]);
}

void mma_m16n8k16_bf16_f32(float* d, const uint32_t* a, uint32_t b0, uint32_t b1, const char* file, int line) {
    Slot s{};
    memcpy(s.a, a, 16);
    s.bb[0] = b0;
    s.bb[1] = b1;
    memcpy(s.c, d, 16);
    collective(C_MMA, 0, FULL, file, line, s);
    memcpy(d, tl_fiber->out, 16);
}

void ldmatrix(uint32_t* r, int nmat, int trans, const uint32_t* row, const char* file, int line) {
    Slot s{};
    memcpy(s.a, row, 16);
    collective(C_LDM, nmat | (trans << 3), FULL, file, line, s);
    memcpy(r, tl_fiber->out, 4 * (size_t)nmat);
}

void cp_async(void* dst, const void* src, int src_bytes, const char* file, int line) {
    Worker& w = *tl_worker;
    Fiber& f = *tl_fiber;
    if (((uintptr_t)dst & 15) || ((uintptr_t)src & 15))
        fail(w, f, fmt("cp.async at %s:%d: a 16-byte copy needs 16-byte aligned addresses (dst %p, src %p)", base(file), line, dst, src));
    if (src_bytes < 0 || src_bytes > 16) fail(w, f, fmt("cp.async at %s:%d: src-size %d is not in 0..16", base(file), line, src_bytes));
    memset(dst, 0xff, 16);  // undefined until the copy lands: NaN for whoever reads it too early
    f.cp_pending.push_back(CpAsync{dst, src, src_bytes, -1});
}

void cp_async_commit() {
    Fiber& f = *tl_fiber;
    for (CpAsync& c : f.cp_pending)
        if (c.group < 0) c.group = f.cp_groups;
    f.cp_groups++;
}

void cp_async_wait(int n, const char* file, int line) {
    Fiber& f = *tl_fiber;
    if (n < 0) fail(*tl_worker, f, fmt("cp.async.wait_group at %s:%d: negative count %d", base(file), line, n));
    // every committed group but the n most recent lands
    const int limit = f.cp_groups - n;
    size_t keep = 0;
    for (size_t i = 0; i < f.cp_pending.size(); i++) {
        const CpAsync& c = f.cp_pending[i];
        if (c.group >= 0 && c.group < limit)
            land(c);
        else
            f.cp_pending[keep++] = c;
    }
    f.cp_pending.resize(keep);
}

unsigned activemask() {
    const Worker& w = *tl_worker;
    const int warp = (int)(tl_fiber->tid >> 5);
    unsigned m = 0;
    for (int l = 0; l < 32 && warp * 32 + l < w.nthreads; l++)
        if (w.fibers[warp * 32 + l].state != F_EXITED) m |= 1u << l;
    return m;
}

int syncthreads(int mode, int pred, const char* file, int line) {
    Worker& w = *tl_worker;
    Fiber& f = *tl_fiber;
    if (w.bar_count == 0) {
        w.bar_file = file;
        w.bar_line = line;
        w.bar_mode = mode;
    } else if (w.bar_line != line || w.bar_mode != mode || strcmp(w.bar_file, file) != 0) {
        fail(w, f, fmt("divergent __syncthreads: this thread at %s:%d, %d thread(s) wait at %s:%d", base(file), line, w.bar_count, base(w.bar_file), w.bar_line));
    }
    w.bar_count++;
    w.bar_pop += pred != 0;
    TSAN_RELEASE(&w.sync_bar);
    f.wait = W_BAR;
    f.wfile = file;
    f.wline = line;
    f.wkind = 0;
    f.wmask = 0;
    if (w.bar_count == w.live) {
        release_barrier(w);  // marks this fiber ready too
    } else {
        f.state = F_BLOCKED;
    }
    leave(w, f);
    TSAN_ACQUIRE(&w.sync_bar);
    return (int)f.out64;
}

}  // namespace cuda_sim

// ---- the C interface ---------------------------------------------------------------

using namespace cuda_sim;

extern "C" int cuda_sim_launch(const CudaSimLaunch* req, CudaSimStats* stats, char* err, size_t errlen) {
    auto refuse = [&](const std::string& m) {
        if (err && errlen) snprintf(err, errlen, "%s", m.c_str());
        return 1;
    };
    const KernelEntry* k = find_kernel(req->kernel);
    if (!k) return refuse(fmt("no kernel `%s` in the CPU layer", req->kernel));
    if (req->nargs != k->nargs) return refuse(fmt("`%s` takes %d arguments, the launch passes %d", k->name, k->nargs, req->nargs));
    for (int i = 0; i < k->nargs; i++) {
        if (req->args[i].kind != k->sig[i].kind || req->args[i].size != k->sig[i].size)
            return refuse(fmt("`%s` argument %d: the kernel takes a %d-byte %s, the launch passes a %d-byte %s", k->name, i, k->sig[i].size,
                              kind_name(k->sig[i].kind), req->args[i].size, kind_name(req->args[i].kind)));
        if (!req->params[i]) return refuse(fmt("`%s` argument %d: null parameter pointer", k->name, i));
    }
    const dim3 grid(req->grid[0], req->grid[1], req->grid[2]), block(req->block[0], req->block[1], req->block[2]);
    const uint64_t nthreads = (uint64_t)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nthreads == 0) return refuse("empty grid or block");
    if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) return refuse(fmt("grid (%u,%u,%u) exceeds the CUDA limits", grid.x, grid.y, grid.z));
    if (nthreads > (uint64_t)MAX_THREADS || block.x > 1024 || block.y > 1024 || block.z > 64)
        return refuse(fmt("block (%u,%u,%u) exceeds the CUDA limits", block.x, block.y, block.z));
    if (k->max_threads > 0 && nthreads > (uint64_t)k->max_threads)
        return refuse(fmt("`%s`: %llu threads per block exceed its __launch_bounds__(%d)", k->name, (unsigned long long)nthreads, k->max_threads));
    if (!req->smem_optin && req->smem > MAX_DYN_SMEM)
        return refuse(fmt("%u bytes of dynamic shared memory exceed the %u a launch may use without opt-in", req->smem, MAX_DYN_SMEM));
    if (req->smem > MAX_DYN_SMEM_OPTIN) return refuse(fmt("%u bytes of dynamic shared memory exceed the %u of a block on sm_90", req->smem, MAX_DYN_SMEM_OPTIN));
    const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
    if (nblocks > 0xffffffffull) return refuse("too many blocks for the CPU layer");

    std::lock_guard<std::mutex> lock(g_launch);
    Launch L;
    L.k = k;
    L.params = req->params;
    L.grid = grid;
    L.block = block;
    L.smem = req->smem;
    L.schedule = req->schedule;
    L.seed = req->seed;
    L.poison = req->poison_smem != 0;
    L.order.resize((size_t)nblocks);
    for (uint64_t i = 0; i < nblocks; i++) L.order[i] = (uint32_t)i;
    if (req->block_order == 1) {
        for (size_t i = 0; i < L.order.size() / 2; i++) std::swap(L.order[i], L.order[L.order.size() - 1 - i]);
    } else if (req->block_order == 2) {
        Rng r{req->seed ^ 0xB10C0DE5ull};
        for (size_t i = L.order.size(); i > 1; i--) std::swap(L.order[i - 1], L.order[r.next() % i]);
    }
    int nw = req->workers > 0 ? req->workers : (int)std::thread::hardware_concurrency();
    if (nw < 1) nw = 1;
    if ((uint64_t)nw > nblocks) nw = (int)nblocks;
    while ((int)g_workers.size() < nw) g_workers.emplace_back(new Worker());
    for (int i = 0; i < nw; i++) g_workers[i]->st = CudaSimStats{};
    std::vector<std::thread> threads;
    for (int i = 1; i < nw; i++) threads.emplace_back([&L, i] { run_worker(*g_workers[i], L); });
    run_worker(*g_workers[0], L);
    for (std::thread& t : threads) t.join();
    if (stats) {
        *stats = CudaSimStats{};
        for (int i = 0; i < nw; i++) {
            const CudaSimStats& s = g_workers[i]->st;
            stats->blocks += s.blocks;
            stats->threads += s.threads;
            stats->switches += s.switches;
            stats->barriers += s.barriers;
            stats->collectives += s.collectives;
            stats->mma += s.mma;
        }
    }
    if (!L.err.empty()) return refuse(fmt("`%s` grid (%u,%u,%u) block (%u,%u,%u): ", k->name, grid.x, grid.y, grid.z, block.x, block.y, block.z) + L.err);
    return 0;
}

extern "C" int cuda_sim_kernel_count(void) {
    int nt = 0, total = 0;
    const TableFn* tables = cuda_sim_tables(&nt);
    for (int t = 0; t < nt; t++) {
        int n = 0;
        tables[t](&n);
        total += n;
    }
    return total;
}

extern "C" int cuda_sim_kernel_info(int i, const char** name, int* nargs, int* max_threads) {
    const KernelEntry* e = kernel_at(i);
    if (!e) return 1;
    *name = e->name;
    *nargs = e->nargs;
    *max_threads = e->max_threads;
    return 0;
}

extern "C" int cuda_sim_kernel_arg(int i, int a, int* kind, int* size) {
    const KernelEntry* e = kernel_at(i);
    if (!e || a < 0 || a >= e->nargs) return 1;
    *kind = e->sig[a].kind;
    *size = e->sig[a].size;
    return 0;
}
