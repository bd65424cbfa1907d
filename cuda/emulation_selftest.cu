// Checks that cuda/emulation.h gives kernels CUDA's semantics: warp shuffles (all variants and
// widths), ballots, block barriers with counts, shared memory per block, atomics across blocks
// run by different worker threads, and that a deadlock, a collective naming returned lanes
// and an invalid launch configuration fail the launch. Built into the emulated extension only
// (cuda/emulated.cpp); tests/test_emulated_kernels.py calls featgs_emulation_selftest through
// ctypes. Written in the kernels' dialect (FEATGS_LAUNCH, FEATGS_DYNAMIC_SHARED).

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "launch.h"

namespace featgs_selftest {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kSlots = 10;

// 64 threads (two warps); each writes kSlots results.
__global__ void collectives_kernel(int *out) {
    FEATGS_DYNAMIC_SHARED(int, scratch);
    const int t = threadIdx.x;
    const int lane = t % 32;
    const int v = t * 10;
    int *o = out + t * kSlots;
    o[0] = __shfl_down_sync(kFull, v, 3);
    o[1] = __shfl_up_sync(kFull, v, 2);
    o[2] = __shfl_xor_sync(kFull, v, 5);
    o[3] = __shfl_sync(kFull, v, 7);
    o[4] = (int)__ballot_sync(kFull, lane % 3 == 0);
    o[5] = __shfl_down_sync(kFull, v, 1, 8);  // segments of 8 lanes
    float s = (float)lane;
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_down_sync(kFull, s, offset);
    o[6] = lane == 0 ? (int)s : -1;
    o[7] = __syncthreads_count(t % 5 == 0);
    scratch[t] = v + blockIdx.x;
    __syncthreads();
    o[8] = scratch[blockDim.x - 1 - t];  // another warp's write, visible after the barrier
    o[9] = __any_sync(kFull, lane == 31) + 2 * __all_sync(kFull, lane < 31);
}

// Every thread of every block adds 1: nothing may be lost between concurrent blocks.
__global__ void atomics_kernel(float *sum, int *count) {
    atomicAdd(sum, 1.f);
    atomicAdd(count, 1);
}

// Threads returning early do not hold up a barrier of the others (sm_70+).
__global__ void early_return_kernel(int *out) {
    if (threadIdx.x >= 40) return;
    const int n = __syncthreads_count(1);
    out[threadIdx.x] = n;
}

// Lanes 0-15 wait at the block barrier, lanes 16-31 at a shuffle that needs lanes 0-15.
__global__ void deadlock_kernel(int *out) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        out[threadIdx.x] = __shfl_sync(kFull, (int)threadIdx.x, 0);
    }
}

// A full-mask shuffle after half the warp has returned.
__global__ void returned_lanes_kernel(int *out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_sync(kFull, (int)threadIdx.x, 0);
}

__global__ void noop_kernel(int *) {}

std::string check_collectives() {
    std::vector<int> out(64 * kSlots, -7);
    FEATGS_LAUNCH(dim3(1), dim3(64), 64 * sizeof(int), nullptr, collectives_kernel)(out.data());
    if (cudaGetLastError() != cudaSuccess) return "collectives: launch failed";
    std::string errors;
    char line[160];
    for (int t = 0; t < 64; ++t) {
        const int lane = t % 32, base = t - lane, v = t * 10;
        unsigned ballot = 0;
        for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
        const int seg = lane % 8;
        const int expect[kSlots] = {
            lane + 3 < 32 ? (t + 3) * 10 : v,
            lane >= 2 ? (t - 2) * 10 : v,
            (base + (lane ^ 5)) * 10,
            (base + 7) * 10,
            (int)ballot,
            seg + 1 < 8 ? (t + 1) * 10 : v,
            lane == 0 ? 496 : -1,
            13,
            (63 - t) * 10,
            1 + 0,
        };
        for (int k = 0; k < kSlots; ++k) {
            if (out[t * kSlots + k] != expect[k]) {
                std::snprintf(line, sizeof line, "collectives: thread %d slot %d: %d, expected %d\n", t, k,
                              out[t * kSlots + k], expect[k]);
                errors += line;
            }
        }
    }
    return errors;
}

std::string check_atomics() {
    float sum = 0.f;
    int count = 0;
    FEATGS_LAUNCH(dim3(16, 4), dim3(128), 0, nullptr, atomics_kernel)(&sum, &count);
    if (cudaGetLastError() != cudaSuccess) return "atomics: launch failed";
    if (count != 16 * 4 * 128 || sum != float(16 * 4 * 128)) return "atomics: lost updates\n";
    return "";
}

std::string check_early_return() {
    std::vector<int> out(64, -1);
    FEATGS_LAUNCH(dim3(1), dim3(64), 0, nullptr, early_return_kernel)(out.data());
    if (cudaGetLastError() != cudaSuccess) return "early return: launch failed\n";
    for (int t = 0; t < 40; ++t)
        if (out[t] != 40) return "early return: wrong barrier count\n";
    return "";
}

std::string expect_failure(const char *name, const char *needle, cudaError_t code) {
    const cudaError_t e = cudaGetLastError();
    if (e != code) return std::string(name) + ": the launch did not fail as expected\n";
    const std::string message = cudaGetErrorString(e);
    if (message.find(needle) == std::string::npos) return std::string(name) + ": unexpected message: " + message + "\n";
    return "";
}

}  // namespace featgs_selftest

// Runs every check; writes the failures (empty: none) into `buffer`. Returns their count.
extern "C" __attribute__((visibility("default"))) int featgs_emulation_selftest(char *buffer, int size) {
    using namespace featgs_selftest;
    std::vector<int> out(64, 0);
    std::string errors = check_collectives() + check_atomics() + check_early_return();
    FEATGS_LAUNCH(dim3(1), dim3(32), 0, nullptr, deadlock_kernel)(out.data());
    errors += expect_failure("deadlock", "deadlock", cudaErrorLaunchFailure);
    FEATGS_LAUNCH(dim3(1), dim3(32), 0, nullptr, returned_lanes_kernel)(out.data());
    errors += expect_failure("returned lanes", "returned", cudaErrorLaunchFailure);
    FEATGS_LAUNCH(dim3(1), dim3(2048), 0, nullptr, noop_kernel)(out.data());
    errors += expect_failure("block too large", "invalid configuration", cudaErrorInvalidConfiguration);
    FEATGS_LAUNCH(dim3(1), dim3(32), 64 * 1024, nullptr, noop_kernel)(out.data());
    errors += expect_failure("shared memory too large", "invalid configuration", cudaErrorInvalidConfiguration);
    std::snprintf(buffer, size_t(size), "%s", errors.c_str());
    int n = 0;
    for (char c : errors) n += c == '\n';
    return n;
}
