// featgs feature rasteriser: geometry once per pixel, features by gather.
//
// One source for the GPU (nvcc) and for the CPU emulation that runs in CI (cuda/emulated.cpp
// includes this file after cuda/emulation.h); launches and dynamic shared memory go through the
// macros of cuda/launch.h.
//
// Forward, one launch sequence (cuda/bindings.cpp `forward`): the rasteriser (one 16x16 tile per
// block, one thread per pixel, Gaussians staged through shared memory in depth order, gsplat's
// "classic" rules) blends rgb + depth, records the final transmittance, the list position of
// the last contributor and the K largest blend weights w = alpha * T with their Gaussian ids
// (held in registers for K <= 16); the feature gather then reads only those: a feature map of
// any dimension D is f(p) = sum_k w_k(p) F[id_k(p)], without a second traversal of the
// Gaussians and at a cost that does not depend on the rasterisation.
//
// Backward (`backward`): the gather's transpose gives dL/dw_k and scatters dL/df into dL/dF,
// one warp over 32 pixels summing each Gaussian's gradient over the pixels that share it before
// one atomic per channel; the geometry backward walks each pixel's list back to front and, for
// every contributor i, uses h_i = <dL/dacc, c_i> + (dL/dw_k if i is the pixel's k-th top entry),
// so dL/dalpha_i = T_i h_i - (sum_{j>i} w_j h_j + dL/dT_final * T_final) / (1 - alpha_i); the
// per-Gaussian gradients are summed over the warp (__shfl_down_sync) before lane 0's atomics.

#include <cstdint>

#include "launch.h"
#include "topk_raster.h"

