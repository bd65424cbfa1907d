// featgs CUDA feature rasteriser: geometry once per pixel, features by gather.
//
// Forward (per 16x16 tile, one thread per pixel, Gaussians staged through shared memory in
// depth order, gsplat's "classic" rules): blends 4 channels (rgb + depth), records the final
// transmittance, the index of the last contributor and the K largest blend weights
// w = alpha * T with their Gaussian ids. A feature map of any dimension D is then a gather,
// f(p) = sum_k w_k(p) F[id_k(p)], whose cost does not depend on the rasterisation.
//
// Backward: the gather's transpose scatters dL/df into dL/dF and gives dL/dw_k; the geometry
// backward walks each pixel's list back to front and, for every contributor i, uses
// h_i = <dL/dacc, c_i> + (dL/dw_k if i is the pixel's k-th top entry), so
// dL/dalpha_i = T_i h_i - (sum_{j>i} w_j h_j + dL/dT_final * T_final) / (1 - alpha_i).

#include <cstdint>
#include <cuda_runtime.h>

#include "topk_raster.h"

namespace featgs {

constexpr float kAlphaThreshold = 1.f / 255.f;
constexpr float kMaxAlpha = 0.999f;
constexpr float kTransmittanceStop = 1e-4f;

struct StagedGaussian {
    int32_t id;
    float2 xy;
    float3 conic;
    float opacity;
};

__device__ inline float gaussian_sigma(const float3 conic, const float2 delta) {
    return 0.5f * (conic.x * delta.x * delta.x + conic.z * delta.y * delta.y) + conic.y * delta.x * delta.y;
}

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
    extern __shared__ StagedGaussian staged[];
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
    float top_w[K];
    int32_t top_id[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
        top_w[k] = 0.f;
        top_id[k] = -1;
    }

