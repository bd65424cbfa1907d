// Plain-C++ interface of the featgs rasteriser kernels: no CUDA and no torch types, so the
// torch glue (cuda/bindings.cpp) compiles with any C++ compiler and serves both the GPU build
// (cuda/topk_raster.cu through nvcc) and the CPU emulation (cuda/emulated.cpp). Every entry
// point enqueues its kernels on `stream` (a cudaStream_t; ignored by the emulation, which runs
// them before returning) and returns nullptr, or an error message.
#pragma once

#include <cstdint>

namespace featgs {

// Projected Gaussians and their depth-sorted tile lists (gsplat's isect_tiles layout, one image).
struct RasterArgs {
    int32_t n_gaussians;
    const float *means2d;     // [N, 2]
    const float *conics;      // [N, 3]
    const float *colors;      // [N, 4] rgb + depth
    const float *opacities;   // [N]
    int32_t width, height, tile_size, tiles_x, tiles_y;
    const int32_t *tile_offsets;  // [tiles_y * tiles_x] first list entry of each tile
    const int32_t *flatten_ids;   // [n_isects] Gaussian id of each list entry
    int32_t n_isects;
};

// Every element is written by the forward (the buffers may be left uninitialised).
struct RasterOutputs {
    float *acc;          // [H * W, 4] sum of w * colour
    float *T;            // [H * W] final transmittance
    int32_t *last;       // [H * W] list position of the last contributor (-1: none)
    float *topk_w;       // [H * W, K] largest blend weights, descending (0: none)
    int32_t *topk_id;    // [H * W, K] their Gaussian ids (-1: none)
};

struct RasterGrads {
    const float *T_final;
    const int32_t *last;
    const int32_t *topk_id;
    const float *g_acc;      // [H * W, 4]
    const float *g_T;        // [H * W]
    const float *g_topk_w;   // [H * W, K] dL/dw of the top-K weights, or nullptr (none)
    float *g_means2d;        // [N, 2] (zeroed by the caller; accumulated)
    float *g_conics;         // [N, 3]
    float *g_colors;         // [N, 4]
    float *g_opacities;      // [N]
};

enum class FeatureType : int32_t { f32 = 0, f16 = 1, bf16 = 2 };

// features [N, D] gathered through each pixel's top-K: out[p] = sum_k w[p, k] F[id[p, k]].
struct GatherArgs {
    int64_t n_pixels;
    int32_t K, D;
    FeatureType type;
    const float *topk_w;     // [P, K]
    const int32_t *topk_id;  // [P, K], -1 only after the valid entries
    const void *features;    // [N, D] of `type`
};

// K must be one of kTopKChoices (the caller rounds up).
constexpr int kTopKChoices[] = {1, 4, 8, 16, 32};

const char *raster_forward(const RasterArgs &args, const RasterOutputs &out, int K, void *stream);
const char *raster_backward(const RasterArgs &args, const RasterGrads &grads, int K, void *stream);

// out [P, D] of `type`, fp32 accumulation; every element written.
const char *gather_forward(const GatherArgs &args, void *out, void *stream);
// g_features [N, D] fp32 (zeroed by the caller; accumulated) += w * g_out; g_topk_w_out [P, K]
// (every element written) = <g_out[p], F[id]> + g_topk_w_in (nullptr: 0); 0 where id is -1.
const char *gather_backward(const GatherArgs &args, const void *g_out, const float *g_topk_w_in, float *g_features,
                            float *g_topk_w_out, void *stream);

// True for the CPU emulation (tensors on the host), false for the CUDA build.
bool kernels_run_on_host();

}  // namespace featgs
