// torch adapter for ddim_step: schema, validation, CPU / CUDA / Meta implementations.
//   torch.ops.agingrt.ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, clip) -> x_prev
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "kernels/ddim_step.h"
#include "ops/op_utils.h"

#ifdef AGINGRT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace agingrt {
namespace {

constexpr const char* kOp = "ddim_step";

void validate(const at::Tensor& x_t, const at::Tensor& eps, double alpha_bar_t, double alpha_bar_prev) {
    check_floating(x_t, "x_t", kOp);
    check_floating(eps, "eps", kOp);
    AGINGRT_CHECK_ARG(x_t.scalar_type() == at::kFloat || x_t.scalar_type() == at::kDouble, kOp,
                      "x_t must be float32 (or float64 on CPU): the DDIM state stays in full precision, got ",
                      x_t.scalar_type());
    AGINGRT_CHECK_ARG(
        eps.scalar_type() == x_t.scalar_type() || eps.scalar_type() == at::kHalf || eps.scalar_type() == at::kBFloat16,
        kOp, "eps must have x_t's dtype (", x_t.scalar_type(), ") or be float16/bfloat16, got ", eps.scalar_type());
    check_same_device(x_t, "x_t", eps, "eps", kOp);
    AGINGRT_CHECK_ARG(eps.sizes() == x_t.sizes(), kOp, "eps must have the same shape as x_t ", shape_str(x_t), ", got ",
                      shape_str(eps));
    AGINGRT_CHECK_ARG(alpha_bar_t > 0.0 && alpha_bar_t < 1.0, kOp, "alpha_bar_t must lie in (0, 1), got ", alpha_bar_t);
    AGINGRT_CHECK_ARG(alpha_bar_prev >= 0.0 && alpha_bar_prev <= 1.0, kOp, "alpha_bar_prev must lie in [0, 1], got ",
                      alpha_bar_prev);
}

DdimStepParams make_params(const at::Tensor& x, const at::Tensor& e, at::Tensor& out, double alpha_bar_t,
                           double alpha_bar_prev, bool clip) {
    DdimStepParams p{};
    p.x_t = x.data_ptr();
    p.eps = e.data_ptr();
    p.x_prev = out.data_ptr();
    p.n = x.numel();
    p.x_dtype = to_kernel_dtype(x.scalar_type());
    p.eps_dtype = to_kernel_dtype(e.scalar_type());
    // Coefficients in float64 on the host (docs/models/pada.md section 4).
    p.coef_a = std::sqrt(1.0 / alpha_bar_t);
    p.coef_b = std::sqrt(1.0 / alpha_bar_t - 1.0);
    p.coef_c = std::sqrt(alpha_bar_prev);
    p.coef_e = std::sqrt(1.0 - alpha_bar_prev);
    p.clip = clip;
    return p;
}

at::Tensor ddim_step_cpu_impl(const at::Tensor& x_t, const at::Tensor& eps, double alpha_bar_t, double alpha_bar_prev,
                              bool clip) {
    validate(x_t, eps, alpha_bar_t, alpha_bar_prev);
    const at::Tensor x = x_t.contiguous();
    const at::Tensor e = eps.contiguous();
    at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
    check_status(ddim_step_cpu(make_params(x, e, out, alpha_bar_t, alpha_bar_prev, clip)), kOp, "CPU");
    return out;
}

at::Tensor ddim_step_meta_impl(const at::Tensor& x_t, const at::Tensor& eps, double alpha_bar_t, double alpha_bar_prev,
                               bool clip) {
    (void)eps;
    (void)alpha_bar_t;
    (void)alpha_bar_prev;
    (void)clip;
    return at::empty_like(x_t, at::MemoryFormat::Contiguous);
}

#ifdef AGINGRT_WITH_CUDA
at::Tensor ddim_step_cuda_impl(const at::Tensor& x_t, const at::Tensor& eps, double alpha_bar_t, double alpha_bar_prev,
                               bool clip) {
    validate(x_t, eps, alpha_bar_t, alpha_bar_prev);
    AGINGRT_CHECK_ARG(x_t.scalar_type() == at::kFloat, kOp, "x_t must be float32 on CUDA, got ", x_t.scalar_type());
    const c10::cuda::CUDAGuard guard(x_t.device());
    const at::Tensor x = x_t.contiguous();
    const at::Tensor e = eps.contiguous();
    at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
    check_status(ddim_step_cuda(make_params(x, e, out, alpha_bar_t, alpha_bar_prev, clip),
                                c10::cuda::getCurrentCUDAStream().stream()),
                 kOp, "CUDA");
    return out;
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(agingrt, m) {
    m.def("ddim_step(Tensor x_t, Tensor eps, float alpha_bar_t, float alpha_bar_prev, bool clip=True) -> Tensor");
}

TORCH_LIBRARY_IMPL(agingrt, CPU, m) {
    m.impl("ddim_step", &ddim_step_cpu_impl);
}

TORCH_LIBRARY_IMPL(agingrt, Meta, m) {
    m.impl("ddim_step", &ddim_step_meta_impl);
}

#ifdef AGINGRT_WITH_CUDA
TORCH_LIBRARY_IMPL(agingrt, CUDA, m) {
    m.impl("ddim_step", &ddim_step_cuda_impl);
}
#endif

}  // namespace agingrt
