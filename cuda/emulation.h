// The CUDA execution model on the CPU, for the emulated build of cuda/ only (cuda/emulated.cpp
// includes this header, then the very same .cu files nvcc compiles). Nothing here is used by
// the GPU build, and no kernel source has an #ifdef: what differs between the two builds is in
// this header and in the two macros of cuda/launch.h.
//
// How a launch runs:
// - Blocks are distributed over a few OS worker threads (FEATGS_EMULATION_THREADS, default:
//   the hardware threads, at most 8); each worker runs its blocks one after another.
// - Inside a block, every CUDA thread is a fiber with its own stack (64 KiB + a guard page) on
//   the worker's OS thread; threadIdx/blockIdx/blockDim/gridDim are that thread's values. A
//   fiber runs until it blocks at a barrier, then switches directly to the next runnable
//   fiber of the block (a hand-written x86-64 stack switch; ucontext elsewhere or with
//   FEATGS_EMULATION_UCONTEXT=1). Measured on this project's 2-core CI-like machine: a
//   __syncthreads of 256 threads ~13 us, a warp shuffle ~3 us; with ucontext 390 us and 48 us;
//   with one OS thread per CUDA thread and std::barrier, 820 us per __syncthreads (and 11 ms
//   to create a block's 256 threads), hence fibers.
// - __syncthreads()/__syncthreads_count/_and/_or are real barriers over the block's live
//   threads (threads that returned count as arrived, as on sm_70+); warp collectives
//   (__shfl_*_sync, __ballot_sync, __any_sync, __all_sync, __syncwarp) are barriers over the
//   32 lanes of a warp (linear thread id / 32) with a double-buffered exchange area, so they
//   have warp semantics: every lane of the mask must arrive, and a lane reads the value its
//   source lane passed in at the same collective.
// - A block whose fibers all wait and cannot be released (a __syncthreads in divergent code, a
//   warp collective not reached by every lane, lanes at different collectives, a partial
//   mask) fails the launch with a message; cudaGetLastError() returns it. So does an invalid
//   launch configuration (more than 1024 threads, more than 48 KiB of dynamic shared memory).
// - Dynamic shared memory is one buffer per worker, filled with 0xFF (NaN as float, -1 as int)
//   before each block, and ends at a guard page: reads of unwritten shared memory show as NaN,
//   writes past its end fault.
// - Atomics are std::atomic_ref operations (blocks of different workers run concurrently).
// - Math: __expf and friends are the accurate libm functions (the GPU's are approximations
//   within a few ulp); no FMA contraction is assumed. half/bfloat16 convert with
//   round-to-nearest-even, as CUDA and torch do.
#pragma once

#define FEATGS_EMULATION 1
#define FEATGS_ON_HOST 1

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

// ---------------------------------------------------------------------------------------------
// Keywords.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __noinline__ __attribute__((noinline))

