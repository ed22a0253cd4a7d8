// torch adapter for group_norm_act: schema, validation, CPU / CUDA / Meta implementations.
//   torch.ops.agingrt.group_norm_act(x, groups, scale, shift, eps, act) -> y
//   y = act((x - mu[n, g]) * rstd[n, g] * scale[n, c] + shift[n, c]), statistics per (n, group) in fp32 or better.
// An inference op: no derivative. Its Autograd kernel refuses inputs that need a gradient with a clear error, so a
// backward pass can never run through it silently wrong (training differentiates the oracle,
// training/layers/group_norm_act.py, which pyagingrt.ops.group_norm_act picks with impl="auto").
// Graph-safe: no host reads of tensor values; the CUDA path allocates its scratch on the device. The CPU path
// splits the (n, g) work items over torch's intra-op pool (at::parallel_for; torch.set_num_threads governs it).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/group_norm_act.h"
#include "ops/op_utils.h"

#ifdef AGINGRT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace agingrt {
namespace {

constexpr const char* kOp = "group_norm_act";
constexpr int64_t kParallelGrain = 32768;  // elements per CPU task at least (ATen's own at::internal::GRAIN_SIZE)

GroupNormActivation parse_act(const std::string& act) {
    if (act == "none") {
        return GroupNormActivation::kNone;
    }
    if (act == "relu") {
        return GroupNormActivation::kRelu;
    }
    AGINGRT_CHECK_ARG(act == "silu", kOp, "act must be one of 'none', 'relu', 'silu', got '", act, "'");
    return GroupNormActivation::kSilu;
}

void check_coef(const at::Tensor& t, const char* name, const at::Tensor& x) {
    const int64_t b = x.size(0);
    const int64_t c = x.size(1);
    const bool ok =
        (t.dim() == 1 && t.size(0) == c) || (t.dim() == 2 && t.size(1) == c && (t.size(0) == b || t.size(0) == 1));
    AGINGRT_CHECK_ARG(ok, kOp, name, " must be [C] or [B, C] with B = ", b, ", C = ", c,
                      " (fold the affine into per-(sample, channel) values), got shape ", shape_str(t));
    const at::ScalarType want = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    TORCH_CHECK_TYPE(t.scalar_type() == want, kOp, ": ", name, " must be ", want == at::kDouble ? "float64" : "float32",
                     " for ", x.scalar_type(), " x (the folded affine stays in full precision), got ", t.scalar_type());
    check_same_device(x, "x", t, name, kOp);
}

void validate(const at::Tensor& x, int64_t groups, const at::Tensor& scale, const at::Tensor& shift, double eps,
              const std::string& act) {
    AGINGRT_CHECK_ARG(x.dim() == 4, kOp, "x must be 4-D [B, C, H, W], got shape ", shape_str(x));
    const at::ScalarType xt = x.scalar_type();
    TORCH_CHECK_TYPE(xt == at::kFloat || xt == at::kHalf || xt == at::kBFloat16 || xt == at::kDouble, kOp,
                     ": x must be float32, float16, bfloat16 or float64, got ", xt);
    AGINGRT_CHECK_ARG(groups > 0 && x.size(1) % groups == 0, kOp,
                      "groups must be positive and divide the channel count C = ", x.size(1), ", got ", groups);
    check_coef(scale, "scale", x);
    check_coef(shift, "shift", x);
    AGINGRT_CHECK_ARG(std::isfinite(eps) && eps >= 0.0, kOp, "eps must be finite and >= 0, got ", eps);
    parse_act(act);
}

// y keeps x's memory format (channels_last in, channels_last out); shared by every backend so that the Meta
// kernel reports the same strides as the real ones.
at::MemoryFormat output_format(const at::Tensor& x) {
    return x.suggest_memory_format();
}

at::Tensor make_output(const at::Tensor& x) {
    return at::empty(x.sizes(), x.options().memory_format(output_format(x)));
}

// scale / shift as the kernel reads them: unit channel stride, [C] and [1, C] broadcast with batch stride 0.
at::Tensor coef_rows(const at::Tensor& t, int64_t* stride_b) {
    at::Tensor rows = t.dim() == 1 ? t.unsqueeze(0) : t;  // [1 or B, C]
    if (rows.size(1) > 1 && rows.stride(1) != 1) {
        rows = rows.contiguous();
    }
    *stride_b = rows.size(0) == 1 ? 0 : rows.stride(0);
    return rows;
}

GroupNormActParams make_params(const at::Tensor& x, int64_t groups, const at::Tensor& scale, int64_t scale_stride,
                               const at::Tensor& shift, int64_t shift_stride, double eps, const std::string& act,
                               at::Tensor& y) {
    GroupNormActParams p{};
    p.x = x.data_ptr();
    p.scale = scale.data_ptr();
    p.shift = shift.data_ptr();
    p.y = y.data_ptr();
    p.batch = x.size(0);
    p.channels = x.size(1);
    p.pixels = x.size(2) * x.size(3);
    p.groups = groups;
    p.scale_stride_b = scale_stride;
    p.shift_stride_b = shift_stride;
    p.layout = output_format(x) == at::MemoryFormat::ChannelsLast ? GroupNormLayout::kNHWC : GroupNormLayout::kNCHW;
    p.x_dtype = to_kernel_dtype(x.scalar_type());
    p.coef_dtype = to_kernel_dtype(scale.scalar_type());
    p.eps = eps;
    p.act = parse_act(act);
    return p;
}

at::Tensor group_norm_act_cpu_impl(const at::Tensor& x, int64_t groups, const at::Tensor& scale,
                                   const at::Tensor& shift, double eps, const std::string& act) {
    validate(x, groups, scale, shift, eps, act);
    const at::Tensor xi = x.contiguous(output_format(x));  // dense NCHW or NHWC; a copy only for other strides
    int64_t scale_stride = 0;
    int64_t shift_stride = 0;
    const at::Tensor sc = coef_rows(scale, &scale_stride);
    const at::Tensor sh = coef_rows(shift, &shift_stride);
    at::Tensor y = make_output(x);
    const GroupNormActParams p = make_params(xi, groups, sc, scale_stride, sh, shift_stride, eps, act, y);
    // The (n, g) items split over torch's intra-op threads, at least ~kParallelGrain values per task so small
    // tensors stay on one thread. Each item is computed whole by one call, so the result does not depend on the
    // thread count. Fewer items than threads (B = 1 and G = 1, say) leaves threads idle: splitting a group would
    // need a cross-thread merge of its statistics, and the CPU engines have B * G >= 32 (AcGAN G = C, PADA G = 32).
    // In NHWC a sample's groups interleave in every pixel row, so threads splitting one sample's groups each stream
    // (through the prefetchers) the whole sample: no faster than one thread, and up to 3x slower on 2 threads
    // ([1, 64, 224, 224]: 6 ms against 2 ms). The grain keeps each sample's groups on one thread there.
    const int64_t item_elements = std::max<int64_t>(1, (p.channels / p.groups) * p.pixels);
    int64_t grain = std::max<int64_t>(1, kParallelGrain / item_elements);
    if (p.layout == GroupNormLayout::kNHWC) {
        grain = std::max(grain, p.groups);
    }
    parallel_cpu_kernel(group_norm_act_cpu_work_items(p), grain, kOp,
                        [&](int64_t begin, int64_t end) { return group_norm_act_cpu(p, begin, end); });
    return y;
}

at::Tensor group_norm_act_meta_impl(const at::Tensor& x, int64_t groups, const at::Tensor& scale,
                                    const at::Tensor& shift, double eps, const std::string& act) {
    validate(x, groups, scale, shift, eps, act);
    return make_output(x);
}

#ifdef AGINGRT_WITH_CUDA
at::Tensor group_norm_act_cuda_impl(const at::Tensor& x, int64_t groups, const at::Tensor& scale,
                                    const at::Tensor& shift, double eps, const std::string& act) {
    validate(x, groups, scale, shift, eps, act);
    AGINGRT_CHECK_ARG(x.scalar_type() != at::kDouble, kOp,
                      "float64 runs on the CPU only; on CUDA x must be float32, float16 or bfloat16");
    AGINGRT_CHECK_ARG(x.size(0) <= 65535, kOp, "the CUDA kernel takes at most 65535 samples per call, got ", x.size(0),
                      "; split the batch");
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor xi = x.contiguous(output_format(x));
    int64_t scale_stride = 0;
    int64_t shift_stride = 0;
    const at::Tensor sc = coef_rows(scale, &scale_stride);
    const at::Tensor sh = coef_rows(shift, &shift_stride);
    at::Tensor y = make_output(x);
    const GroupNormActParams p = make_params(xi, groups, sc, scale_stride, sh, shift_stride, eps, act, y);
    // Device scratch from the caching allocator (16-byte aligned; capturable in a CUDA graph).
    const at::Tensor workspace = at::empty({static_cast<int64_t>(group_norm_act_cuda_workspace_bytes(p))},
                                           x.options().dtype(at::kByte).memory_format(at::MemoryFormat::Contiguous));
    check_status(group_norm_act_cuda(p, workspace.numel() > 0 ? workspace.data_ptr() : nullptr,
                                     c10::cuda::getCurrentCUDAStream().stream()),
                 kOp, "CUDA");
    return y;
}
#endif

at::Tensor group_norm_act_autograd_impl(const at::Tensor& x, int64_t groups, const at::Tensor& scale,
                                        const at::Tensor& shift, double eps, const std::string& act) {
    const bool needs_grad =
        at::GradMode::is_enabled() && (x.requires_grad() || scale.requires_grad() || shift.requires_grad());
    TORCH_CHECK_NOT_IMPLEMENTED(!needs_grad, kOp,
                                ": the native op has no autograd (it is an inference op), but an input requires a "
                                "gradient; call pyagingrt.ops.group_norm_act with impl='auto' or 'torch' to "
                                "differentiate through the oracle, or run under torch.no_grad()");
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("agingrt::group_norm_act", "")
                               .typed<at::Tensor(const at::Tensor&, int64_t, const at::Tensor&, const at::Tensor&,
                                                 double, const std::string&)>();
    const at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, groups, scale, shift, eps, act);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(agingrt, m) {
    m.def(
        "group_norm_act(Tensor x, int groups, Tensor scale, Tensor shift, float eps=1e-05, str act=\"none\") -> "
        "Tensor");
}

TORCH_LIBRARY_IMPL(agingrt, CPU, m) {
    m.impl("group_norm_act", &group_norm_act_cpu_impl);
}

TORCH_LIBRARY_IMPL(agingrt, Meta, m) {
    m.impl("group_norm_act", &group_norm_act_meta_impl);
}

TORCH_LIBRARY_IMPL(agingrt, Autograd, m) {
    m.impl("group_norm_act", &group_norm_act_autograd_impl);
}

#ifdef AGINGRT_WITH_CUDA
TORCH_LIBRARY_IMPL(agingrt, CUDA, m) {
    m.impl("group_norm_act", &group_norm_act_cuda_impl);
}
#endif

}  // namespace agingrt
