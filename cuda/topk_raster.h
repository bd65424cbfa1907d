// Plain-C++ interface of the featgs CUDA rasteriser (no torch types, so the kernels compile
// with nvcc alone and the torch glue compiles with any C++ compiler).
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

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

struct RasterOutputs {
    float *acc;          // [H * W, 4] sum of w * colour
    float *T;            // [H * W] final transmittance
    int32_t *last;       // [H * W] list position of the last contributor (-1: none)
    float *topk_w;       // [H * W, K] largest blend weights, descending
    int32_t *topk_id;    // [H * W, K] their Gaussian ids (-1: none)
};

struct RasterGrads {
    const float *T_final;
    const int32_t *last;
    const int32_t *topk_id;
    const float *g_acc;      // [H * W, 4]
    const float *g_T;        // [H * W]
    const float *g_topk_w;   // [H * W, K]
    float *g_means2d;        // [N, 2] (zeroed by the caller; accumulated)
    float *g_conics;         // [N, 3]
    float *g_colors;         // [N, 4]
    float *g_opacities;      // [N]
};

// K must be one of 1, 4, 8, 16, 32 (the caller rounds up); false on a launch error.
bool topk_raster_forward(const RasterArgs &args, const RasterOutputs &out, int K, cudaStream_t stream);
bool topk_raster_backward(const RasterArgs &args, const RasterGrads &grads, int K, cudaStream_t stream);

template <typename scalar_t>
bool feature_gather_forward(int64_t n_pixels, int32_t K, int32_t D, const float *topk_w, const int32_t *topk_id,
                            const scalar_t *features, scalar_t *out, cudaStream_t stream);

template <typename scalar_t>
bool feature_gather_backward(int64_t n_pixels, int32_t K, int32_t D, const float *topk_w, const int32_t *topk_id,
                             const scalar_t *features, const scalar_t *g_out, float *g_features, float *g_topk_w,
                             cudaStream_t stream);

}  // namespace featgs