    for (int32_t b = 0; b < n_batches; ++b) {
        if (__syncthreads_count(done) >= block_size) break;
        const int32_t idx = range_start + b * block_size + tr;
        if (idx < range_end) {
            const int32_t g = flatten_ids[idx];
            staged[tr] = {g, means2d[g], conics[g], opacities[g]};
        }
        __syncthreads();
        const int32_t batch = min(block_size, range_end - (range_start + b * block_size));
        for (int32_t t = 0; t < batch && !done; ++t) {
            const StagedGaussian s = staged[t];
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
            const float4 c = colors[s.id];
            acc.x += w * c.x;
            acc.y += w * c.y;
            acc.z += w * c.z;
            acc.w += w * c.w;
            if (w > top_w[K - 1]) {  // insertion into the descending top-K list
                int k = K - 1;
                while (k > 0 && top_w[k - 1] < w) {
                    top_w[k] = top_w[k - 1];
                    top_id[k] = top_id[k - 1];
                    --k;
                }
                top_w[k] = w;
                top_id[k] = s.id;
            }
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
            out_topk_w[pix * K + k] = top_w[k];
            out_topk_id[pix * K + k] = top_id[k];
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
    const float *__restrict__ g_topk_w,      // [H * W, K] (may be all zeros)
    float2 *__restrict__ g_means2d,          // [N] accumulated
    float3 *__restrict__ g_conics,           // [N]
    float4 *__restrict__ g_colors,           // [N]
    float *__restrict__ g_opacities          // [N]
) {
    extern __shared__ StagedGaussian staged[];
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

    const float T_fin = inside ? T_final[pix] : 1.f;
    float T = T_fin;
    const int32_t my_last = inside ? last_idx[pix] : -1;
    const float4 G = inside ? g_acc[pix] : make_float4(0.f, 0.f, 0.f, 0.f);
    float S = inside ? g_T[pix] * T_fin : 0.f;  // sum_{j > i} w_j h_j + dL/dT_final * T_final
    int32_t my_ids[K];
    float my_gw[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
        my_ids[k] = inside ? topk_id[pix * K + k] : -1;
        my_gw[k] = inside ? g_topk_w[pix * K + k] : 0.f;
    }

    // Batches back to front; inside a batch, entries back to front.
    for (int32_t b = n_batches - 1; b >= 0; --b) {
        __syncthreads();
        const int32_t batch_start = range_start + b * block_size;
        const int32_t idx = batch_start + tr;
        if (idx < range_end) {
            const int32_t g = flatten_ids[idx];
            staged[tr] = {g, means2d[g], conics[g], opacities[g]};
        }
        __syncthreads();
        const int32_t batch = min(block_size, range_end - batch_start);
        for (int32_t t = batch - 1; t >= 0; --t) {
            const int32_t pos = b * block_size + t;
            if (!inside || pos > my_last) continue;
            const StagedGaussian s = staged[t];
            const float2 delta = make_float2(s.xy.x - px, s.xy.y - py);
            const float sigma = gaussian_sigma(s.conic, delta);
            const float vis = __expf(-sigma);
            const float alpha = fminf(kMaxAlpha, s.opacity * vis);
            if (sigma < 0.f || alpha < kAlphaThreshold) continue;
            const float ra = 1.f / (1.f - alpha);
            T *= ra;  // transmittance before this Gaussian
            const float w = alpha * T;
            const float4 c = colors[s.id];
            float h = G.x * c.x + G.y * c.y + G.z * c.z + G.w * c.w;
#pragma unroll
            for (int k = 0; k < K; ++k) {
                if (my_ids[k] == s.id) h += my_gw[k];
            }
            const float g_alpha = T * h - S * ra;
            S += w * h;
            atomicAdd(&g_colors[s.id].x, w * G.x);
            atomicAdd(&g_colors[s.id].y, w * G.y);
            atomicAdd(&g_colors[s.id].z, w * G.z);
            atomicAdd(&g_colors[s.id].w, w * G.w);
            if (s.opacity * vis <= kMaxAlpha) {  // alpha not clamped: it moves with the geometry
                const float g_sigma = -s.opacity * vis * g_alpha;
                atomicAdd(&g_conics[s.id].x, 0.5f * g_sigma * delta.x * delta.x);
                atomicAdd(&g_conics[s.id].y, g_sigma * delta.x * delta.y);
                atomicAdd(&g_conics[s.id].z, 0.5f * g_sigma * delta.y * delta.y);
                atomicAdd(&g_means2d[s.id].x, g_sigma * (s.conic.x * delta.x + s.conic.y * delta.y));
                atomicAdd(&g_means2d[s.id].y, g_sigma * (s.conic.y * delta.x + s.conic.z * delta.y));
                atomicAdd(&g_opacities[s.id], vis * g_alpha);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Feature gather: out[p, d] = sum_k w[p, k] * F[id[p, k], d], fp32 accumulation.
template <typename scalar_t>
__global__ void feature_gather_fwd_kernel(
    const int64_t n_pixels, const int32_t K, const int32_t D,
    const float *__restrict__ topk_w, const int32_t *__restrict__ topk_id,
    const scalar_t *__restrict__ features,  // [N, D]
    scalar_t *__restrict__ out               // [P, D]
) {
    const int64_t p = blockIdx.x;
    if (p >= n_pixels) return;
    for (int32_t d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.f;
        for (int32_t k = 0; k < K; ++k) {
            const int32_t g = topk_id[p * K + k];
            if (g < 0) break;  // entries are sorted: -1 only at the tail
            acc += topk_w[p * K + k] * static_cast<float>(features[(int64_t)g * D + d]);
        }
        out[p * D + d] = static_cast<scalar_t>(acc);
    }
}

// dL/dF[id, d] += w * g[p, d] (fp32 buffer) and dL/dw[p, k] = <g[p], F[id_k]>.
template <typename scalar_t>
__global__ void feature_gather_bwd_kernel(
    const int64_t n_pixels, const int32_t K, const int32_t D,
    const float *__restrict__ topk_w, const int32_t *__restrict__ topk_id,
    const scalar_t *__restrict__ features, const scalar_t *__restrict__ g_out,
    float *__restrict__ g_features,  // [N, D] fp32
    float *__restrict__ g_topk_w     // [P, K]
) {
    const int64_t p = blockIdx.x;
    if (p >= n_pixels) return;
    extern __shared__ float partial[];  // [blockDim.x]
    for (int32_t k = 0; k < K; ++k) {
        const int32_t g = topk_id[p * K + k];
        if (g < 0) break;
        const float w = topk_w[p * K + k];
        float dot = 0.f;
        for (int32_t d = threadIdx.x; d < D; d += blockDim.x) {
            const float go = static_cast<float>(g_out[p * D + d]);
            atomicAdd(&g_features[(int64_t)g * D + d], w * go);
            dot += go * static_cast<float>(features[(int64_t)g * D + d]);
        }
        partial[threadIdx.x] = dot;
        __syncthreads();
        for (int32_t s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
            __syncthreads();
        }
        if (threadIdx.x == 0) g_topk_w[p * K + k] = partial[0];
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------
// Launchers.

namespace {
template <int K>
void launch_fwd(const RasterArgs &a, const RasterOutputs &o, cudaStream_t stream) {
    dim3 grid(a.tiles_x, a.tiles_y), block(a.tile_size, a.tile_size);
    const size_t shmem = sizeof(StagedGaussian) * a.tile_size * a.tile_size;
    topk_raster_fwd_kernel<K><<<grid, block, shmem, stream>>>(
        a.n_gaussians, reinterpret_cast<const float2 *>(a.means2d), reinterpret_cast<const float3 *>(a.conics),
        reinterpret_cast<const float4 *>(a.colors), a.opacities, a.width, a.height, a.tile_size, a.tiles_x,
        a.tiles_y, a.tile_offsets, a.flatten_ids, a.n_isects, reinterpret_cast<float4 *>(o.acc), o.T, o.last,
        o.topk_w, o.topk_id);
}

template <int K>
void launch_bwd(const RasterArgs &a, const RasterGrads &g, cudaStream_t stream) {
    dim3 grid(a.tiles_x, a.tiles_y), block(a.tile_size, a.tile_size);
    const size_t shmem = sizeof(StagedGaussian) * a.tile_size * a.tile_size;
    topk_raster_bwd_kernel<K><<<grid, block, shmem, stream>>>(
        a.n_gaussians, reinterpret_cast<const float2 *>(a.means2d), reinterpret_cast<const float3 *>(a.conics),
        reinterpret_cast<const float4 *>(a.colors), a.opacities, a.width, a.height, a.tile_size, a.tiles_x,
        a.tiles_y, a.tile_offsets, a.flatten_ids, a.n_isects, g.T_final, g.last, g.topk_id,
        reinterpret_cast<const float4 *>(g.g_acc), g.g_T, g.g_topk_w, reinterpret_cast<float2 *>(g.g_means2d),
        reinterpret_cast<float3 *>(g.g_conics), reinterpret_cast<float4 *>(g.g_colors), g.g_opacities);
}
}  // namespace

bool topk_raster_forward(const RasterArgs &args, const RasterOutputs &out, int K, cudaStream_t stream) {
    switch (K) {
    case 1: launch_fwd<1>(args, out, stream); break;
    case 4: launch_fwd<4>(args, out, stream); break;
    case 8: launch_fwd<8>(args, out, stream); break;
    case 16: launch_fwd<16>(args, out, stream); break;
    case 32: launch_fwd<32>(args, out, stream); break;
    default: return false;
    }
    return cudaGetLastError() == cudaSuccess;
}

bool topk_raster_backward(const RasterArgs &args, const RasterGrads &grads, int K, cudaStream_t stream) {
    switch (K) {
    case 1: launch_bwd<1>(args, grads, stream); break;
    case 4: launch_bwd<4>(args, grads, stream); break;
    case 8: launch_bwd<8>(args, grads, stream); break;
    case 16: launch_bwd<16>(args, grads, stream); break;
    case 32: launch_bwd<32>(args, grads, stream); break;
    default: return false;
    }
    return cudaGetLastError() == cudaSuccess;
}

template <typename scalar_t>
bool feature_gather_forward(int64_t n_pixels, int32_t K, int32_t D, const float *topk_w, const int32_t *topk_id,
                            const scalar_t *features, scalar_t *out, cudaStream_t stream) {
    const int threads = D >= 128 ? 128 : (D >= 64 ? 64 : 32);
    feature_gather_fwd_kernel<scalar_t><<<(unsigned)n_pixels, threads, 0, stream>>>(n_pixels, K, D, topk_w, topk_id,
                                                                                 features, out);
    return cudaGetLastError() == cudaSuccess;
}

template <typename scalar_t>
bool feature_gather_backward(int64_t n_pixels, int32_t K, int32_t D, const float *topk_w, const int32_t *topk_id,
                             const scalar_t *features, const scalar_t *g_out, float *g_features, float *g_topk_w,
                             cudaStream_t stream) {
    const int threads = D >= 128 ? 128 : (D >= 64 ? 64 : 32);
    feature_gather_bwd_kernel<scalar_t><<<(unsigned)n_pixels, threads, threads * sizeof(float), stream>>>(
        n_pixels, K, D, topk_w, topk_id, features, g_out, g_features, g_topk_w);
    return cudaGetLastError() == cudaSuccess;
}

#define FEATGS_INSTANTIATE(T)                                                                                  \
    template bool feature_gather_forward<T>(int64_t, int32_t, int32_t, const float *, const int32_t *, const T *, \
                                            T *, cudaStream_t);                                                \
    template bool feature_gather_backward<T>(int64_t, int32_t, int32_t, const float *, const int32_t *,          \
                                             const T *, const T *, float *, float *, cudaStream_t);

FEATGS_INSTANTIATE(float)
FEATGS_INSTANTIATE(__half)
FEATGS_INSTANTIATE(__nv_bfloat16)

}  // namespace featgs
