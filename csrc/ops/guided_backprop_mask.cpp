// torch adapter for the guided-backprop mask ops: schema, validation, CPU / CUDA / Meta implementations.
//   torch.ops.agingrt.guided_relu_backward(grad_out, act) -> grad_in
//   torch.ops.agingrt.guided_backprop_mask_taps(kernel_size, sigma, *, device) -> taps [K] float64, built on the host
//   torch.ops.agingrt.guided_backprop_mask_with_taps(grad, taps) -> mask [B, 1, H, W]
//   torch.ops.agingrt.guided_backprop_mask(grad, kernel_size, sigma) -> mask [B, 1, H, W]
// The sigma entry is the two others in sequence (taps on the host, then the with-taps path), so for the same
// (kernel_size, sigma) they give the same bits by construction.
//
// CUDA-graph safety: guided_relu_backward and guided_backprop_mask_with_taps are graph-safe. They check only
// metadata (shapes, dtypes, devices; never a tensor value, never a device-to-host copy), allocate their outputs
// and workspace with ATen (the caching allocator serves them during capture) and launch on the current stream.
// guided_backprop_mask builds its taps on the host and copies them to the device on every call: not capturable.
// No autograd: the mask is detached (docs/models/cusp.md section 3.6) and the backward is run explicitly.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "kernels/guided_backprop_mask.h"
#include "ops/op_utils.h"

#ifdef AGINGRT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace agingrt {
namespace {

constexpr const char* kReluOp = "guided_relu_backward";
constexpr const char* kMaskOp = "guided_backprop_mask";
constexpr const char* kTapsBuilderOp = "guided_backprop_mask_taps";
constexpr const char* kTapsOp = "guided_backprop_mask_with_taps";
constexpr int64_t kReluParallelGrain = 1 << 16;  // elements per task: large enough that a task outweighs its dispatch

// ---- guided_relu_backward ----------------------------------------------------------------------------

void validate_relu(const at::Tensor& grad_out, const at::Tensor& act) {
    check_floating(grad_out, "grad_out", kReluOp);
    TORCH_CHECK_TYPE(act.scalar_type() == grad_out.scalar_type(), kReluOp, ": act must have grad_out's dtype (",
                     grad_out.scalar_type(), "), got ", act.scalar_type());
    check_same_device(grad_out, "grad_out", act, "act", kReluOp);
    AGINGRT_CHECK_ARG(act.sizes() == grad_out.sizes(), kReluOp, "act must have the same shape as grad_out ",
                      shape_str(grad_out), ", got ", shape_str(act));
}

at::Tensor guided_relu_backward_impl(const at::Tensor& grad_out, const at::Tensor& act) {
    validate_relu(grad_out, act);
    // Keep grad_out's layout (channels_last stays channels_last); act is brought to the same one.
    const at::MemoryFormat format = grad_out.suggest_memory_format();
    const at::Tensor g = grad_out.contiguous(format);
    const at::Tensor a = act.contiguous(format);
    at::Tensor out = at::empty_like(g, g.options(), format);
    GuidedReluBackwardParams p{};
    p.grad_out = g.data_ptr();
    p.act = a.data_ptr();
    p.grad_in = out.data_ptr();
    p.n = g.numel();
    p.dtype = to_kernel_dtype(g.scalar_type());
#ifdef AGINGRT_WITH_CUDA
    if (g.is_cuda()) {
        AGINGRT_CHECK_ARG(g.scalar_type() != at::kDouble, kReluOp,
                          "float64 is CPU-only; use float32, float16 or bfloat16 on CUDA");
        const c10::cuda::CUDAGuard guard(g.device());
        check_status(guided_relu_backward_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), kReluOp, "CUDA");
        return out;
    }
#endif
    // Elementwise: contiguous chunks over torch's intra-op pool (each element is written by one chunk only).
    const int64_t item_bytes = g.element_size();
    parallel_cpu_kernel(p.n, kReluParallelGrain, kReluOp, [&](int64_t begin, int64_t end) {
        GuidedReluBackwardParams chunk = p;
        chunk.grad_out = static_cast<const char*>(p.grad_out) + begin * item_bytes;
        chunk.act = static_cast<const char*>(p.act) + begin * item_bytes;
        chunk.grad_in = static_cast<char*>(p.grad_in) + begin * item_bytes;
        chunk.n = end - begin;
        return guided_relu_backward_cpu(chunk);
    });
    return out;
}

at::Tensor guided_relu_backward_meta(const at::Tensor& grad_out, const at::Tensor& act) {
    validate_relu(grad_out, act);
    return at::empty_like(grad_out, grad_out.options(), grad_out.suggest_memory_format());
}