namespace featgs {

constexpr float kAlphaThreshold = 1.f / 255.f;
constexpr float kMaxAlpha = 0.999f;
constexpr float kTransmittanceStop = 1e-4f;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kRegisterTopK = 16;  // top-K lists up to this length stay in registers
constexpr int32_t kNoId = -1;

struct StagedGaussian {
    float4 color;  // rgb + depth
    float2 xy;
    float3 conic;
    float opacity;
    int32_t id;
};

__device__ __forceinline__ float gaussian_sigma(const float3 conic, const float2 delta) {
    return 0.5f * (conic.x * delta.x * delta.x + conic.z * delta.y * delta.y) + conic.y * delta.x * delta.y;
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Sum over the warp, the result in lane 0.
__device__ __forceinline__ float warp_sum_to_lane0(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(kFullMask, v, offset);
    return v;
}
// Sum over the warp, the result in every lane.
__device__ __forceinline__ float warp_sum_all(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}
__device__ __forceinline__ int32_t warp_min_all(int32_t v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = min(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
}
__device__ __forceinline__ int32_t warp_max_all(int32_t v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
}

// A pixel's K largest blend weights, descending, with their ids. For K <= kRegisterTopK the
// insertion is fully unrolled with constant indices, so the lists live in registers; longer
// lists use a shifting insertion with a data-dependent stop (local memory).
template <int K> struct TopK {
    float w[K];
    int32_t id[K];

    __device__ __forceinline__ void clear() {
#pragma unroll
        for (int k = 0; k < K; ++k) {
            w[k] = 0.f;
            id[k] = kNoId;
        }
    }

    // A new entry goes after equal weights already in the list.
    __device__ __forceinline__ void insert(float v, int32_t g) {
        if (!(v > w[K - 1])) return;
        if constexpr (K <= kRegisterTopK) {
            bool shifting = false;
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const bool take = shifting || v > w[k];
                if (take) {
                    const float tw = w[k];
                    const int32_t tg = id[k];
                    w[k] = v;
                    id[k] = g;
                    v = tw;
                    g = tg;
                }
                shifting = take;
            }
        } else {
            int k = K - 1;
            while (k > 0 && w[k - 1] < v) {
                w[k] = w[k - 1];
                id[k] = id[k - 1];
                --k;
            }
            w[k] = v;
            id[k] = g;
        }
    }
};

// ---------------------------------------------------------------------------------------------
// Geometry forward.
template <int K>
__global__ void topk_raster_fwd_kernel(
    const int32_t n_gaussians,
    const float2 *__restrict__ means2d,   // [N]
    const float3 *__restrict__ conics,    // [N]
    const float4 *__restrict__ colors,    // [N] rgb + depth
    const float *__restrict__ opacities,  // [N]
    const int32_t width,
    const int32_t height,
    const int32_t tile_size,
    const int32_t tiles_x,
    const int32_t tiles_y,
    const int32_t *__restrict__ tile_offsets,  // [tiles_y * tiles_x]
    const int32_t *__restrict__ flatten_ids,   // [n_isects]
    const int32_t n_isects,
    float4 *__restrict__ out_acc,       // [H * W]
    float *__restrict__ out_T,          // [H * W]
    int32_t *__restrict__ out_last,     // [H * W]
    float *__restrict__ out_topk_w,     // [H * W, K]
    int32_t *__restrict__ out_topk_id   // [H * W, K]
) {
    FEATGS_DYNAMIC_SHARED(StagedGaussian, staged);
    const int32_t tile_id = blockIdx.y * tiles_x + blockIdx.x;
    const int32_t i = blockIdx.y * tile_size + threadIdx.y;
    const int32_t j = blockIdx.x * tile_size + threadIdx.x;
    const float px = (float)j + 0.5f;
    const float py = (float)i + 0.5f;
    const int32_t pix = i * width + j;
    const bool inside = (i < height && j < width);
    bool done = !inside;

    const int32_t range_start = tile_offsets[tile_id];
    const int32_t range_end = (tile_id == tiles_x * tiles_y - 1) ? n_isects : tile_offsets[tile_id + 1];
    const int32_t block_size = blockDim.x * blockDim.y;
    const int32_t n_batches = (range_end - range_start + block_size - 1) / block_size;
    const int32_t tr = threadIdx.y * blockDim.x + threadIdx.x;

    float T = 1.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    int32_t last = -1;  // position (in the tile list) of the last contributor
    TopK<K> top;
    top.clear();

    for (int32_t b = 0; b < n_batches; ++b) {
        // Every pixel of the tile has stopped: the rest of the list cannot contribute. (Also the
        // barrier that keeps the previous batch's staged Gaussians until everyone is done.)
        if (__syncthreads_count(done) >= block_size) break;
        const int32_t idx = range_start + b * block_size + tr;
        if (idx < range_end) {
            const int32_t g = flatten_ids[idx];
            staged[tr] = {colors[g], means2d[g], conics[g], opacities[g], g};
        }
        __syncthreads();
        const int32_t batch = min(block_size, range_end - (range_start + b * block_size));
        for (int32_t t = 0; t < batch && !done; ++t) {
            const StagedGaussian &s = staged[t];
            const float2 delta = make_float2(s.xy.x - px, s.xy.y - py);
            const float sigma = gaussian_sigma(s.conic, delta);
            const float alpha = fminf(kMaxAlpha, s.opacity * __expf(-sigma));
            if (sigma < 0.f || alpha < kAlphaThreshold) continue;
            const float next_T = T * (1.f - alpha);
            if (next_T <= kTransmittanceStop) {  // exclusive, as gsplat
                done = true;
                break;
            }
            const float w = alpha * T;
            acc.x += w * s.color.x;
            acc.y += w * s.color.y;
            acc.z += w * s.color.z;
            acc.w += w * s.color.w;
            top.insert(w, s.id);
            last = b * block_size + t;
            T = next_T;
        }
    }
    if (inside) {
        out_acc[pix] = acc;
        out_T[pix] = T;
        out_last[pix] = last;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            out_topk_w[pix * K + k] = top.w[k];
            out_topk_id[pix * K + k] = top.id[k];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry backward.
template <int K>
__global__ void topk_raster_bwd_kernel(
    const int32_t n_gaussians,
    const float2 *__restrict__ means2d,
    const float3 *__restrict__ conics,
    const float4 *__restrict__ colors,
    const float *__restrict__ opacities,
    const int32_t width,
    const int32_t height,
    const int32_t tile_size,
    const int32_t tiles_x,
    const int32_t tiles_y,
    const int32_t *__restrict__ tile_offsets,
    const int32_t *__restrict__ flatten_ids,
    const int32_t n_isects,
    const float *__restrict__ T_final,       // [H * W]
    const int32_t *__restrict__ last_idx,    // [H * W]
    const int32_t *__restrict__ topk_id,     // [H * W, K]
    const float4 *__restrict__ g_acc,        // [H * W]
    const float *__restrict__ g_T,           // [H * W]
    const float *__restrict__ g_topk_w,      // [H * W, K] or nullptr
    float2 *__restrict__ g_means2d,          // [N] accumulated
    float3 *__restrict__ g_conics,           // [N]
    float4 *__restrict__ g_colors,           // [N]
    float *__restrict__ g_opacities          // [N]
) {
    FEATGS_DYNAMIC_SHARED(StagedGaussian, staged);
    const int32_t tile_id = blockIdx.y * tiles_x + blockIdx.x;
    const int32_t i = blockIdx.y * tile_size + threadIdx.y;
    const int32_t j = blockIdx.x * tile_size + threadIdx.x;
    const float px = (float)j + 0.5f;
    const float py = (float)i + 0.5f;
    const bool inside = (i < height && j < width);
    const int32_t pix = inside ? i * width + j : 0;

    const int32_t range_start = tile_offsets[tile_id];
    const int32_t range_end = (tile_id == tiles_x * tiles_y - 1) ? n_isects : tile_offsets[tile_id + 1];
    const int32_t block_size = blockDim.x * blockDim.y;
    const int32_t n_batches = (range_end - range_start + block_size - 1) / block_size;
    const int32_t tr = threadIdx.y * blockDim.x + threadIdx.x;
    const int32_t lane = tr % 32;

    const float T_fin = inside ? T_final[pix] : 1.f;
    float T = T_fin;
    const int32_t my_last = inside ? last_idx[pix] : -1;
    const int32_t warp_last = warp_max_all(my_last);
    const float4 G = inside ? g_acc[pix] : make_float4(0.f, 0.f, 0.f, 0.f);
    float S = inside ? g_T[pix] * T_fin : 0.f;  // sum_{j > i} w_j h_j + dL/dT_final * T_final
    const bool with_topk = g_topk_w != nullptr;
    int32_t my_ids[K];
    float my_gw[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
        my_ids[k] = (inside && with_topk) ? topk_id[pix * K + k] : kNoId;
        my_gw[k] = (inside && with_topk) ? g_topk_w[pix * K + k] : 0.f;
    }

    // Batches back to front; inside a batch, entries back to front.
    for (int32_t b = n_batches - 1; b >= 0; --b) {
        // No pixel of the block has a contributor in this batch or later: skip it. (Also the
        // barrier that keeps the previous batch's staged Gaussians until everyone is done.)
        if (__syncthreads_count(my_last >= b * block_size) == 0) continue;
        const int32_t batch_start = range_start + b * block_size;
        const int32_t idx = batch_start + tr;
        if (idx < range_end) {
            const int32_t g = flatten_ids[idx];
            staged[tr] = {colors[g], means2d[g], conics[g], opacities[g], g};
        }
        __syncthreads();
        const int32_t batch = min(block_size, range_end - batch_start);
        for (int32_t t = batch - 1; t >= 0; --t) {
            const int32_t pos = b * block_size + t;
            if (pos > warp_last) continue;  // warp-uniform
            const StagedGaussian &s = staged[t];
            const float2 delta = make_float2(s.xy.x - px, s.xy.y - py);
            const float sigma = gaussian_sigma(s.conic, delta);
            const float vis = __expf(-sigma);
            const float alpha = fminf(kMaxAlpha, s.opacity * vis);
            const bool valid = inside && pos <= my_last && sigma >= 0.f && alpha >= kAlphaThreshold;
            if (!__any_sync(kFullMask, valid)) continue;  // warp-uniform

            float4 v_color = make_float4(0.f, 0.f, 0.f, 0.f);
            float3 v_conic = make_float3(0.f, 0.f, 0.f);
            float2 v_xy = make_float2(0.f, 0.f);
            float v_opacity = 0.f;
            if (valid) {
                const float ra = 1.f / (1.f - alpha);
                T *= ra;  // transmittance before this Gaussian
                const float w = alpha * T;
                const float4 c = s.color;
                float h = G.x * c.x + G.y * c.y + G.z * c.z + G.w * c.w;
#pragma unroll
                for (int k = 0; k < K; ++k) {
                    if (my_ids[k] == s.id) h += my_gw[k];
                }
                const float g_alpha = T * h - S * ra;
                S += w * h;
                v_color = make_float4(w * G.x, w * G.y, w * G.z, w * G.w);
                if (s.opacity * vis <= kMaxAlpha) {  // alpha not clamped: it moves with the geometry
                    const float g_sigma = -s.opacity * vis * g_alpha;
                    v_conic = make_float3(0.5f * g_sigma * delta.x * delta.x, g_sigma * delta.x * delta.y,
                                          0.5f * g_sigma * delta.y * delta.y);
                    v_xy = make_float2(g_sigma * (s.conic.x * delta.x + s.conic.y * delta.y),
                                       g_sigma * (s.conic.y * delta.x + s.conic.z * delta.y));
                    v_opacity = vis * g_alpha;
                }
            }
            // One atomic per parameter and warp instead of one per pixel.
            v_color.x = warp_sum_to_lane0(v_color.x);
            v_color.y = warp_sum_to_lane0(v_color.y);
            v_color.z = warp_sum_to_lane0(v_color.z);
            v_color.w = warp_sum_to_lane0(v_color.w);
            v_conic.x = warp_sum_to_lane0(v_conic.x);
            v_conic.y = warp_sum_to_lane0(v_conic.y);
            v_conic.z = warp_sum_to_lane0(v_conic.z);
            v_xy.x = warp_sum_to_lane0(v_xy.x);
            v_xy.y = warp_sum_to_lane0(v_xy.y);
            v_opacity = warp_sum_to_lane0(v_opacity);
            if (lane == 0) {
                atomicAdd(&g_colors[s.id].x, v_color.x);
                atomicAdd(&g_colors[s.id].y, v_color.y);
                atomicAdd(&g_colors[s.id].z, v_color.z);
                atomicAdd(&g_colors[s.id].w, v_color.w);
                atomicAdd(&g_conics[s.id].x, v_conic.x);
                atomicAdd(&g_conics[s.id].y, v_conic.y);
                atomicAdd(&g_conics[s.id].z, v_conic.z);
                atomicAdd(&g_means2d[s.id].x, v_xy.x);
                atomicAdd(&g_means2d[s.id].y, v_xy.y);
                atomicAdd(&g_opacities[s.id], v_opacity);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Feature gather: out[p, d] = sum_k w[p, k] * F[id[p, k], d], fp32 accumulation. `lanes`
// (a power of two <= 32) consecutive threads share a pixel and stride over its channels, so
// small D does not leave most of a warp idle.
template <typename scalar_t>
__global__ void feature_gather_fwd_kernel(
    const int64_t n_pixels, const int32_t K, const int32_t D, const int32_t lanes,
    const float *__restrict__ topk_w, const int32_t *__restrict__ topk_id,
    const scalar_t *__restrict__ features,  // [N, D]
    scalar_t *__restrict__ out               // [P, D]
) {
    const int64_t thread = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t p = thread / lanes;
    if (p >= n_pixels) return;
    for (int32_t d = (int32_t)(thread % lanes); d < D; d += lanes) {
        float acc = 0.f;
        for (int32_t k = 0; k < K; ++k) {
            const int32_t g = topk_id[p * K + k];
            if (g < 0) break;  // entries are sorted: -1 only at the tail
            acc += topk_w[p * K + k] * to_float(features[(int64_t)g * D + d]);
        }
        out[p * D + d] = from_float<scalar_t>(acc);
    }
}

// The gather's transpose. A warp takes 32 consecutive pixels (one per lane) and visits the
// Gaussians of their top-K lists in increasing id, each once: the lanes holding it are the
// active mask; then, 32 channels at a time (lanes over channels, coalesced), it sums w * dL/df
// over the active pixels in registers, adds that with one atomic per channel, and reduces each
// active pixel's <dL/df, F[id]> over the lanes for its dL/dw.
template <int K, typename scalar_t>
__global__ void feature_gather_bwd_kernel(
    const int64_t n_pixels, const int32_t D,
    const float *__restrict__ topk_w, const int32_t *__restrict__ topk_id,
    const scalar_t *__restrict__ features,   // [N, D]
    const scalar_t *__restrict__ g_out,      // [P, D]
    const float *__restrict__ g_topk_w_in,   // [P, K] or nullptr: added to dL/dw
    float *__restrict__ g_features,          // [N, D] fp32, accumulated
    float *__restrict__ g_topk_w_out         // [P, K]
) {
    const int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int32_t lane = threadIdx.x % 32;
    const bool inside = p < n_pixels;
    const int64_t row = inside ? p * K : 0;
    int32_t ids[K];
    uint32_t todo = 0;  // slots not visited yet
#pragma unroll
    for (int k = 0; k < K; ++k) {
        ids[k] = inside ? topk_id[row + k] : kNoId;
        if (ids[k] >= 0) todo |= 1u << k;
        if (inside) g_topk_w_out[row + k] = g_topk_w_in != nullptr ? g_topk_w_in[row + k] : 0.f;
    }
    for (;;) {
        int32_t mine = 0x7fffffff;
        int slot = -1;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            if (((todo >> k) & 1u) && ids[k] < mine) {
                mine = ids[k];
                slot = k;
            }
        }
        const int32_t g = warp_min_all(mine);
        if (g == 0x7fffffff) break;  // warp-uniform: every list is done
        if (mine != g) slot = -1;
        const unsigned active = __ballot_sync(kFullMask, slot >= 0);
        if (slot >= 0) todo &= ~(1u << slot);
        const float w = slot >= 0 ? topk_w[row + slot] : 0.f;
        float dot = 0.f;
        for (int32_t d0 = 0; d0 < D; d0 += 32) {
            const int32_t d = d0 + lane;
            const float f = d < D ? to_float(features[(int64_t)g * D + d]) : 0.f;
            float g_sum = 0.f;
            for (unsigned m = active; m != 0; m &= m - 1) {
                const int a = __ffs((int)m) - 1;
                const int64_t pa = __shfl_sync(kFullMask, p, a);
                const float wa = __shfl_sync(kFullMask, w, a);
                const float go = d < D ? to_float(g_out[pa * D + d]) : 0.f;
                g_sum += wa * go;
                const float part = warp_sum_all(go * f);
                if (lane == a) dot += part;
            }
            if (d < D) atomicAdd(&g_features[(int64_t)g * D + d], g_sum);
        }
        if (slot >= 0) g_topk_w_out[row + slot] += dot;
    }
}

// ---------------------------------------------------------------------------------------------
// Launchers.

namespace {

const char *launch_status() {
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

const char *kBadK = "K must be one of 1, 4, 8, 16, 32";

size_t staged_bytes(const RasterArgs &a) { return sizeof(StagedGaussian) * a.tile_size * a.tile_size; }

template <int K>
void launch_raster_fwd(const RasterArgs &a, const RasterOutputs &o, cudaStream_t stream) {
    const dim3 grid(a.tiles_x, a.tiles_y), block(a.tile_size, a.tile_size);
    FEATGS_LAUNCH(grid, block, staged_bytes(a), stream, topk_raster_fwd_kernel<K>)(
        a.n_gaussians, reinterpret_cast<const float2 *>(a.means2d), reinterpret_cast<const float3 *>(a.conics),
        reinterpret_cast<const float4 *>(a.colors), a.opacities, a.width, a.height, a.tile_size, a.tiles_x,
        a.tiles_y, a.tile_offsets, a.flatten_ids, a.n_isects, reinterpret_cast<float4 *>(o.acc), o.T, o.last,
        o.topk_w, o.topk_id);
}

template <int K>
void launch_raster_bwd(const RasterArgs &a, const RasterGrads &g, cudaStream_t stream) {
    const dim3 grid(a.tiles_x, a.tiles_y), block(a.tile_size, a.tile_size);
    FEATGS_LAUNCH(grid, block, staged_bytes(a), stream, topk_raster_bwd_kernel<K>)(
        a.n_gaussians, reinterpret_cast<const float2 *>(a.means2d), reinterpret_cast<const float3 *>(a.conics),
        reinterpret_cast<const float4 *>(a.colors), a.opacities, a.width, a.height, a.tile_size, a.tiles_x,
        a.tiles_y, a.tile_offsets, a.flatten_ids, a.n_isects, g.T_final, g.last, g.topk_id,
        reinterpret_cast<const float4 *>(g.g_acc), g.g_T, g.g_topk_w, reinterpret_cast<float2 *>(g.g_means2d),
        reinterpret_cast<float3 *>(g.g_conics), reinterpret_cast<float4 *>(g.g_colors), g.g_opacities);
}

template <typename scalar_t>
void launch_gather_fwd(const GatherArgs &a, void *out, cudaStream_t stream) {
    int32_t lanes = 1;
    while (lanes < 32 && lanes < a.D) lanes *= 2;
    const int threads = 256;
    const int64_t blocks = (a.n_pixels * lanes + threads - 1) / threads;
    if (blocks == 0) return;
    FEATGS_LAUNCH(dim3((unsigned)blocks), dim3(threads), 0, stream, feature_gather_fwd_kernel<scalar_t>)(
        a.n_pixels, a.K, a.D, lanes, a.topk_w, a.topk_id, static_cast<const scalar_t *>(a.features),
        static_cast<scalar_t *>(out));
}

template <int K, typename scalar_t>
void launch_gather_bwd(const GatherArgs &a, const void *g_out, const float *g_topk_w_in, float *g_features,
                       float *g_topk_w_out, cudaStream_t stream) {
    const int threads = 256;
    const int64_t blocks = (a.n_pixels + threads - 1) / threads;
    if (blocks == 0) return;
    FEATGS_LAUNCH(dim3((unsigned)blocks), dim3(threads), 0, stream, feature_gather_bwd_kernel<K, scalar_t>)(
        a.n_pixels, a.D, a.topk_w, a.topk_id, static_cast<const scalar_t *>(a.features),
        static_cast<const scalar_t *>(g_out), g_topk_w_in, g_features, g_topk_w_out);
}

template <typename scalar_t>
bool dispatch_gather_bwd(const GatherArgs &a, const void *g_out, const float *g_topk_w_in, float *g_features,
                         float *g_topk_w_out, cudaStream_t stream) {
    switch (a.K) {
    case 1: launch_gather_bwd<1, scalar_t>(a, g_out, g_topk_w_in, g_features, g_topk_w_out, stream); return true;
    case 4: launch_gather_bwd<4, scalar_t>(a, g_out, g_topk_w_in, g_features, g_topk_w_out, stream); return true;
    case 8: launch_gather_bwd<8, scalar_t>(a, g_out, g_topk_w_in, g_features, g_topk_w_out, stream); return true;
    case 16: launch_gather_bwd<16, scalar_t>(a, g_out, g_topk_w_in, g_features, g_topk_w_out, stream); return true;
    case 32: launch_gather_bwd<32, scalar_t>(a, g_out, g_topk_w_in, g_features, g_topk_w_out, stream); return true;
    default: return false;
    }
}

}  // namespace

const char *raster_forward(const RasterArgs &args, const RasterOutputs &out, int K, void *stream) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (K) {
    case 1: launch_raster_fwd<1>(args, out, s); break;
    case 4: launch_raster_fwd<4>(args, out, s); break;
    case 8: launch_raster_fwd<8>(args, out, s); break;
    case 16: launch_raster_fwd<16>(args, out, s); break;
    case 32: launch_raster_fwd<32>(args, out, s); break;
    default: return kBadK;
    }
    return launch_status();
}

const char *raster_backward(const RasterArgs &args, const RasterGrads &grads, int K, void *stream) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (K) {
    case 1: launch_raster_bwd<1>(args, grads, s); break;
    case 4: launch_raster_bwd<4>(args, grads, s); break;
    case 8: launch_raster_bwd<8>(args, grads, s); break;
    case 16: launch_raster_bwd<16>(args, grads, s); break;
    case 32: launch_raster_bwd<32>(args, grads, s); break;
    default: return kBadK;
    }
    return launch_status();
}

const char *gather_forward(const GatherArgs &args, void *out, void *stream) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (args.type) {
    case FeatureType::f32: launch_gather_fwd<float>(args, out, s); break;
    case FeatureType::f16: launch_gather_fwd<__half>(args, out, s); break;
    case FeatureType::bf16: launch_gather_fwd<__nv_bfloat16>(args, out, s); break;
    default: return "features must be float32, float16 or bfloat16";
    }
    return launch_status();
}

const char *gather_backward(const GatherArgs &args, const void *g_out, const float *g_topk_w_in, float *g_features,
                            float *g_topk_w_out, void *stream) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    bool ok = false;
    switch (args.type) {
    case FeatureType::f32: ok = dispatch_gather_bwd<float>(args, g_out, g_topk_w_in, g_features, g_topk_w_out, s); break;
    case FeatureType::f16: ok = dispatch_gather_bwd<__half>(args, g_out, g_topk_w_in, g_features, g_topk_w_out, s); break;
    case FeatureType::bf16:
        ok = dispatch_gather_bwd<__nv_bfloat16>(args, g_out, g_topk_w_in, g_features, g_topk_w_out, s);
        break;
    default: return "features must be float32, float16 or bfloat16";
    }
    if (!ok) return kBadK;
    return launch_status();
}

bool kernels_run_on_host() { return FEATGS_ON_HOST != 0; }

}  // namespace featgs