// ---------------------------------------------------------------------------------------------
// Vector types, with CUDA's sizes and alignments.
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return {x, y, z}; }
};
struct alignas(8) float2 {
    float x, y;
};
struct float3 {
    float x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float3 make_float3(float x, float y, float z) { return {x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
static_assert(sizeof(float2) == 8 && sizeof(float3) == 12 && sizeof(float4) == 16, "CUDA vector layouts");

// ---------------------------------------------------------------------------------------------
// Half precision types: storage-compatible with CUDA's (and torch's) 16-bit formats.
struct __half {
    unsigned short __x;
};
struct __nv_bfloat16 {
    unsigned short __x;
};

inline float __half2float(__half h) {
    const uint32_t sign = uint32_t(h.__x & 0x8000u) << 16;
    const uint32_t exp = (h.__x >> 10) & 0x1fu;
    const uint32_t mant = h.__x & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
        float v = std::ldexp(float(mant), -24);
        std::memcpy(&bits, &v, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline __half __float2half_rn(float f) {  // round to nearest even
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    uint32_t h;
    if (ax >= 0x7f800000u) {
        h = ax > 0x7f800000u ? 0x7e00u : 0x7c00u;  // NaN, inf
    } else if (ax >= 0x477ff000u) {
        h = 0x7c00u;  // >= 65520 rounds to inf
    } else if (ax < 0x38800000u) {  // below 2^-14: subnormal half (or zero)
        float a;
        std::memcpy(&a, &ax, 4);
        h = uint32_t(std::nearbyint(std::ldexp(a, 24)));  // exact scaling, then RNE
    } else {
        h = ((((ax >> 23) - 127 + 15) << 10) | ((ax >> 13) & 0x3ffu));
        const uint32_t rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent
    }
    return __half{static_cast<unsigned short>(sign | h)};
}
inline __half __float2half(float f) { return __float2half_rn(f); }

inline float __bfloat162float(__nv_bfloat16 b) {
    const uint32_t bits = uint32_t(b.__x) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<unsigned short>((x >> 16) | 0x40u)};
    x += 0x7fffu + ((x >> 16) & 1u);
    return __nv_bfloat16{static_cast<unsigned short>(x >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

// ---------------------------------------------------------------------------------------------
// Runtime API subset.
struct featgs_emu_stream;
typedef featgs_emu_stream *cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9, cudaErrorLaunchFailure = 719 };

namespace featgs_emu {
inline thread_local cudaError_t last_error = cudaSuccess;
inline thread_local std::string last_message;
inline void set_error(cudaError_t e, const std::string &message) {
    if (last_error == cudaSuccess) {  // the first error sticks until read, as CUDA's
        last_error = e;
        last_message = message;
    }
}
}  // namespace featgs_emu

inline cudaError_t cudaGetLastError() {
    const cudaError_t e = featgs_emu::last_error;
    featgs_emu::last_error = cudaSuccess;
    return e;
}
inline cudaError_t cudaPeekAtLastError() { return featgs_emu::last_error; }
inline const char *cudaGetErrorString(cudaError_t e) {
    static thread_local std::string text;
    text = e == cudaSuccess ? std::string("no error") : "emulated launch failed: " + featgs_emu::last_message;
    return text.c_str();
}

// ---------------------------------------------------------------------------------------------
// Built-in variables: the current CUDA thread's (set by the scheduler on every switch).
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Device math and integer intrinsics (the subset the kernels use, and their neighbours).
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __saturatef(float x) { return std::fmin(1.f, std::fmax(0.f, x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
template <typename T> inline T __ldg(const T *p) { return *p; }

#define FEATGS_EMU_MINMAX(T)                                \
    inline T min(T a, T b) { return b < a ? b : a; }        \
    inline T max(T a, T b) { return a < b ? b : a; }
FEATGS_EMU_MINMAX(int)
FEATGS_EMU_MINMAX(unsigned)
FEATGS_EMU_MINMAX(long)
FEATGS_EMU_MINMAX(unsigned long)
FEATGS_EMU_MINMAX(long long)
FEATGS_EMU_MINMAX(unsigned long long)
FEATGS_EMU_MINMAX(float)
FEATGS_EMU_MINMAX(double)
#undef FEATGS_EMU_MINMAX

// ---------------------------------------------------------------------------------------------
// Atomics: relaxed read-modify-writes on global (or shared) memory, returning the old value.
template <typename T> inline T atomicAdd(T *address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}
template <typename T> inline T atomicSub(T *address, T value) {
    return std::atomic_ref<T>(*address).fetch_sub(value, std::memory_order_relaxed);
}
template <typename T> inline T atomicExch(T *address, T value) {
    return std::atomic_ref<T>(*address).exchange(value, std::memory_order_relaxed);
}
template <typename T> inline T atomicCAS(T *address, T compare, T value) {
    std::atomic_ref<T>(*address).compare_exchange_strong(compare, value, std::memory_order_relaxed);
    return compare;  // the old value, whether or not it was swapped
}
template <typename T> inline T atomicMax(T *address, T value) {
    std::atomic_ref<T> a(*address);
    T old = a.load(std::memory_order_relaxed);
    while (old < value && !a.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
    }
    return old;
}
template <typename T> inline T atomicMin(T *address, T value) {
    std::atomic_ref<T> a(*address);
    T old = a.load(std::memory_order_relaxed);
    while (value < old && !a.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
    }
    return old;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }

// ---------------------------------------------------------------------------------------------
// Fibers.
#if defined(__x86_64__) && defined(__linux__)
#define FEATGS_EMU_ASM_SWITCH 1
// featgs_emu_switch(save, load): push the callee-saved registers, store the stack pointer in
// *save, load `load` as the stack pointer, pop that fiber's registers and return into it.
extern "C" void featgs_emu_switch(void **save_sp, void *load_sp);
asm(R"(
    .text
    .globl featgs_emu_switch
    .hidden featgs_emu_switch
    .type featgs_emu_switch,@function
featgs_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size featgs_emu_switch,.-featgs_emu_switch
)");
#else
#define FEATGS_EMU_ASM_SWITCH 0
#endif

extern "C" void featgs_emu_fiber_main();

namespace featgs_emu {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kMaxDynamicShared = 48 * 1024;  // without cudaFuncSetAttribute, as on the GPU

inline bool use_ucontext() {
    static const bool value = !FEATGS_EMU_ASM_SWITCH || std::getenv("FEATGS_EMULATION_UCONTEXT") != nullptr;
    return value;
}

inline size_t page_size() {
    static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return p;
}

struct Context {
    void *sp = nullptr;
    ucontext_t uc;
};

inline void switch_context(Context &from, Context &to) {
#if FEATGS_EMU_ASM_SWITCH
    if (!use_ucontext()) {
        featgs_emu_switch(&from.sp, to.sp);
        return;
    }
#endif
    swapcontext(&from.uc, &to.uc);
}

// A fiber stack: kStackBytes above a PROT_NONE guard page; kept in a pool across launches.
struct Stack {
    char *base = nullptr;  // the guard page
    char *lo() const { return base + page_size(); }
    char *hi() const { return lo() + kStackBytes; }
};

inline std::mutex &pool_mutex() {
    static std::mutex m;
    return m;
}
inline std::vector<Stack> &stack_pool() {
    static std::vector<Stack> pool;
    return pool;
}
inline Stack take_stack() {
    {
        std::lock_guard<std::mutex> lock(pool_mutex());
        auto &pool = stack_pool();
        if (!pool.empty()) {
            Stack s = pool.back();
            pool.pop_back();
            return s;
        }
    }
    const size_t total = page_size() + kStackBytes;
    void *p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        std::fprintf(stderr, "featgs emulation: cannot map a fiber stack\n");
        std::abort();
    }
    mprotect(p, page_size(), PROT_NONE);
    return Stack{static_cast<char *>(p)};
}
inline void give_stack(Stack s) {
    std::lock_guard<std::mutex> lock(pool_mutex());
    stack_pool().push_back(s);
}

inline void init_context(Context &c, const Stack &stack, Context *link) {
    if (use_ucontext()) {
        getcontext(&c.uc);
        c.uc.uc_stack.ss_sp = stack.lo();
        c.uc.uc_stack.ss_size = kStackBytes;
        c.uc.uc_link = &link->uc;
        makecontext(&c.uc, featgs_emu_fiber_main, 0);
        return;
    }
    // The frame featgs_emu_switch pops: six callee-saved registers, then the return address
    // (the fiber's entry), above which the stack is 16-byte aligned as after a call.
    auto top = reinterpret_cast<uintptr_t>(stack.hi()) & ~uintptr_t(15);
    void **sp = reinterpret_cast<void **>(top);
    *--sp = nullptr;  // alignment slot: at entry, rsp + 8 is 16-byte aligned
    *--sp = reinterpret_cast<void *>(&featgs_emu_fiber_main);
    for (int r = 0; r < 6; ++r) *--sp = nullptr;
    c.sp = sp;
}

// Shared memory buffer ending at a guard page.
struct SharedMemory {
    char *map = nullptr;
    size_t map_bytes = 0;
    char *ptr = nullptr;
    size_t bytes = 0;
    void allocate(size_t n) {
        bytes = n;
        const size_t pages = (n + page_size() - 1) / page_size();
        map_bytes = (pages + 1) * page_size();
        void *p = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            std::fprintf(stderr, "featgs emulation: cannot map shared memory\n");
            std::abort();
        }
        map = static_cast<char *>(p);
        char *guard = map + pages * page_size();
        mprotect(guard, page_size(), PROT_NONE);
        ptr = guard - ((n + 15) & ~size_t(15));  // 16-byte aligned, its end at the guard
    }
    ~SharedMemory() {
        if (map) munmap(map, map_bytes);
    }
};

enum Op : int { kOpNone = 0, kOpSync, kOpSyncCount, kOpSyncAnd, kOpSyncOr, kOpShflIdx, kOpShflUp, kOpShflDown,
                kOpShflXor, kOpBallot, kOpSyncWarp };

inline const char *op_name(int op) {
    static const char *names[] = {"none", "__syncthreads", "__syncthreads_count", "__syncthreads_and",
                                  "__syncthreads_or", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                  "__shfl_xor_sync", "__ballot_sync/__any_sync/__all_sync", "__syncwarp"};
    return names[op];
}

struct Fiber {
    Context ctx;
    Stack stack;
    uint3 tid;
    int warp = 0, lane = 0;
    bool done = false;
    const uint64_t *wait_on = nullptr;  // a barrier generation this fiber waits to change
    uint64_t wait_gen = 0;
};

// What the lanes of a warp pass to one collective: a value each, and who took part.
struct Exchange {
    uint64_t values[32];
    unsigned lanes = 0;
};

struct Warp {
    int live = 0, arrived = 0, op = kOpNone;
    unsigned live_mask = 0;   // lanes that exist and have not returned
    unsigned exist_mask = 0;  // lanes that exist (a block's last warp may be partial)
    unsigned mask = 0;        // union of the masks passed to the pending collective
    uint64_t gen = 0;
    Exchange exchange[2];  // double-buffered by generation parity
};

// One OS worker thread: runs blocks one after another, each block's threads as fibers.
struct Worker {
    Context scheduler;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    int n = 0, current = 0;
    // block barrier
    int live = 0, arrived = 0, op = kOpNone;
    uint64_t gen = 0;
    long long acc[2] = {0, 0};
    SharedMemory shared;
    void (*body)(void *) = nullptr;
    void *arg = nullptr;
    std::string error;

    Worker(dim3 block, size_t shmem, void (*fn)(void *), void *a) : body(fn), arg(a) {
        n = int(block.x * block.y * block.z);
        fibers.resize(n);
        warps.resize((n + 31) / 32);
        for (int i = 0; i < n; ++i) {
            Fiber &f = fibers[i];
            f.stack = take_stack();
            f.tid = uint3{unsigned(i % block.x), unsigned((i / block.x) % block.y), unsigned(i / (block.x * block.y))};
            f.warp = i / 32;
            f.lane = i % 32;
        }
        shared.allocate(std::max<size_t>(shmem, 16));
    }
    ~Worker() {
        for (Fiber &f : fibers) give_stack(f.stack);
    }

    void fail(const std::string &message) {
        if (error.empty()) {
            char where[160];
            std::snprintf(where, sizeof where, " (block %u,%u,%u thread %u,%u,%u)", blockIdx.x, blockIdx.y, blockIdx.z,
                          threadIdx.x, threadIdx.y, threadIdx.z);
            error = message + where;
        }
    }

    void run_block() {
        live = n;
        arrived = 0;
        op = kOpNone;
        acc[0] = acc[1] = 0;
        for (size_t w = 0; w < warps.size(); ++w) {
            Warp &wp = warps[w];
            wp.live = std::min(32, n - int(w) * 32);
            wp.live_mask = wp.exist_mask = wp.live == 32 ? kFullMask : ((1u << wp.live) - 1u);
            wp.arrived = 0;
            wp.op = kOpNone;
            wp.mask = 0;
            wp.exchange[0].lanes = wp.exchange[1].lanes = 0;
        }
        for (Fiber &f : fibers) {
            f.done = false;
            f.wait_on = nullptr;
            init_context(f.ctx, f.stack, &scheduler);
        }
        std::memset(shared.ptr, 0xff, shared.bytes);
        current = 0;
        threadIdx = fibers[0].tid;
        switch_context(scheduler, fibers[0].ctx);
        if (live > 0) {
            int waiting_block = 0, waiting_warp = 0;
            for (const Fiber &f : fibers) {
                if (f.done) continue;
                if (f.wait_on == &gen) ++waiting_block;
                else ++waiting_warp;
            }
            char text[256];
            std::snprintf(text, sizeof text,
                          "deadlock: %d threads wait at a block barrier and %d at warp collectives that cannot "
                          "complete (a barrier in divergent code?)",
                          waiting_block, waiting_warp);
            fail(text);
        }
    }

    static bool runnable(const Fiber &f) { return !f.done && (f.wait_on == nullptr || *f.wait_on != f.wait_gen); }

    // Block the current fiber (it has set wait_on, or is done) and run the next runnable one.
    void run_next() {
        Fiber &me = fibers[current];
        for (int i = 1; i <= n; ++i) {
            int j = current + i;
            if (j >= n) j -= n;
            Fiber &f = fibers[j];
            if (!runnable(f)) continue;
            if (j == current) {
                me.wait_on = nullptr;
                return;
            }
            current = j;
            threadIdx = f.tid;
            switch_context(me.ctx, f.ctx);
            // resumed: whoever switched here has set current and threadIdx
            me.wait_on = nullptr;
            return;
        }
        switch_context(me.ctx, scheduler);  // nothing can run: the block is done or deadlocked
    }

    void release_block() {
        arrived = 0;
        op = kOpNone;
        ++gen;
        acc[gen & 1] = 0;
    }
    void release_warp(Warp &wp) {
        if (wp.mask & wp.exist_mask & ~wp.live_mask)  // checked at release: lanes may return while others wait
            fail(std::string(op_name(wp.op)) + " names lanes that have returned (undefined on the GPU)");
        wp.arrived = 0;
        wp.op = kOpNone;
        wp.mask = 0;
        ++wp.gen;
        wp.exchange[wp.gen & 1].lanes = 0;
    }

    long long block_barrier(int kind, long long value) {
        Fiber &me = fibers[current];
        if (arrived == 0) op = kind;
        else if (op != kind) fail(std::string("threads of a block at different barriers: ") + op_name(op) + " and " +
                                  op_name(kind));
        const int parity = int(gen & 1);
        acc[parity] += value;
        if (++arrived == live) {
            release_block();
        } else {
            me.wait_on = &gen;
            me.wait_gen = gen;
            run_next();
        }
        return acc[parity];
    }

    const Exchange &warp_collective(int kind, unsigned mask, uint64_t value) {
        Fiber &me = fibers[current];
        Warp &wp = warps[me.warp];
        if ((mask & wp.live_mask) != wp.live_mask)
            fail(std::string(op_name(kind)) + " with a mask that leaves out live lanes (not emulated)");
        wp.mask |= mask;
        if (wp.arrived == 0) wp.op = kind;
        else if (wp.op != kind) fail(std::string("lanes of a warp at different collectives: ") + op_name(wp.op) +
                                     " and " + op_name(kind));
        Exchange &ex = wp.exchange[wp.gen & 1];
        ex.values[me.lane] = value;
        ex.lanes |= 1u << me.lane;
        if (++wp.arrived == wp.live) {
            release_warp(wp);
        } else {
            me.wait_on = &wp.gen;
            me.wait_gen = wp.gen;
            run_next();
        }
        return ex;  // not overwritten before every lane has read it: the next collective uses the other
    }

    void exit_fiber() {
        Fiber &me = fibers[current];
        me.done = true;
        --live;
        Warp &wp = warps[me.warp];
        --wp.live;
        wp.live_mask &= ~(1u << me.lane);
        if (arrived > 0 && arrived == live) release_block();
        if (wp.arrived > 0 && wp.arrived == wp.live) release_warp(wp);
        run_next();  // never returns: a done fiber is not resumed
        std::abort();
    }
};

inline thread_local Worker *tls_worker = nullptr;

inline Worker &worker() { return *tls_worker; }

inline void *dynamic_shared() { return worker().shared.ptr; }

template <typename T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move at most 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T> inline T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

inline int configured_workers() {
    static const int value = [] {
        if (const char *s = std::getenv("FEATGS_EMULATION_THREADS")) {
            const int v = std::atoi(s);
            if (v > 0) return v;
        }
        const int hw = int(std::thread::hardware_concurrency());
        return std::max(1, std::min(hw, 8));
    }();
    return value;
}

// Run the grid: blocks spread over worker threads, each block's threads as fibers.
inline void run_grid(dim3 grid, dim3 block, size_t shmem, void (*body)(void *), void *arg) {
    const long long threads = (long long)block.x * block.y * block.z;
    char text[200];
    if (threads < 1 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x < 1 ||
        grid.y < 1 || grid.z < 1 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 ||
        shmem > kMaxDynamicShared) {
        std::snprintf(text, sizeof text, "invalid configuration: grid (%u,%u,%u), block (%u,%u,%u), %zu bytes of "
                      "dynamic shared memory", grid.x, grid.y, grid.z, block.x, block.y, block.z, shmem);
        set_error(cudaErrorInvalidConfiguration, text);
        return;
    }
    const long long n_blocks = (long long)grid.x * grid.y * grid.z;
    const int n_workers = int(std::min<long long>(configured_workers(), n_blocks));
    std::atomic<long long> next{0};
    std::mutex error_mutex;
    std::string first_error;
    auto work = [&] {
        Worker w(block, shmem, body, arg);
        tls_worker = &w;
        gridDim = grid;
        blockDim = block;
        for (;;) {
            const long long b = next.fetch_add(1);
            if (b >= n_blocks) break;
            blockIdx = uint3{unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / ((long long)grid.x * grid.y))};
            w.run_block();
            if (!w.error.empty()) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (first_error.empty()) first_error = w.error;
                next.store(n_blocks);  // stop handing out blocks
                break;
            }
        }
        tls_worker = nullptr;
    };
    if (n_workers <= 1) {
        work();
    } else {
        std::vector<std::thread> pool;
        for (int i = 0; i < n_workers; ++i) pool.emplace_back(work);
        for (auto &t : pool) t.join();
    }
    if (!first_error.empty()) set_error(cudaErrorLaunchFailure, first_error);
}

// FEATGS_LAUNCH(grid, block, shmem, stream, kernel)(args...): kernel<<<grid, block, shmem, stream>>>(args...)
template <typename... P> struct Launch {
    void (*kernel)(P...);
    dim3 grid, block;
    size_t shmem;

    template <typename... A> void operator()(A &&...args) const {
        static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
        struct Call {
            void (*kernel)(P...);
            std::tuple<P...> params;
        } call{kernel, std::tuple<P...>(static_cast<P>(args)...)};
        run_grid(grid, block, shmem,
                 [](void *c) {
                     auto *call = static_cast<Call *>(c);
                     std::apply(call->kernel, call->params);  // each thread gets its own copies
                 },
                 &call);
    }
};

template <typename... P>
inline Launch<P...> launch(dim3 grid, dim3 block, size_t shmem, cudaStream_t, void (*kernel)(P...)) {
    return Launch<P...>{kernel, grid, block, shmem};
}

}  // namespace featgs_emu

// Every fiber starts here (once per CUDA thread and block); it never returns.
extern "C" void featgs_emu_fiber_main() {
    featgs_emu::Worker &w = featgs_emu::worker();
    w.body(w.arg);
    w.exit_fiber();
}

// ---------------------------------------------------------------------------------------------
// Barriers and warp collectives.
inline void __syncthreads() { featgs_emu::worker().block_barrier(featgs_emu::kOpSync, 0); }
inline int __syncthreads_count(int predicate) {
    return int(featgs_emu::worker().block_barrier(featgs_emu::kOpSyncCount, predicate != 0));
}
inline int __syncthreads_or(int predicate) {
    return featgs_emu::worker().block_barrier(featgs_emu::kOpSyncOr, predicate != 0) != 0;
}
inline int __syncthreads_and(int predicate) {
    return featgs_emu::worker().block_barrier(featgs_emu::kOpSyncAnd, predicate == 0) == 0;
}

inline void __syncwarp(unsigned mask = featgs_emu::kFullMask) {
    featgs_emu::worker().warp_collective(featgs_emu::kOpSyncWarp, mask, 0);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
    auto &w = featgs_emu::worker();
    const featgs_emu::Exchange &votes = w.warp_collective(featgs_emu::kOpBallot, mask, predicate != 0);
    unsigned result = 0;
    for (int l = 0; l < 32; ++l)
        if (((votes.lanes >> l) & 1u) && votes.values[l]) result |= 1u << l;
    return result & mask;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
    const unsigned mine = __ballot_sync(mask, !predicate);
    return mine == 0;
}

namespace featgs_emu {
template <typename T> inline T shuffle(int kind, unsigned mask, T value, int source_in_segment, int width) {
    Worker &w = worker();
    const int lane = w.fibers[w.current].lane;
    const Exchange &ex = w.warp_collective(kind, mask, to_bits(value));
    if (source_in_segment < 0) return value;  // out of the segment: the caller's own value
    const int src = (lane / width) * width + source_in_segment;
    if (!((ex.lanes >> src) & 1u)) return value;  // the source lane did not take part: undefined on the GPU
    return from_bits<T>(ex.values[src]);
}
inline int lane_id() {
    Worker &w = worker();
    return w.fibers[w.current].lane;
}
}  // namespace featgs_emu

template <typename T> inline T __shfl_sync(unsigned mask, T value, int src_lane, int width = warpSize) {
    return featgs_emu::shuffle(featgs_emu::kOpShflIdx, mask, value, ((src_lane % width) + width) % width, width);
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
    const int pos = featgs_emu::lane_id() % width;
    const int src = pos + int(delta);
    return featgs_emu::shuffle(featgs_emu::kOpShflDown, mask, value, src < width ? src : -1, width);
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
    const int pos = featgs_emu::lane_id() % width;
    const int src = pos - int(delta);
    return featgs_emu::shuffle(featgs_emu::kOpShflUp, mask, value, src >= 0 ? src : -1, width);
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize) {
    const int pos = featgs_emu::lane_id() % width;
    const int src = pos ^ lane_mask;
    return featgs_emu::shuffle(featgs_emu::kOpShflXor, mask, value, src < width ? src : -1, width);
}

// ---------------------------------------------------------------------------------------------
// The two things cuda/launch.h defines for nvcc.
#define FEATGS_LAUNCH(grid, block, shmem, stream, ...) ::featgs_emu::launch(grid, block, shmem, stream, &__VA_ARGS__)
#define FEATGS_DYNAMIC_SHARED(type, name) type *const name = static_cast<type *>(::featgs_emu::dynamic_shared())