// ---- guided_backprop_mask ------------------------------------------------------------------------------

void validate_grad(const at::Tensor& grad, const char* op) {
    AGINGRT_CHECK_ARG(grad.dim() == 4, op, "grad must be 4-D [B, C, H, W] (the input gradient), got shape ",
                      shape_str(grad));
    check_floating(grad, "grad", op);
    AGINGRT_CHECK_ARG(grad.size(1) >= 1, op, "grad must have at least one channel, got shape ", shape_str(grad));
    AGINGRT_CHECK_ARG(grad.size(2) * grad.size(3) >= 2, op,
                      "grad must have at least 2 pixels (the unbiased std needs two), got shape ", shape_str(grad));
}

void validate_blur(int64_t kernel_size, double sigma, const char* op) {
    AGINGRT_CHECK_ARG(kernel_size >= 1 && kernel_size % 2 == 1, op,
                      "kernel_size must be a positive odd number (CUSP: 2*floor(29*H/448)+1), got ", kernel_size);
    AGINGRT_CHECK_ARG(std::isfinite(sigma) && sigma >= 0.0, op, "sigma must be finite and >= 0, got ", sigma);
}

// Metadata only: the taps' values are never read here (they may live on the GPU).
void validate_taps(const at::Tensor& grad, const at::Tensor& taps) {
    AGINGRT_CHECK_ARG(taps.dim() == 1 && taps.size(0) % 2 == 1, kTapsOp,
                      "taps must be 1-D [K] with K odd (guided_backprop_mask_taps builds them), got shape ",
                      shape_str(taps));
    TORCH_CHECK_TYPE(taps.scalar_type() == at::kDouble, kTapsOp,
                     ": taps must be float64 (the kernels round them once to their working precision), got ",
                     taps.scalar_type());
    check_same_device(grad, "grad", taps, "taps", kTapsOp);
}

at::ScalarType mask_dtype(const at::Tensor& grad) {
    // The mask statistics stay in full precision: float32 for float32 / float16 / bfloat16 gradients.
    return grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor empty_mask(const at::Tensor& grad) {
    return at::empty({grad.size(0), 1, grad.size(2), grad.size(3)}, grad.options().dtype(mask_dtype(grad)));
}

// K normalised Gaussian taps in float64 on the host, g[n] = exp(-(n - (K-1)/2)^2 / (2 sigma^2)) / sum; sigma 0 =
// impulse.
at::Tensor gaussian_taps(int64_t kernel_size, double sigma) {
    at::Tensor taps = at::zeros({kernel_size}, at::TensorOptions().dtype(at::kDouble));
    double* t = taps.data_ptr<double>();
    const int64_t center = (kernel_size - 1) / 2;
    if (sigma == 0.0) {
        t[center] = 1.0;
        return taps;
    }
    double sum = 0.0;
    for (int64_t n = 0; n < kernel_size; ++n) {
        const double dn = static_cast<double>(n - center);
        t[n] = std::exp(-(dn * dn) / (2.0 * sigma * sigma));
        sum += t[n];
    }
    for (int64_t n = 0; n < kernel_size; ++n) {
        t[n] /= sum;
    }
    return taps;
}

// Built on the host, then moved to `device` (if given) in one copy. The device argument also makes the op a
// factory that FakeTensorMode can run (it passes the fake device), so it traces like torch.zeros.
at::Tensor guided_backprop_mask_taps_impl(int64_t kernel_size, double sigma, std::optional<at::Device> device) {
    validate_blur(kernel_size, sigma, kTapsBuilderOp);
    const at::Tensor taps = gaussian_taps(kernel_size, sigma);
    return device.has_value() ? taps.to(*device) : taps;
}

GuidedBackpropMaskParams make_mask_params(const at::Tensor& grad, const at::Tensor& taps, at::Tensor& mask) {
    GuidedBackpropMaskParams p{};
    p.grad = grad.data_ptr();
    p.batch = grad.size(0);
    p.channels = grad.size(1);
    p.height = grad.size(2);
    p.width = grad.size(3);
    p.stride_b = grad.stride(0);  // any layout: the kernels read through the strides, no copy
    p.stride_c = grad.stride(1);
    p.stride_h = grad.stride(2);
    p.stride_w = grad.stride(3);
    p.grad_dtype = to_kernel_dtype(grad.scalar_type());
    p.taps = taps.data_ptr<double>();
    p.kernel_size = taps.numel();
    p.mask = mask.data_ptr();
    p.mask_dtype = to_kernel_dtype(mask.scalar_type());
    return p;
}

at::Tensor with_taps_cpu_impl(const at::Tensor& grad, const at::Tensor& taps) {
    validate_grad(grad, kTapsOp);
    validate_taps(grad, taps);
    const at::Tensor t = taps.contiguous();
    at::Tensor mask = empty_mask(grad);
    check_status(guided_backprop_mask_cpu(make_mask_params(grad, t, mask)), kTapsOp, "CPU");
    return mask;
}

at::Tensor with_taps_meta_impl(const at::Tensor& grad, const at::Tensor& taps) {
    validate_grad(grad, kTapsOp);
    validate_taps(grad, taps);
    return empty_mask(grad);
}

#ifdef AGINGRT_WITH_CUDA
at::Tensor with_taps_cuda_impl(const at::Tensor& grad, const at::Tensor& taps) {
    validate_grad(grad, kTapsOp);
    validate_taps(grad, taps);
    AGINGRT_CHECK_ARG(grad.scalar_type() != at::kDouble, kTapsOp,
                      "float64 grad is CPU-only; use float32, float16 or bfloat16 on CUDA");
    const c10::cuda::CUDAGuard guard(grad.device());
    const at::Tensor t = taps.contiguous();
    at::Tensor mask = empty_mask(grad);
    const size_t bytes = guided_backprop_mask_workspace_bytes(grad.size(0), grad.size(2), grad.size(3));
    at::Tensor workspace =
        at::empty({static_cast<int64_t>(bytes / sizeof(float))}, grad.options().dtype(at::kFloat));  // [2*B*H*W]
    GuidedBackpropMaskParams p = make_mask_params(grad, t, mask);
    p.workspace = workspace.data_ptr();
    check_status(guided_backprop_mask_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), kTapsOp, "CUDA");
    return mask;
}
#endif

