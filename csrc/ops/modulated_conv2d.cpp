// torch adapter for modulated_conv2d: schema, validation, CPU / CUDA / Meta implementations.
//   torch.ops.agingrt.modulated_conv2d(x, weight, styles, demodulate, padding, up, eps, q) -> y
// Activation-scaling form: xs = x * s (kernel), y = conv(xs, W) (ATen: cuDNN on CUDA), y *= d (kernel).
// Autograd lives in modulated_conv2d_autograd.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#include "kernels/modulated_conv2d.h"
#include "ops/op_utils.h"

#ifdef AGINGRT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace agingrt {
namespace {

constexpr const char* kOp = "modulated_conv2d";

void validate(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles, int64_t padding, int64_t up,
              double eps, const std::optional<at::Tensor>& q) {
    AGINGRT_CHECK_ARG(x.dim() == 4, kOp, "x must be 4-D [B, I, H, W], got shape ", shape_str(x));
    AGINGRT_CHECK_ARG(weight.dim() == 4, kOp, "weight must be 4-D [O, I, kh, kw], got shape ", shape_str(weight));
    AGINGRT_CHECK_ARG(styles.dim() == 2, kOp, "styles must be 2-D [B, I], got shape ", shape_str(styles));
    check_floating(x, "x", kOp);
    TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), kOp, ": weight must have x's dtype (", x.scalar_type(),
                     "), got ", weight.scalar_type());
    const at::ScalarType style_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const char* style_name = style_type == at::kDouble ? "float64" : "float32";
    TORCH_CHECK_TYPE(styles.scalar_type() == style_type, kOp, ": styles must be ", style_name, " for ", x.scalar_type(),
                     " x (float64 only with float64 x; styles and d stay in full precision), got ",
                     styles.scalar_type());
    check_same_device(x, "x", weight, "weight", kOp);
    check_same_device(x, "x", styles, "styles", kOp);
    AGINGRT_CHECK_ARG(weight.size(1) == x.size(1), kOp, "weight's input channels (dim 1) must equal x's channels ",
                      x.size(1), ", got weight shape ", shape_str(weight));
    AGINGRT_CHECK_ARG(styles.size(0) == x.size(0) && styles.size(1) == x.size(1), kOp,
                      "styles must have shape [B, I] = [", x.size(0), ", ", x.size(1), "] to match x ", shape_str(x),
                      ", got ", shape_str(styles));
    AGINGRT_CHECK_ARG(up == 1 || up == 2, kOp,
                      "up must be 1 (stride-1 correlation) or 2 (stride-2 transposed conv), got ", up);
    AGINGRT_CHECK_ARG(padding >= 0, kOp, "padding must be >= 0, got ", padding);
    AGINGRT_CHECK_ARG(up == 1 || padding == 0, kOp, "padding must be 0 when up=2 (CUSP conv0), got ", padding);
    AGINGRT_CHECK_ARG(eps > 0.0, kOp, "eps must be > 0, got ", eps);
    if (up == 1) {
        AGINGRT_CHECK_ARG(x.size(2) + 2 * padding >= weight.size(2) && x.size(3) + 2 * padding >= weight.size(3), kOp,
                          "the padded input (", x.size(2) + 2 * padding, "x", x.size(3) + 2 * padding,
                          ") must be at least the kernel size ", weight.size(2), "x", weight.size(3));
    }
    if (q.has_value()) {
        TORCH_CHECK_TYPE(q->scalar_type() == style_type, kOp, ": q must be ", style_name, " like styles, got ",
                         q->scalar_type());
        check_same_device(x, "x", *q, "q", kOp);
        AGINGRT_CHECK_ARG(q->dim() == 2 && q->size(0) == weight.size(0) && q->size(1) == weight.size(1), kOp,
                          "q must have shape [O, I] = [", weight.size(0), ", ", weight.size(1), "], got ",
                          shape_str(*q));
    }
}

std::vector<int64_t> output_shape(const at::Tensor& x, const at::Tensor& weight, int64_t padding, int64_t up) {
    const int64_t kh = weight.size(2);
    const int64_t kw = weight.size(3);
    if (up == 1) {
        return {x.size(0), weight.size(0), x.size(2) + 2 * padding - kh + 1, x.size(3) + 2 * padding - kw + 1};
    }
    return {x.size(0), weight.size(0), (x.size(2) - 1) * 2 + kh, (x.size(3) - 1) * 2 + kw};
}

