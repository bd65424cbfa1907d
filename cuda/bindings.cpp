// torch <-> featgs rasteriser kernels, for both builds: the CUDA one (tensors on the GPU) and
// the CPU emulation (tensors on the host); featgs::kernels_run_on_host() tells which. The CUDA
// stream comes from Python as an integer (torch.cuda.current_stream().cuda_stream; 0 for the
// emulation), so this file needs no CUDA headers.
//
// forward = rasteriser then feature gather, backward = gather transpose then geometry backward:
// each one call, its kernels enqueued back to back.
#include <torch/extension.h>

#include <limits>
#include <optional>

#include "topk_raster.h"

namespace {

void *as_stream(int64_t s) { return reinterpret_cast<void *>(s); }

void check(const torch::Tensor &t, const char *name, std::optional<torch::ScalarType> dtype = std::nullopt) {
    const bool host = featgs::kernels_run_on_host();
    TORCH_CHECK(host ? t.device().is_cpu() : t.device().is_cuda(), name, host ? " must be a CPU tensor (emulated kernels)"
                                                                            : " must be a CUDA tensor");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
    if (dtype) TORCH_CHECK(t.scalar_type() == *dtype, name, " must be ", *dtype, ", got ", t.scalar_type());
}

void ok(const char *error, const char *what) { TORCH_CHECK(error == nullptr, what, ": ", error ? error : ""); }

// Outputs the kernels write entirely: uninitialised, or NaN (-2^31 for ints) to show any
// element a kernel fails to write.
torch::Tensor output(at::IntArrayRef shape, const torch::TensorOptions &opts, bool poison) {
    auto t = torch::empty(shape, opts);
    if (poison) {
        if (at::isFloatingType(t.scalar_type())) t.fill_(std::numeric_limits<float>::quiet_NaN());
        else t.fill_(std::numeric_limits<int32_t>::min());
    }
    return t;
}

featgs::FeatureType feature_type(const torch::Tensor &f) {
    switch (f.scalar_type()) {
    case torch::kFloat32: return featgs::FeatureType::f32;
    case torch::kFloat16: return featgs::FeatureType::f16;
    case torch::kBFloat16: return featgs::FeatureType::bf16;
    default: TORCH_CHECK(false, "features must be float32, float16 or bfloat16, got ", f.scalar_type());
    }
}

featgs::RasterArgs raster_args(const torch::Tensor &means2d, const torch::Tensor &conics, const torch::Tensor &colors,
                               const torch::Tensor &opacities, int64_t width, int64_t height, int64_t tile_size,
                               const torch::Tensor &tile_offsets, const torch::Tensor &flatten_ids) {
    check(means2d, "means2d", torch::kFloat32);
    check(conics, "conics", torch::kFloat32);
    check(colors, "colors", torch::kFloat32);
    check(opacities, "opacities", torch::kFloat32);
    check(tile_offsets, "tile_offsets", torch::kInt32);
    check(flatten_ids, "flatten_ids", torch::kInt32);
    const int64_t n = means2d.size(0);
    TORCH_CHECK(means2d.dim() == 2 && means2d.size(1) == 2, "means2d must be [N, 2]");
    TORCH_CHECK(conics.dim() == 2 && conics.size(0) == n && conics.size(1) == 3, "conics must be [N, 3]");
    TORCH_CHECK(colors.dim() == 2 && colors.size(0) == n && colors.size(1) == 4, "colors must be [N, 4] (rgb + depth)");
    TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == n, "opacities must be [N]");
    TORCH_CHECK(tile_size >= 1 && tile_size * tile_size <= 1024, "tile_size must be in 1..32");
    TORCH_CHECK(width >= 1 && height >= 1, "the image must have pixels");
    featgs::RasterArgs a;
    a.n_gaussians = (int32_t)n;
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

featgs::GatherArgs gather_args(const torch::Tensor &topk_w, const torch::Tensor &topk_id, const torch::Tensor &features) {
    check(topk_w, "topk_w", torch::kFloat32);
    check(topk_id, "topk_id", torch::kInt32);
    check(features, "features");
    TORCH_CHECK(topk_w.dim() == 2 && topk_id.sizes() == topk_w.sizes(), "topk_w and topk_id must be [P, K]");
    TORCH_CHECK(features.dim() == 2, "features must be [N, D]");
    featgs::GatherArgs a;
    a.n_pixels = topk_w.size(0);
    a.K = (int32_t)topk_w.size(1);
    a.D = (int32_t)features.size(1);
    a.type = feature_type(features);
    a.topk_w = topk_w.data_ptr<float>();
    a.topk_id = topk_id.data_ptr<int32_t>();
    a.features = features.data_ptr();
    return a;
}

bool has(const std::optional<torch::Tensor> &t) { return t.has_value() && t->defined(); }

torch::Tensor gather_forward(torch::Tensor topk_w, torch::Tensor topk_id, torch::Tensor features, bool poison,
                             int64_t stream) {
    auto a = gather_args(topk_w, topk_id, features);
    auto out = output({a.n_pixels, a.D}, features.options(), poison);
    ok(featgs::gather_forward(a, out.data_ptr(), as_stream(stream)), "feature_gather_forward");
    return out;
}

std::vector<torch::Tensor> gather_backward(torch::Tensor topk_w, torch::Tensor topk_id, torch::Tensor features,
                                           torch::Tensor g_out, std::optional<torch::Tensor> g_topk_w, bool poison,
                                           int64_t stream) {
    auto a = gather_args(topk_w, topk_id, features);
    check(g_out, "g_out", features.scalar_type());
    TORCH_CHECK(g_out.sizes() == at::IntArrayRef({a.n_pixels, a.D}), "g_out must be [P, D]");
    if (has(g_topk_w)) {
        check(*g_topk_w, "g_topk_w", torch::kFloat32);
        TORCH_CHECK(g_topk_w->sizes() == topk_w.sizes(), "g_topk_w must be [P, K]");
    }
    auto gF = torch::zeros(features.sizes(), features.options().dtype(torch::kFloat32));
    auto gw = output(topk_w.sizes(), topk_w.options(), poison);
    ok(featgs::gather_backward(a, g_out.data_ptr(), has(g_topk_w) ? g_topk_w->data_ptr<float>() : nullptr,
                               gF.data_ptr<float>(), gw.data_ptr<float>(), as_stream(stream)),
       "feature_gather_backward");
    return {gF, gw};
}

// acc [P, 4], T [P], last [P], topk_w [P, K], topk_id [P, K], features [P, D] (when given).
std::vector<torch::Tensor> forward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor colors,
                                   torch::Tensor opacities, int64_t width, int64_t height, int64_t tile_size,
                                   torch::Tensor tile_offsets, torch::Tensor flatten_ids, int64_t K,
                                   std::optional<torch::Tensor> features, bool poison, int64_t stream) {
    auto a = raster_args(means2d, conics, colors, opacities, width, height, tile_size, tile_offsets, flatten_ids);
    auto f = means2d.options();
    auto i = f.dtype(torch::kInt32);
    const int64_t P = height * width;
    auto acc = output({P, 4}, f, poison);
    auto T = output({P}, f, poison);
    auto last = output({P}, i, poison);
    auto topk_w = output({P, K}, f, poison);
    auto topk_id = output({P, K}, i, poison);
    featgs::RasterOutputs o{acc.data_ptr<float>(), T.data_ptr<float>(), last.data_ptr<int32_t>(),
                            topk_w.data_ptr<float>(), topk_id.data_ptr<int32_t>()};
    ok(featgs::raster_forward(a, o, (int)K, as_stream(stream)), "topk_raster_forward");
    std::vector<torch::Tensor> outs{acc, T, last, topk_w, topk_id};
    if (has(features)) {
        TORCH_CHECK(features->size(0) == means2d.size(0), "features must be [N, D]");
        outs.push_back(gather_forward(topk_w, topk_id, *features, poison, stream));
    }
    return outs;
}

