// torch adapter for masked_gaussian_blur: schema, validation, taps, CPU / CUDA / Meta implementations.
//   torch.ops.agingrt.masked_gaussian_blur(features, mask, sigma_m, sigma_g, kernel_size) -> out
// No autograd: CUSP training differentiates through the oracle (training/layers/masked_gaussian_blur.py).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "kernels/masked_gaussian_blur.h"
#include "ops/op_utils.h"

#ifdef AGINGRT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace agingrt {
namespace {

constexpr const char* kOp = "masked_gaussian_blur";

bool is_float_type(at::ScalarType t) {
    return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void validate_sigma(const at::Tensor& sigma, const char* name, const at::Tensor& features) {
    AGINGRT_CHECK_ARG(sigma.dim() == 1 && sigma.size(0) == features.size(0), kOp, name,
                      " must be [B] with one sigma per sample (B = ", features.size(0), "), got shape ",
                      shape_str(sigma));
    TORCH_CHECK_TYPE(sigma.scalar_type() == at::kFloat || sigma.scalar_type() == at::kDouble, kOp, ": ", name,
                     " must be float32 or float64, got ", sigma.scalar_type());
    AGINGRT_CHECK_ARG(sigma.device().is_cpu() || sigma.device() == features.device(), kOp, name,
                      " must be on the CPU or on features' device (", features.device(), "), got ", sigma.device());
}

void validate(const at::Tensor& features, const at::Tensor& mask, const at::Tensor& sigma_m, const at::Tensor& sigma_g,
              int64_t kernel_size) {
    AGINGRT_CHECK_ARG(features.dim() == 4, kOp, "features must be 4-D [B, C, H, W], got shape ", shape_str(features));
    TORCH_CHECK_TYPE(is_float_type(features.scalar_type()), kOp,
                     ": features must be float32, float64, float16 or bfloat16, got ", features.scalar_type());
    AGINGRT_CHECK_ARG(mask.dim() == 4 && mask.size(0) == features.size(0) && mask.size(1) == 1 &&
                          mask.size(2) == features.size(2) && mask.size(3) == features.size(3),
                      kOp, "mask must be [B, 1, H, W] = [", features.size(0), ", 1, ", features.size(2), ", ",
                      features.size(3), "] to match features ", shape_str(features), ", got shape ", shape_str(mask));
    TORCH_CHECK_TYPE(mask.scalar_type() == features.scalar_type() || mask.scalar_type() == at::kFloat, kOp,
                     ": mask must have features' dtype (", features.scalar_type(), ") or be float32, got ",
                     mask.scalar_type());
    check_same_device(features, "features", mask, "mask", kOp);
    validate_sigma(sigma_m, "sigma_m", features);
    validate_sigma(sigma_g, "sigma_g", features);
    AGINGRT_CHECK_ARG(kernel_size >= 1 && kernel_size % 2 == 1, kOp,
                      "kernel_size must be a positive odd number (same-size output needs a centre tap), got ",
                      kernel_size);
}

std::string values_str(const at::Tensor& t) {
    std::string s = "[";
    const auto a = t.accessor<double, 1>();
    for (int64_t i = 0; i < t.size(0); ++i) {
        s += (i ? ", " : "") + std::to_string(a[i]);
    }
    return s + "]";
}

// sigma as float64 on the host (a device-to-host copy when it lives on the GPU), checked finite and >= 0.
at::Tensor host_sigma(const at::Tensor& sigma, const char* name) {
    const at::Tensor s = sigma.to(at::kCPU, at::kDouble).contiguous();
    const auto a = s.accessor<double, 1>();
    for (int64_t i = 0; i < s.size(0); ++i) {
        AGINGRT_CHECK_ARG(std::isfinite(a[i]) && a[i] >= 0.0, kOp, name, " must be finite and >= 0 (0 = no blur), got ",
                          values_str(s));
    }
    return s;
}

// Host-side tables for the kernels: taps [B, 2, K] (row 0 k_m, row 1 k_g; float64, rounded once to the
// kernel's tap dtype by the caller) and flags [B] int32. The taps follow gaussian_kernel1d in the oracle:
// g[n] = exp(-(n - (K-1)/2)^2 / (2 sigma^2)) / sum, in float64; sigma = 0 gives the unit impulse.
struct BlurTables {
    at::Tensor taps;
    at::Tensor flags;
};

void fill_taps(double sigma, int64_t k, double* out) {
    const double center = static_cast<double>(k - 1) / 2.0;
    if (sigma == 0.0) {
        for (int64_t n = 0; n < k; ++n) {
            out[n] = n == (k - 1) / 2 ? 1.0 : 0.0;
        }
        return;
    }
    double sum = 0.0;
    for (int64_t n = 0; n < k; ++n) {
        const double d = static_cast<double>(n) - center;
        out[n] = std::exp(-(d * d) / (2.0 * sigma * sigma));
        sum += out[n];
    }
    for (int64_t n = 0; n < k; ++n) {
        out[n] /= sum;
    }
}

BlurTables make_tables(const at::Tensor& sigma_m, const at::Tensor& sigma_g, int64_t k) {
    const at::Tensor sm = host_sigma(sigma_m, "sigma_m");
    const at::Tensor sg = host_sigma(sigma_g, "sigma_g");
    const int64_t batch = sm.size(0);
    at::Tensor taps = at::empty({batch, 2, k}, at::TensorOptions().dtype(at::kDouble));
    at::Tensor flags = at::empty({batch}, at::TensorOptions().dtype(at::kInt));
    double* t = taps.data_ptr<double>();
    int32_t* f = flags.data_ptr<int32_t>();
    const auto am = sm.accessor<double, 1>();
    const auto ag = sg.accessor<double, 1>();
    for (int64_t b = 0; b < batch; ++b) {
        fill_taps(am[b], k, t + (b * 2) * k);
        fill_taps(ag[b], k, t + (b * 2 + 1) * k);
        f[b] = (am[b] == 0.0 ? kBlurMIdentity : 0) | (ag[b] == 0.0 ? kBlurGIdentity : 0) |
               (am[b] == ag[b] ? kBlurSame : 0);
    }
    return {taps, flags};
}

MaskedGaussianBlurParams make_params(const at::Tensor& f, const at::Tensor& m, const BlurTables& tables,
                                     at::Tensor& out, int64_t kernel_size) {
    MaskedGaussianBlurParams p{};
    p.features = f.data_ptr();
    p.mask = m.data_ptr();
    p.taps = tables.taps.data_ptr();
    p.flags = tables.flags.data_ptr<int32_t>();
    p.out = out.data_ptr();
    p.batch = f.size(0);
    p.channels = f.size(1);
    p.height = f.size(2);
    p.width = f.size(3);
    p.kernel_size = static_cast<int32_t>(kernel_size);
    p.dtype = to_kernel_dtype(f.scalar_type());
    p.mask_dtype = to_kernel_dtype(m.scalar_type());
    return p;
}

at::Tensor masked_gaussian_blur_cpu_impl(const at::Tensor& features, const at::Tensor& mask, const at::Tensor& sigma_m,
                                         const at::Tensor& sigma_g, int64_t kernel_size) {
    validate(features, mask, sigma_m, sigma_g, kernel_size);
    BlurTables tables = make_tables(sigma_m, sigma_g, kernel_size);
    // float64 features keep float64 taps (the oracle's precision); every other dtype rounds them to fp32 once.
    if (features.scalar_type() != at::kDouble) {
        tables.taps = tables.taps.to(at::kFloat);
    }
    const at::Tensor f = features.contiguous();
    const at::Tensor m = mask.contiguous();
    at::Tensor out = at::empty_like(f, at::MemoryFormat::Contiguous);
    check_status(masked_gaussian_blur_cpu(make_params(f, m, tables, out, kernel_size)), kOp, "CPU");
    return out;
}

at::Tensor masked_gaussian_blur_meta_impl(const at::Tensor& features, const at::Tensor& mask, const at::Tensor& sigma_m,
                                          const at::Tensor& sigma_g, int64_t kernel_size) {
    validate(features, mask, sigma_m, sigma_g, kernel_size);
    return at::empty_like(features, at::MemoryFormat::Contiguous);
}

#ifdef AGINGRT_WITH_CUDA
at::Tensor masked_gaussian_blur_cuda_impl(const at::Tensor& features, const at::Tensor& mask, const at::Tensor& sigma_m,
                                          const at::Tensor& sigma_g, int64_t kernel_size) {
    validate(features, mask, sigma_m, sigma_g, kernel_size);
    AGINGRT_CHECK_ARG(features.scalar_type() != at::kDouble, kOp,
                      "float64 runs on the CPU only; on CUDA features must be float32, float16 or bfloat16");
    AGINGRT_CHECK_ARG(kernel_size <= kMaskedBlurCudaMaxKernel, kOp, "kernel_size must be <= ", kMaskedBlurCudaMaxKernel,
                      " on CUDA (the shared-memory halo), got ", kernel_size,
                      "; run larger kernels on the CPU or through the oracle");
    const c10::cuda::CUDAGuard guard(features.device());
    const BlurTables host = make_tables(sigma_m, sigma_g, kernel_size);
    const BlurTables tables{host.taps.to(features.device(), at::kFloat), host.flags.to(features.device())};
    const at::Tensor f = features.contiguous();
    const at::Tensor m = mask.contiguous();
    at::Tensor out = at::empty_like(f, at::MemoryFormat::Contiguous);
    check_status(masked_gaussian_blur_cuda(make_params(f, m, tables, out, kernel_size),
                                           c10::cuda::getCurrentCUDAStream().stream()),
                 kOp, "CUDA");
    return out;
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(agingrt, m) {
    m.def(
        "masked_gaussian_blur(Tensor features, Tensor mask, Tensor sigma_m, Tensor sigma_g, int kernel_size) -> "
        "Tensor");
}

TORCH_LIBRARY_IMPL(agingrt, CPU, m) {
    m.impl("masked_gaussian_blur", &masked_gaussian_blur_cpu_impl);
}

TORCH_LIBRARY_IMPL(agingrt, Meta, m) {
    m.impl("masked_gaussian_blur", &masked_gaussian_blur_meta_impl);
}

#ifdef AGINGRT_WITH_CUDA
TORCH_LIBRARY_IMPL(agingrt, CUDA, m) {
    m.impl("masked_gaussian_blur", &masked_gaussian_blur_cuda_impl);
}
#endif

}  // namespace agingrt