// y[b, c, ...] = x[b, c, ...] * scale[b, c]; x and y dense in `format` (y may be x).
void scale_channels(const at::Tensor& x, const at::Tensor& scale, at::Tensor& y, at::MemoryFormat format) {
    ScaleChannelsParams p{};
    p.x = x.data_ptr();
    p.scale = scale.data_ptr();
    p.y = y.data_ptr();
    p.batch = x.size(0);
    p.channels = x.size(1);
    p.spatial = x.size(2) * x.size(3);
    p.channels_last = format == at::MemoryFormat::ChannelsLast;
    p.dtype = to_kernel_dtype(x.scalar_type());
    p.scale_dtype = to_kernel_dtype(scale.scalar_type());
#ifdef AGINGRT_WITH_CUDA
    if (x.is_cuda()) {
        check_status(scale_channels_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), kOp, "scale_channels CUDA");
        return;
    }
#endif
    check_status(scale_channels_cpu(p), kOp, "scale_channels CPU");
}

at::Tensor demodulation(const at::Tensor& styles, const at::Tensor& q, double eps) {
    at::Tensor d = at::empty({styles.size(0), q.size(0)}, styles.options());  // [B, O]
    DemodulationParams p{};
    p.styles = styles.data_ptr();
    p.q = q.data_ptr();
    p.d = d.data_ptr();
    p.batch = styles.size(0);
    p.in_channels = styles.size(1);
    p.out_channels = q.size(0);
    p.eps = eps;
    p.dtype = to_kernel_dtype(styles.scalar_type());
#ifdef AGINGRT_WITH_CUDA
    if (styles.is_cuda()) {
        check_status(demodulation_coefficients_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), kOp,
                     "demodulation CUDA");
        return d;
    }
#endif
    check_status(demodulation_coefficients_cpu(p), kOp, "demodulation CPU");
    return d;
}

// Shared by the CPU and CUDA registrations: the kernels dispatch on the tensors' device.
at::Tensor modulated_conv2d_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
                                 bool demodulate, int64_t padding, int64_t up, double eps,
                                 const std::optional<at::Tensor>& q) {
    validate(x, weight, styles, padding, up, eps, q);
    // The output keeps x's layout (NCHW or channels_last); Meta below promises the same strides.
    const at::MemoryFormat format = x.suggest_memory_format();
    const at::Tensor xc = x.contiguous(format);
    const at::Tensor s = styles.contiguous();
    at::Tensor xs = at::empty_like(xc, xc.options(), format);                          // [B, I, H, W]
    scale_channels(xc, s, xs, format);                                                 // prologue: x * s
    at::Tensor y = up == 1 ? at::conv2d(xs, weight, {}, 1, padding)                    // [B, O, H', W']
                           : at::conv_transpose2d(xs, weight.transpose(0, 1), {}, 2);  // [B, O, 2H-2+kh, ...]
    y = y.contiguous(format);
    if (!demodulate) {
        return y;
    }
    // Q = sum_k W^2 in full precision, unless the caller precomputed it (the engine does, at load time).
    const at::Tensor qq = q.has_value() ? q->contiguous() : weight.to(s.scalar_type()).square().sum({2, 3});  // [O, I]
    const at::Tensor d = demodulation(s, qq, eps);                                                            // [B, O]
    scale_channels(y, d, y, format);  // epilogue: y * d, in place
    return y;
}

at::Tensor modulated_conv2d_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
                                 bool demodulate, int64_t padding, int64_t up, double eps,
                                 const std::optional<at::Tensor>& q) {
    (void)demodulate;
    validate(x, weight, styles, padding, up, eps, q);
    return at::empty(output_shape(x, weight, padding, up), x.options().memory_format(x.suggest_memory_format()));
}

#ifdef AGINGRT_WITH_CUDA
at::Tensor modulated_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
                                 bool demodulate, int64_t padding, int64_t up, double eps,
                                 const std::optional<at::Tensor>& q) {
    AGINGRT_CHECK_ARG(x.scalar_type() != at::kDouble, kOp, "float64 x is CPU-only; use float32, float16 or bfloat16");
    const c10::cuda::CUDAGuard guard(x.device());
    return modulated_conv2d_impl(x, weight, styles, demodulate, padding, up, eps, q);
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(agingrt, m) {
    m.def(
        "modulated_conv2d(Tensor x, Tensor weight, Tensor styles, bool demodulate=True, int padding=0, int up=1, "
        "float eps=1e-08, Tensor? q=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(agingrt, CPU, m) {
    m.impl("modulated_conv2d", &modulated_conv2d_impl);
}

TORCH_LIBRARY_IMPL(agingrt, Meta, m) {
    m.impl("modulated_conv2d", &modulated_conv2d_meta);
}

#ifdef AGINGRT_WITH_CUDA
TORCH_LIBRARY_IMPL(agingrt, CUDA, m) {
    m.impl("modulated_conv2d", &modulated_conv2d_cuda);
}
#endif

}  // namespace agingrt