// g_means2d, g_conics, g_colors, g_opacities, and g_features (fp32) when features are given.
std::vector<torch::Tensor> backward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor colors,
                                    torch::Tensor opacities, int64_t width, int64_t height, int64_t tile_size,
                                    torch::Tensor tile_offsets, torch::Tensor flatten_ids, torch::Tensor T_final,
                                    torch::Tensor last, torch::Tensor topk_w, torch::Tensor topk_id,
                                    std::optional<torch::Tensor> features, torch::Tensor g_acc, torch::Tensor g_T,
                                    std::optional<torch::Tensor> g_topk_w, std::optional<torch::Tensor> g_features,
                                    int64_t stream) {
    auto a = raster_args(means2d, conics, colors, opacities, width, height, tile_size, tile_offsets, flatten_ids);
    const int64_t P = height * width;
    check(T_final, "T_final", torch::kFloat32);
    check(last, "last", torch::kInt32);
    check(topk_w, "topk_w", torch::kFloat32);
    check(topk_id, "topk_id", torch::kInt32);
    check(g_acc, "g_acc", torch::kFloat32);
    check(g_T, "g_T", torch::kFloat32);
    TORCH_CHECK(T_final.numel() == P && last.numel() == P && g_acc.numel() == 4 * P && g_T.numel() == P,
                "per-pixel buffers must hold H * W pixels");
    const int64_t K = topk_id.size(1);
    std::vector<torch::Tensor> outs;
    auto g_means2d = torch::zeros_like(means2d);
    auto g_conics = torch::zeros_like(conics);
    auto g_colors = torch::zeros_like(colors);
    auto g_opac = torch::zeros_like(opacities);
    std::optional<torch::Tensor> gw = has(g_topk_w) ? g_topk_w : std::nullopt;
    torch::Tensor gF;
    if (has(features) && has(g_features)) {
        auto r = gather_backward(topk_w, topk_id, *features, *g_features, g_topk_w, false, stream);
        gF = r[0];
        gw = r[1];
    }
    if (gw) check(*gw, "g_topk_w", torch::kFloat32);
    featgs::RasterGrads g{T_final.data_ptr<float>(), last.data_ptr<int32_t>(), topk_id.data_ptr<int32_t>(),
                          g_acc.data_ptr<float>(), g_T.data_ptr<float>(), gw ? gw->data_ptr<float>() : nullptr,
                          g_means2d.data_ptr<float>(), g_conics.data_ptr<float>(), g_colors.data_ptr<float>(),
                          g_opac.data_ptr<float>()};
    ok(featgs::raster_backward(a, g, (int)K, as_stream(stream)), "topk_raster_backward");
    outs = {g_means2d, g_conics, g_colors, g_opac};
    if (gF.defined()) outs.push_back(gF);
    return outs;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("on_host", &featgs::kernels_run_on_host, "True for the CPU emulation of the kernels");
    m.def("forward", &forward, "rasterise (acc, T, last, topk_w, topk_id), then gather features when given");
    m.def("backward", &backward, "gather transpose (when features are given), then geometry backward");
    m.def("gather_forward", &gather_forward, "features = sum_k w_k F[id_k]");
    m.def("gather_backward", &gather_backward, "dL/dF (fp32) and dL/dw");
}
