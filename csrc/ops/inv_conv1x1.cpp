// torch adapter for inv_conv1x1: schema, validation, CPU / CUDA / Meta implementations and autograd.
//   torch.ops.agingrt.inv_conv1x1(x, weight, bias) -> y,   y[b, :, h, w] = weight @ x[b, :, h, w] + bias
// The inverse direction is the same op with (W'^-1, -loc) (training/layers/inv_conv1x1.py).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

#include "kernels/inv_conv1x1.h"
#include "ops/op_utils.h"

#ifdef AGINGRT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace agingrt {
namespace {

constexpr const char* kOp = "inv_conv1x1";
// From this many channels up, the fp32 NCHW CUDA path is a batched GEMM in cuBLAS: the op does C/4 FLOP per
// byte in fp32, so at C >= 128 it is compute-bound on current GPUs and cuBLAS beats the tiled kernel. Chosen from
// that arithmetic intensity, not measured yet: re-tune with benchmarks/bench_inv_conv1x1.py.
constexpr int64_t kCublasMinChannels = 128;

bool is_half_type(at::ScalarType t) {
    return t == at::kHalf || t == at::kBFloat16;
}

void validate(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
    AGINGRT_CHECK_ARG(x.dim() == 4, kOp, "x must be 4-D [B, C, H, W], got shape ", shape_str(x));
    const at::ScalarType xt = x.scalar_type();
    TORCH_CHECK_TYPE(xt == at::kFloat || xt == at::kDouble || is_half_type(xt), kOp,
                     ": x must be float32, float64, float16 or bfloat16, got ", xt);
    const int64_t c = x.size(1);
    AGINGRT_CHECK_ARG(weight.dim() == 2 && weight.size(0) == c && weight.size(1) == c, kOp,
                      "weight must be [C, C] with C = x.size(1) = ", c, ", got shape ", shape_str(weight));
    const at::ScalarType wt = weight.scalar_type();
    TORCH_CHECK_TYPE(wt == xt || (wt == at::kFloat && is_half_type(xt)), kOp, ": weight must have x's dtype (", xt,
                     "), or be float32 when x is float16/bfloat16 (fp32 weights keep the flow accurate), got ", wt);
    check_same_device(x, "x", weight, "weight", kOp);
    if (bias.has_value()) {
        AGINGRT_CHECK_ARG(bias->dim() == 1 && bias->size(0) == c, kOp, "bias must be [C] with C = x.size(1) = ", c,
                          ", got shape ", shape_str(*bias));
        TORCH_CHECK_TYPE(bias->scalar_type() == wt, kOp, ": bias must have weight's dtype (", wt, "), got ",
                         bias->scalar_type());
        check_same_device(x, "x", *bias, "bias", kOp);
    }
}

// The memory format of y follows x (a channels_last x gives a channels_last y); shared by every backend so that
// the Meta kernel reports the same strides as the real ones.
at::Tensor make_output(const at::Tensor& x) {
    return at::empty(x.sizes(), x.options().memory_format(x.suggest_memory_format()));
}

// Element stride of the flattened pixel axis p = h * W + w, or nullopt when (H, W) cannot be viewed as one axis.
std::optional<int64_t> pixel_stride(const at::Tensor& t) {
    const int64_t h = t.size(2);
    const int64_t w = t.size(3);
    if (w == 1) {
        return t.stride(2);
    }
    if (h == 1 || t.stride(2) == w * t.stride(3)) {
        return t.stride(3);
    }
    return std::nullopt;
}

// x as the kernel reads it: any strides whose pixel axis flattens (NCHW, channels_last, a channel slice,
// an expanded gradient) are used in place; anything else is copied once.
at::Tensor kernel_input(const at::Tensor& x) {
    return pixel_stride(x).has_value() ? x : x.contiguous();
}

InvConv1x1Params make_params(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                             at::Tensor& y) {
    InvConv1x1Params p{};
    p.x = x.data_ptr();
    p.weight = w.data_ptr();
    p.bias = b.has_value() ? b->data_ptr() : nullptr;
    p.y = y.data_ptr();
    p.batch = x.size(0);
    p.channels = x.size(1);
    p.pixels = x.size(2) * x.size(3);
    p.x_stride_b = x.stride(0);
    p.x_stride_c = x.stride(1);
    p.x_stride_p = *pixel_stride(x);
    p.y_stride_b = y.stride(0);
    p.y_stride_c = y.stride(1);
    p.y_stride_p = *pixel_stride(y);
    p.x_dtype = to_kernel_dtype(x.scalar_type());
    return p;
}

// Weight and bias in the kernel's accumulation dtype (float64 for float64 x, else float32), contiguous.
at::Tensor as_acc(const at::Tensor& t, const at::Tensor& x) {
    return t.to(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
}

std::optional<at::Tensor> as_acc(const std::optional<at::Tensor>& t, const at::Tensor& x) {
    return t.has_value() ? std::optional<at::Tensor>(as_acc(*t, x)) : std::nullopt;
}

at::Tensor inv_conv1x1_cpu_impl(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
    validate(x, weight, bias);
    const at::Tensor xi = kernel_input(x);
    const at::Tensor w = as_acc(weight, x);
    const std::optional<at::Tensor> b = as_acc(bias, x);
    at::Tensor y = make_output(x);
    check_status(inv_conv1x1_cpu(make_params(xi, w, b, y)), kOp, "CPU");
    return y;
}

at::Tensor inv_conv1x1_meta_impl(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
    validate(x, weight, bias);
    return make_output(x);
}

#ifdef AGINGRT_WITH_CUDA
at::Tensor inv_conv1x1_cuda_impl(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
    validate(x, weight, bias);
    AGINGRT_CHECK_ARG(x.scalar_type() != at::kDouble, kOp,
                      "float64 runs on the CPU only; on CUDA x must be float32, float16 or bfloat16");
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor xi = kernel_input(x);
    const at::Tensor w = as_acc(weight, x);
    const std::optional<at::Tensor> b = as_acc(bias, x);
    at::Tensor y = make_output(x);
    const int64_t n = x.size(0);
    const int64_t c = x.size(1);
    const int64_t pixels = x.size(2) * x.size(3);
    if (x.scalar_type() == at::kFloat && c >= kCublasMinChannels && *pixel_stride(xi) == 1 && y.is_contiguous()) {
        // y[b] = W x[b] (+ c): one strided-batched SGEMM. TF32 follows torch.backends.cuda.matmul.allow_tf32
        // (off by default; the flow's fp32 bounds need it off, docs/models/ageflow.md section 8 item 3).
        const at::Tensor x3 = xi.as_strided({n, c, pixels}, {xi.stride(0), xi.stride(1), 1});
        at::Tensor y3 = y.view({n, c, pixels});
        const at::Tensor w3 = w.unsqueeze(0).expand({n, c, c});
        if (b.has_value()) {
            at::baddbmm_out(y3, b->view({1, c, 1}).expand({n, c, pixels}), w3, x3);
        } else {
            at::bmm_out(y3, w3, x3);
        }
        return y;
    }
    check_status(inv_conv1x1_cuda(make_params(xi, w, b, y), c10::cuda::getCurrentCUDAStream().stream()), kOp, "CUDA");
    return y;
}
#endif

// ---- autograd: dx = W^T dy (the op itself), dW = sum_{b,h,w} dy x^T, db = sum_{b,h,w} dy ------------------------

at::Tensor call_inv_conv1x1(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("agingrt::inv_conv1x1", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
    return op.call(x, weight, bias);
}

class InvConv1x1Function : public torch::autograd::Function<InvConv1x1Function> {
  public:
    static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias) {
        const at::AutoDispatchBelowADInplaceOrView guard;
        ctx->save_for_backward({x, weight});
        ctx->saved_data["has_bias"] = bias.has_value();
        return call_inv_conv1x1(x, weight, bias);
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        const at::Tensor& x = saved[0];       // [B, C, H, W]
        const at::Tensor& weight = saved[1];  // [C, C]
        const at::Tensor& dy = grads[0];      // [B, C, H, W]
        at::Tensor dx;
        at::Tensor dw;
        at::Tensor db;
        if (ctx->needs_input_grad(0)) {
            // Through the dispatcher (not below autograd), so double backward works too.
            dx = call_inv_conv1x1(dy, weight.t().contiguous(), std::nullopt);  // [B, C, H, W]
        }
        if (ctx->needs_input_grad(1)) {
            dw = at::tensordot(dy, x, {0, 2, 3}, {0, 2, 3}).to(weight.scalar_type());  // [C, C]
        }
        if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
            db = dy.sum({0, 2, 3}).to(weight.scalar_type());  // [C]
        }
        return {dx, dw, db};
    }
};

at::Tensor inv_conv1x1_autograd_impl(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias) {
    return InvConv1x1Function::apply(x, weight, bias);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(agingrt, m) {
    m.def("inv_conv1x1(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(agingrt, CPU, m) {
    m.impl("inv_conv1x1", &inv_conv1x1_cpu_impl);
}

TORCH_LIBRARY_IMPL(agingrt, Meta, m) {
    m.impl("inv_conv1x1", &inv_conv1x1_meta_impl);
}

TORCH_LIBRARY_IMPL(agingrt, Autograd, m) {
    m.impl("inv_conv1x1", &inv_conv1x1_autograd_impl);
}

#ifdef AGINGRT_WITH_CUDA
TORCH_LIBRARY_IMPL(agingrt, CUDA, m) {
    m.impl("inv_conv1x1", &inv_conv1x1_cuda_impl);
}
#endif

}  // namespace agingrt
