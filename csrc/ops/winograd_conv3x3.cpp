// torch adapter for winograd_conv3x3: schema, validation, CPU and Meta implementations.
//   torch.ops.agingrt.winograd_conv3x3(x, weight, u, bias=None, chunk_tiles=0) -> y = conv2d(x, weight, bias,
//   padding=1)
// computed as Winograd F(4x4, 3x3) from u, the transformed weight (pyagingrt.ops.winograd_weight). weight itself
// is only checked here; it is what the op's standard-op form (ONNX export) and the oracle convolve with.
// CPU only, fp32: on CUDA, cuDNN already chooses among Winograd, FFT and implicit-GEMM algorithms per shape.
// An inference op: no derivative (its Autograd kernel refuses inputs that need a gradient).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "kernels/winograd_conv3x3.h"
#include "ops/op_utils.h"

namespace agingrt {
namespace {

constexpr const char* kOp = "winograd_conv3x3";
// Tiles per chunk: V and M of a chunk (36 x tiles x (C + O) floats) should stay in the cache between the transforms
// and the GEMMs, and each GEMM's M dimension (tiles) should be large enough that re-reading U[p] for every chunk
// costs little. Target kChunkBytes, clamped to [kMinChunkTiles, kMaxChunkTiles] tiles, then the tiles split into
// equal chunks. Measured on 2 Zen threads (docs/performance.md section 3.6): 256 -> 256 channels at 56 x 56 took
// 11.8 / 10.4 / 9.7 ms with 64 / 113 / 227-tile chunks; 64 -> 64 at 224 x 224 12.0 / 13.9 / 24.0 ms with
// 227 / 910 / 1820.
constexpr int64_t kChunkBytes = int64_t{8} << 20;
constexpr int64_t kMinChunkTiles = 128;
constexpr int64_t kMaxChunkTiles = 256;
constexpr int64_t kGrainTiles = 4;  // tiles per thread-pool task of a transform

void validate(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& u, const std::optional<at::Tensor>& bias,
              int64_t chunk_tiles) {
    AGINGRT_CHECK_ARG(x.dim() == 4, kOp, "x must be 4-D [N, C, H, W], got shape ", shape_str(x));
    TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, kOp, ": x must be float32, got ", x.scalar_type());
    const int64_t c = x.size(1);
    AGINGRT_CHECK_ARG(weight.dim() == 4 && weight.size(1) == c && weight.size(2) == 3 && weight.size(3) == 3, kOp,
                      "weight must be [O, C, 3, 3] with C = x.size(1) = ", c, ", got shape ", shape_str(weight));
    const int64_t o = weight.size(0);
    AGINGRT_CHECK_ARG(u.dim() == 3 && u.size(0) == 36 && u.size(1) == c && u.size(2) == o, kOp,
                      "u must be [36, C, O] = [36, ", c, ", ", o, "] (winograd_weight(weight)), got shape ",
                      shape_str(u));
    TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat && u.scalar_type() == at::kFloat, kOp,
                     ": weight and u must be float32, got ", weight.scalar_type(), " and ", u.scalar_type());
    check_same_device(x, "x", weight, "weight", kOp);
    check_same_device(x, "x", u, "u", kOp);
    if (bias.has_value()) {
        AGINGRT_CHECK_ARG(bias->dim() == 1 && bias->size(0) == o, kOp, "bias must be [O] with O = ", o, ", got shape ",
                          shape_str(*bias));
        TORCH_CHECK_TYPE(bias->scalar_type() == at::kFloat, kOp, ": bias must be float32, got ", bias->scalar_type());
        check_same_device(x, "x", *bias, "bias", kOp);
    }
    AGINGRT_CHECK_ARG(c > 0 && o > 0, kOp, "x and weight need at least one channel, got C = ", c, ", O = ", o);
    AGINGRT_CHECK_ARG(chunk_tiles >= 0, kOp, "chunk_tiles must be >= 0 (0: automatic), got ", chunk_tiles);
}

// y is channels_last like the input the kernels read; shared with the Meta kernel so both report the same strides.
at::Tensor make_output(const at::Tensor& x, const at::Tensor& weight) {
    return at::empty({x.size(0), weight.size(0), x.size(2), x.size(3)},
                     x.options().memory_format(at::MemoryFormat::ChannelsLast));
}

