// torch <-> featgs CUDA rasteriser. The current CUDA stream comes from Python as an integer
// (torch.cuda.current_stream().cuda_stream), so this file needs no CUDA-enabled torch headers.
#include <torch/extension.h>

#include "topk_raster.h"

namespace {

cudaStream_t as_stream(int64_t s) { return reinterpret_cast<cudaStream_t>(s); }

void check_cuda(const torch::Tensor &t, const char *name, torch::ScalarType dtype) {
    TORCH_CHECK(t.device().is_cuda(), name, " must be a CUDA tensor");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(t.scalar_type() == dtype, name, " has the wrong dtype");
}

featgs::RasterArgs raster_args(const torch::Tensor &means2d, const torch::Tensor &conics, const torch::Tensor &colors,
                               const torch::Tensor &opacities, int64_t width, int64_t height, int64_t tile_size,
                               const torch::Tensor &tile_offsets, const torch::Tensor &flatten_ids) {
    check_cuda(means2d, "means2d", torch::kFloat32);
    check_cuda(conics, "conics", torch::kFloat32);
    check_cuda(colors, "colors", torch::kFloat32);
    check_cuda(opacities, "opacities", torch::kFloat32);
    check_cuda(tile_offsets, "tile_offsets", torch::kInt32);
    check_cuda(flatten_ids, "flatten_ids", torch::kInt32);
    TORCH_CHECK(colors.size(1) == 4, "colors must be [N, 4] (rgb + depth)");
    featgs::RasterArgs a;
    a.n_gaussians = (int32_t)means2d.size(0);
    a.means2d = means2d.data_ptr<float>();
    a.conics = conics.data_ptr<float>();
    a.colors = colors.data_ptr<float>();
    a.opacities = opacities.data_ptr<float>();
    a.width = (int32_t)width;
    a.height = (int32_t)height;
    a.tile_size = (int32_t)tile_size;
    a.tiles_x = (int32_t)((width + tile_size - 1) / tile_size);
    a.tiles_y = (int32_t)((height + tile_size - 1) / tile_size);
    TORCH_CHECK(tile_offsets.numel() == (int64_t)a.tiles_x * a.tiles_y, "tile_offsets must hold one entry per tile");
    a.tile_offsets = tile_offsets.data_ptr<int32_t>();
    a.flatten_ids = flatten_ids.data_ptr<int32_t>();
    a.n_isects = (int32_t)flatten_ids.numel();
    return a;
}

std::vector<torch::Tensor> raster_forward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor colors,
                                          torch::Tensor opacities, int64_t width, int64_t height, int64_t tile_size,
                                          torch::Tensor tile_offsets, torch::Tensor flatten_ids, int64_t K,
                                          int64_t stream) {
    auto a = raster_args(means2d, conics, colors, opacities, width, height, tile_size, tile_offsets, flatten_ids);
    auto f = means2d.options();
    auto acc = torch::zeros({height * width, 4}, f);
    auto T = torch::ones({height * width}, f);
    auto last = torch::full({height * width}, -1, f.dtype(torch::kInt32));
    auto topk_w = torch::zeros({height * width, K}, f);
    auto topk_id = torch::full({height * width, K}, -1, f.dtype(torch::kInt32));
    featgs::RasterOutputs o{acc.data_ptr<float>(), T.data_ptr<float>(), last.data_ptr<int32_t>(),
                            topk_w.data_ptr<float>(), topk_id.data_ptr<int32_t>()};
    TORCH_CHECK(featgs::topk_raster_forward(a, o, (int)K, as_stream(stream)), "topk_raster_forward failed (K=", K, ")");
    return {acc, T, last, topk_w, topk_id};
}

std::vector<torch::Tensor> raster_backward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor colors,
                                           torch::Tensor opacities, int64_t width, int64_t height, int64_t tile_size,
                                           torch::Tensor tile_offsets, torch::Tensor flatten_ids, torch::Tensor T_final,
                                           torch::Tensor last, torch::Tensor topk_id, torch::Tensor g_acc,
                                           torch::Tensor g_T, torch::Tensor g_topk_w, int64_t stream) {
    auto a = raster_args(means2d, conics, colors, opacities, width, height, tile_size, tile_offsets, flatten_ids);
    check_cuda(g_acc, "g_acc", torch::kFloat32);
    check_cuda(g_T, "g_T", torch::kFloat32);
    check_cuda(g_topk_w, "g_topk_w", torch::kFloat32);
    const int64_t K = topk_id.size(1);
    auto g_means2d = torch::zeros_like(means2d);
    auto g_conics = torch::zeros_like(conics);
    auto g_colors = torch::zeros_like(colors);
    auto g_opac = torch::zeros_like(opacities);
    featgs::RasterGrads g{T_final.data_ptr<float>(), last.data_ptr<int32_t>(), topk_id.data_ptr<int32_t>(),
                          g_acc.data_ptr<float>(), g_T.data_ptr<float>(), g_topk_w.data_ptr<float>(),
                          g_means2d.data_ptr<float>(), g_conics.data_ptr<float>(), g_colors.data_ptr<float>(),
                          g_opac.data_ptr<float>()};
    TORCH_CHECK(featgs::topk_raster_backward(a, g, (int)K, as_stream(stream)), "topk_raster_backward failed");
    return {g_means2d, g_conics, g_colors, g_opac};
}