// The sigma entry: taps on the host, then the with-taps path.
at::Tensor guided_backprop_mask_cpu_impl(const at::Tensor& grad, int64_t kernel_size, double sigma) {
    validate_grad(grad, kMaskOp);
    validate_blur(kernel_size, sigma, kMaskOp);
    return with_taps_cpu_impl(grad, gaussian_taps(kernel_size, sigma));
}

at::Tensor guided_backprop_mask_meta(const at::Tensor& grad, int64_t kernel_size, double sigma) {
    validate_grad(grad, kMaskOp);
    validate_blur(kernel_size, sigma, kMaskOp);
    return empty_mask(grad);
}

#ifdef AGINGRT_WITH_CUDA
at::Tensor guided_backprop_mask_cuda_impl(const at::Tensor& grad, int64_t kernel_size, double sigma) {
    validate_grad(grad, kMaskOp);
    validate_blur(kernel_size, sigma, kMaskOp);
    AGINGRT_CHECK_ARG(grad.scalar_type() != at::kDouble, kMaskOp,
                      "float64 grad is CPU-only; use float32, float16 or bfloat16 on CUDA");
    return with_taps_cuda_impl(grad, gaussian_taps(kernel_size, sigma).to(grad.device()));
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(agingrt, m) {
    m.def("guided_relu_backward(Tensor grad_out, Tensor act) -> Tensor");
    m.def("guided_backprop_mask(Tensor grad, int kernel_size, float sigma) -> Tensor");
    m.def("guided_backprop_mask_taps(int kernel_size, float sigma, *, Device? device=None) -> Tensor");
    m.def("guided_backprop_mask_with_taps(Tensor grad, Tensor taps) -> Tensor");
}

// No tensor argument, so no backend to dispatch on: CompositeExplicitAutograd also serves that case.
TORCH_LIBRARY_IMPL(agingrt, CompositeExplicitAutograd, m) {
    m.impl("guided_backprop_mask_taps", &guided_backprop_mask_taps_impl);
}

TORCH_LIBRARY_IMPL(agingrt, CPU, m) {
    m.impl("guided_relu_backward", &guided_relu_backward_impl);
    m.impl("guided_backprop_mask", &guided_backprop_mask_cpu_impl);
    m.impl("guided_backprop_mask_with_taps", &with_taps_cpu_impl);
}

TORCH_LIBRARY_IMPL(agingrt, Meta, m) {
    m.impl("guided_relu_backward", &guided_relu_backward_meta);
    m.impl("guided_backprop_mask", &guided_backprop_mask_meta);
    m.impl("guided_backprop_mask_with_taps", &with_taps_meta_impl);
}

#ifdef AGINGRT_WITH_CUDA
TORCH_LIBRARY_IMPL(agingrt, CUDA, m) {
    m.impl("guided_relu_backward", &guided_relu_backward_impl);
    m.impl("guided_backprop_mask", &guided_backprop_mask_cuda_impl);
    m.impl("guided_backprop_mask_with_taps", &with_taps_cuda_impl);
}
#endif

}  // namespace agingrt
