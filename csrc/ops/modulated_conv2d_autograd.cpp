// Autograd for torch.ops.agingrt.modulated_conv2d (CUSP trains through it). The forward redispatches to the
// CPU / CUDA kernel; the backward is written in differentiable ATen ops:
//
//   xs = x * s,  c = conv(xs, W),  y = c * d,  d = (s^2 Q^T + eps)^(-1/2),  Q = sum_k W^2
//   gc  = gy * d                      gd = sum_hw gy * c = sum_hw (gy * y) / d    (c = y / d, d > 0)
//   gxs, gW_conv = convolution_backward(gc, xs, W)       gx = gxs * s,  gs_conv = sum_hw gxs * x
//   gv  = gd * (-1/2) d^3             (dd/dv for v = s^2 Q^T + eps)
//   gs_demod = 2 s (gv Q)             gQ = gv^T s^2    ->  gW_demod = 2 W gQ  (or the grad of q when given)
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

namespace agingrt {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ModConvSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, int64_t, int64_t,
                                    double, const std::optional<at::Tensor>&);

class ModulatedConv2dFunction : public torch::autograd::Function<ModulatedConv2dFunction> {
  public:
    static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& styles, bool demodulate, int64_t padding, int64_t up, double eps,
                              const std::optional<at::Tensor>& q) {
        static const auto op =
            c10::Dispatcher::singleton().findSchemaOrThrow("agingrt::modulated_conv2d", "").typed<ModConvSignature>();
        at::Tensor y;
        {
            const at::AutoDispatchBelowADInplaceOrView guard;
            y = op.call(x, weight, styles, demodulate, padding, up, eps, q);
        }
        ctx->save_for_backward({x, weight, styles, q.value_or(at::Tensor()), demodulate ? y : at::Tensor()});
        ctx->saved_data["demodulate"] = demodulate;
        ctx->saved_data["padding"] = padding;
        ctx->saved_data["up"] = up;
        ctx->saved_data["eps"] = eps;
        return y;
    }

    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        const at::Tensor& x = saved[0];     // [B, I, H, W]
        const at::Tensor& w = saved[1];     // [O, I, kh, kw]
        const at::Tensor& s = saved[2];     // [B, I], float32 / float64
        const at::Tensor& q_in = saved[3];  // [O, I] or undefined
        const at::Tensor& y = saved[4];     // [B, O, H', W'] (only when demodulating)
        const bool demodulate = ctx->saved_data["demodulate"].toBool();
        const int64_t padding = ctx->saved_data["padding"].toInt();
        const int64_t up = ctx->saved_data["up"].toInt();
        const double eps = ctx->saved_data["eps"].toDouble();
        const at::Tensor& gy = grads[0];  // [B, O, H', W']
        variable_list out(8);
        if (!gy.defined()) {
            return out;
        }
        const at::Tensor s4 = s.to(x.scalar_type()).unsqueeze(-1).unsqueeze(-1);  // [B, I, 1, 1]
        at::Tensor gc = gy;
        at::Tensor gs;  // [B, I]
        if (demodulate) {
            const at::Tensor q = q_in.defined() ? q_in : w.to(s.scalar_type()).square().sum({2, 3});  // [O, I]
            const at::Tensor s2 = s.square();                                                         // [B, I]
            const at::Tensor d = (at::matmul(s2, q.t()) + eps).rsqrt();                               // [B, O]
            gc = gy * d.to(gy.scalar_type()).unsqueeze(-1).unsqueeze(-1);                             // [B, O, H', W']
            const at::Tensor gd = (gy * y).sum({2, 3}).to(s.scalar_type()) / d;                       // [B, O]
            const at::Tensor gv = gd * d.pow(3) * -0.5;                                               // [B, O]
            gs = 2 * s * at::matmul(gv, q);                                                           // [B, I]
            const at::Tensor gq = at::matmul(gv.t(), s2);                                             // [O, I]
            if (q_in.defined()) {
                out[7] = gq;
            } else if (ctx->needs_input_grad(1)) {
                out[1] = 2 * w * gq.to(w.scalar_type()).unsqueeze(-1).unsqueeze(-1);  // [O, I, kh, kw]
            }
        }
        // up=1: conv2d(xs, W, padding); up=2: conv_transpose2d(xs, W^T(in/out), stride 2).
        const bool transposed = up == 2;
        const at::Tensor w_arg = transposed ? w.transpose(0, 1) : w;
        const at::Tensor xs = x * s4;  // [B, I, H, W]
        const std::array<bool, 3> mask{true, ctx->needs_input_grad(1), false};
        auto [gxs, gw_arg, gbias] = at::convolution_backward(gc, xs, w_arg, std::nullopt, {up, up}, {padding, padding},
                                                             {1, 1}, transposed, {0, 0}, 1, mask);
        (void)gbias;
        out[0] = gxs * s4;                                                     // [B, I, H, W]
        const at::Tensor gs_conv = (gxs * x).sum({2, 3}).to(s.scalar_type());  // [B, I]
        out[2] = gs.defined() ? gs + gs_conv : gs_conv;
        if (gw_arg.defined()) {
            const at::Tensor gw_conv = transposed ? gw_arg.transpose(0, 1) : gw_arg;  // [O, I, kh, kw]
            out[1] = out[1].defined() ? out[1] + gw_conv : gw_conv;
        }
        return out;
    }
};

at::Tensor modulated_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
                                     bool demodulate, int64_t padding, int64_t up, double eps,
                                     const std::optional<at::Tensor>& q) {
    return ModulatedConv2dFunction::apply(x, weight, styles, demodulate, padding, up, eps, q);
}

}  // namespace

TORCH_LIBRARY_IMPL(agingrt, Autograd, m) {
    m.impl("modulated_conv2d", &modulated_conv2d_autograd);
}

}  // namespace agingrt