template <typename T, typename Native>
bool gather_fwd(const torch::Tensor &w, const torch::Tensor &id, const torch::Tensor &F, torch::Tensor &out,
                cudaStream_t s) {
    return featgs::feature_gather_forward<Native>(w.size(0), (int32_t)w.size(1), (int32_t)F.size(1),
                                                  w.data_ptr<float>(), id.data_ptr<int32_t>(),
                                                  reinterpret_cast<const Native *>(F.data_ptr<T>()),
                                                  reinterpret_cast<Native *>(out.data_ptr<T>()), s);
}

torch::Tensor gather_forward(torch::Tensor topk_w, torch::Tensor topk_id, torch::Tensor features, int64_t stream) {
    check_cuda(topk_w, "topk_w", torch::kFloat32);
    check_cuda(topk_id, "topk_id", torch::kInt32);
    TORCH_CHECK(features.is_cuda() && features.is_contiguous(), "features must be a contiguous CUDA tensor");
    auto out = torch::empty({topk_w.size(0), features.size(1)}, features.options());
    bool ok = false;
    switch (features.scalar_type()) {
    case torch::kFloat32: ok = gather_fwd<float, float>(topk_w, topk_id, features, out, as_stream(stream)); break;
    case torch::kFloat16: ok = gather_fwd<at::Half, __half>(topk_w, topk_id, features, out, as_stream(stream)); break;
    case torch::kBFloat16:
        ok = gather_fwd<at::BFloat16, __nv_bfloat16>(topk_w, topk_id, features, out, as_stream(stream));
        break;
    default: TORCH_CHECK(false, "features must be float32, float16 or bfloat16");
    }
    TORCH_CHECK(ok, "feature_gather_forward failed");
    return out;
}

template <typename T, typename Native>
bool gather_bwd(const torch::Tensor &w, const torch::Tensor &id, const torch::Tensor &F, const torch::Tensor &g,
                torch::Tensor &gF, torch::Tensor &gw, cudaStream_t s) {
    return featgs::feature_gather_backward<Native>(
        w.size(0), (int32_t)w.size(1), (int32_t)F.size(1), w.data_ptr<float>(), id.data_ptr<int32_t>(),
        reinterpret_cast<const Native *>(F.data_ptr<T>()), reinterpret_cast<const Native *>(g.data_ptr<T>()),
        gF.data_ptr<float>(), gw.data_ptr<float>(), s);
}

std::vector<torch::Tensor> gather_backward(torch::Tensor topk_w, torch::Tensor topk_id, torch::Tensor features,
                                           torch::Tensor g_out, int64_t stream) {
    TORCH_CHECK(g_out.scalar_type() == features.scalar_type() && g_out.is_contiguous(), "g_out must match features");
    auto gF = torch::zeros(features.sizes(), features.options().dtype(torch::kFloat32));
    auto gw = torch::zeros_like(topk_w);
    bool ok = false;
    switch (features.scalar_type()) {
    case torch::kFloat32: ok = gather_bwd<float, float>(topk_w, topk_id, features, g_out, gF, gw, as_stream(stream)); break;
    case torch::kFloat16:
        ok = gather_bwd<at::Half, __half>(topk_w, topk_id, features, g_out, gF, gw, as_stream(stream));
        break;
    case torch::kBFloat16:
        ok = gather_bwd<at::BFloat16, __nv_bfloat16>(topk_w, topk_id, features, g_out, gF, gw, as_stream(stream));
        break;
    default: TORCH_CHECK(false, "features must be float32, float16 or bfloat16");
    }
    TORCH_CHECK(ok, "feature_gather_backward failed");
    return {gF, gw};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("raster_forward", &raster_forward, "geometry forward: acc, T, last, topk_w, topk_id");
    m.def("raster_backward", &raster_backward, "geometry backward: g_means2d, g_conics, g_colors, g_opacities");
    m.def("gather_forward", &gather_forward, "features = sum_k w_k F[id_k]");
    m.def("gather_backward", &gather_backward, "dL/dF (fp32) and dL/dw");
}