int64_t chunk_size(int64_t chunk_tiles, int64_t channels, int64_t outputs, int64_t tiles) {
    if (chunk_tiles > 0) {
        return std::min(chunk_tiles, tiles);
    }
    const int64_t per_tile = 36 * (channels + outputs) * static_cast<int64_t>(sizeof(float));
    const int64_t target = std::clamp(kChunkBytes / per_tile, kMinChunkTiles, kMaxChunkTiles);
    const int64_t chunks = (tiles + target - 1) / target;
    return (tiles + chunks - 1) / chunks;
}

at::Tensor winograd_conv3x3_cpu_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& u,
                                     const std::optional<at::Tensor>& bias, int64_t chunk_tiles) {
    validate(x, weight, u, bias, chunk_tiles);
    const std::optional<at::Tensor> bc =
        bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
    const at::Tensor xi = x.contiguous(at::MemoryFormat::ChannelsLast);  // NHWC rows, read in place when already so
    const at::Tensor uc = u.contiguous();
    at::Tensor y = make_output(x, weight);
    const int64_t n = x.size(0);
    const int64_t c = x.size(1);
    const int64_t h = x.size(2);
    const int64_t w = x.size(3);
    const int64_t o = weight.size(0);
    const int64_t tiles = n * winograd_tiles_per_image(h, w);
    if (tiles == 0) {
        return y;
    }
    const int64_t chunk = chunk_size(chunk_tiles, c, o, tiles);
    const at::Tensor v_buffer = at::empty({36 * chunk * c}, x.options().memory_format(at::MemoryFormat::Contiguous));
    const at::Tensor m_buffer = at::empty({36 * chunk * o}, x.options().memory_format(at::MemoryFormat::Contiguous));
    for (int64_t first = 0; first < tiles; first += chunk) {
        const int64_t count = std::min(chunk, tiles - first);
        const WinogradInputParams in{xi.data_ptr<float>(), v_buffer.data_ptr<float>(), n, h, w, c, first, count * c};
        parallel_cpu_kernel(count, kGrainTiles, kOp,
                            [&](int64_t begin, int64_t end) { return winograd_input_transform_cpu(in, begin, end); });
        at::Tensor v3 = v_buffer.narrow(0, 0, 36 * count * c).view({36, count, c});  // [36, tiles, C]
        at::Tensor m3 = m_buffer.narrow(0, 0, 36 * count * o).view({36, count, o});  // [36, tiles, O]
        at::bmm_out(m3, v3, uc);                                                     // 36 GEMMs [tiles, C] x [C, O]
        const WinogradOutputParams out{m_buffer.data_ptr<float>(),
                                       bc.has_value() ? bc->data_ptr<float>() : nullptr,
                                       y.data_ptr<float>(),
                                       n,
                                       h,
                                       w,
                                       o,
                                       first,
                                       count * o};
        parallel_cpu_kernel(count, kGrainTiles, kOp,
                            [&](int64_t begin, int64_t end) { return winograd_output_transform_cpu(out, begin, end); });
    }
    return y;
}

at::Tensor winograd_conv3x3_meta_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& u,
                                      const std::optional<at::Tensor>& bias, int64_t chunk_tiles) {
    validate(x, weight, u, bias, chunk_tiles);
    return make_output(x, weight);
}

at::Tensor winograd_conv3x3_autograd_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& u,
                                          const std::optional<at::Tensor>& bias, int64_t chunk_tiles) {
    const bool needs_grad = at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad() ||
                                                           u.requires_grad() || (bias && bias->requires_grad()));
    TORCH_CHECK_NOT_IMPLEMENTED(!needs_grad, kOp,
                                ": the native op has no autograd (it is an inference op), but an input requires a "
                                "gradient; use F.conv2d(x, weight, padding=1) to differentiate, or run under "
                                "torch.no_grad()");
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("agingrt::winograd_conv3x3", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                 const std::optional<at::Tensor>&, int64_t)>();
    const at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, weight, u, bias, chunk_tiles);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(agingrt, m) {
    m.def("winograd_conv3x3(Tensor x, Tensor weight, Tensor u, Tensor? bias=None, int chunk_tiles=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(agingrt, CPU, m) {
    m.impl("winograd_conv3x3", &winograd_conv3x3_cpu_impl);
}

TORCH_LIBRARY_IMPL(agingrt, Meta, m) {
    m.impl("winograd_conv3x3", &winograd_conv3x3_meta_impl);
}

TORCH_LIBRARY_IMPL(agingrt, Autograd, m) {
    m.impl("winograd_conv3x3", &winograd_conv3x3_autograd_impl);
}

}  // namespace agingrt
