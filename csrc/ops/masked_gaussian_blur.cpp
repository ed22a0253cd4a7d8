// torch adapter for masked_gaussian_blur: schema, validation, tables, CPU / CUDA / Meta implementations.
//   torch.ops.agingrt.masked_gaussian_blur_tables(sigma_m, sigma_g, kernel_size, dtype) -> (taps, flags)
//   torch.ops.agingrt.masked_gaussian_blur_with_taps(features, mask, taps, flags) -> out
//   torch.ops.agingrt.masked_gaussian_blur(features, mask, sigma_m, sigma_g, kernel_size) -> out
// The sigma entry is the two others in sequence (tables on the host, then the with-taps path), so for the same
// sigmas the three give the same bits by construction.
//
// CUDA-graph safety: masked_gaussian_blur_with_taps is the graph-safe entry. It checks only metadata (shapes,
// dtypes, devices; never a tensor value, never a device-to-host copy), allocates its output with ATen (the caching
// allocator serves it during capture) and launches on the current stream, so it can be captured over static
// taps / flags buffers that the caller refills between replays. The other two entries read the sigmas on the host
// (a device-to-host copy when they live on the GPU) and copy the tables to the device: not capturable.
// No autograd: CUSP training differentiates through the oracle (training/layers/masked_gaussian_blur.py).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>

#include "kernels/masked_gaussian_blur.h"
#include "ops/op_utils.h"

#ifdef AGINGRT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace agingrt {
namespace {

constexpr const char* kOp = "masked_gaussian_blur";
constexpr const char* kTablesOp = "masked_gaussian_blur_tables";
constexpr const char* kTapsOp = "masked_gaussian_blur_with_taps";
constexpr int64_t kBlurParallelWork = 1 << 18;  // pixel-taps per CPU task: enough that a task outweighs its dispatch

bool is_float_type(at::ScalarType t) {
    return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The taps' dtype for features of dtype t: float64 features keep float64 taps (the oracle's precision); every
// other dtype takes float32 taps (the kernels accumulate in float32).
at::ScalarType tap_dtype(at::ScalarType t) {
    return t == at::kDouble ? at::kDouble : at::kFloat;
}

// ---- validation (metadata only) -----------------------------------------------------------------------------

void validate_features(const at::Tensor& features, const at::Tensor& mask, const char* op) {
    AGINGRT_CHECK_ARG(features.dim() == 4, op, "features must be 4-D [B, C, H, W], got shape ", shape_str(features));
    TORCH_CHECK_TYPE(is_float_type(features.scalar_type()), op,
                     ": features must be float32, float64, float16 or bfloat16, got ", features.scalar_type());
    AGINGRT_CHECK_ARG(mask.dim() == 4 && mask.size(0) == features.size(0) && mask.size(1) == 1 &&
                          mask.size(2) == features.size(2) && mask.size(3) == features.size(3),
                      op, "mask must be [B, 1, H, W] = [", features.size(0), ", 1, ", features.size(2), ", ",
                      features.size(3), "] to match features ", shape_str(features), ", got shape ", shape_str(mask));
    TORCH_CHECK_TYPE(mask.scalar_type() == features.scalar_type() || mask.scalar_type() == at::kFloat, op,
                     ": mask must have features' dtype (", features.scalar_type(), ") or be float32, got ",
                     mask.scalar_type());
    check_same_device(features, "features", mask, "mask", op);
}

void validate_kernel_size(int64_t kernel_size, const char* op) {
    AGINGRT_CHECK_ARG(kernel_size >= 1 && kernel_size % 2 == 1, op,
                      "kernel_size must be a positive odd number (same-size output needs a centre tap), got ",
                      kernel_size);
}

void validate_sigma(const at::Tensor& sigma, const char* name, int64_t batch, const char* batch_from,
                    const at::Device& device, const char* device_from, const char* op) {
    AGINGRT_CHECK_ARG(sigma.dim() == 1 && sigma.size(0) == batch, op, name,
                      " must be [B] with one sigma per sample (B = ", batch, batch_from, "), got shape ",
                      shape_str(sigma));
    TORCH_CHECK_TYPE(sigma.scalar_type() == at::kFloat || sigma.scalar_type() == at::kDouble, op, ": ", name,
                     " must be float32 or float64, got ", sigma.scalar_type());
    AGINGRT_CHECK_ARG(sigma.device().is_cpu() || sigma.device() == device, op, name, " must be on the CPU or on ",
                      device_from, " (", device, "), got ", sigma.device());
}

void validate(const at::Tensor& features, const at::Tensor& mask, const at::Tensor& sigma_m, const at::Tensor& sigma_g,
              int64_t kernel_size) {
    validate_features(features, mask, kOp);
    validate_sigma(sigma_m, "sigma_m", features.size(0), "", features.device(), "features' device", kOp);
    validate_sigma(sigma_g, "sigma_g", features.size(0), "", features.device(), "features' device", kOp);
    validate_kernel_size(kernel_size, kOp);
}

void validate_table_args(const at::Tensor& sigma_m, const at::Tensor& sigma_g, int64_t kernel_size,
                         at::ScalarType dtype) {
    AGINGRT_CHECK_ARG(sigma_m.dim() == 1, kTablesOp, "sigma_m must be 1-D [B] (one sigma per sample), got shape ",
                      shape_str(sigma_m));
    TORCH_CHECK_TYPE(sigma_m.scalar_type() == at::kFloat || sigma_m.scalar_type() == at::kDouble, kTablesOp,
                     ": sigma_m must be float32 or float64, got ", sigma_m.scalar_type());
    validate_sigma(sigma_g, "sigma_g", sigma_m.size(0), ", the length of sigma_m", sigma_m.device(), "sigma_m's device",
                   kTablesOp);
    AGINGRT_CHECK_ARG(sigma_g.device() == sigma_m.device(), kTablesOp, "sigma_g must be on sigma_m's device (",
                      sigma_m.device(), "), got ", sigma_g.device());
    validate_kernel_size(kernel_size, kTablesOp);
    TORCH_CHECK_TYPE(is_float_type(dtype), kTablesOp,
                     ": dtype (the features' dtype the taps are for) must be float32, float64, float16 or bfloat16, "
                     "got ",
                     dtype);
}

void validate_tables(const at::Tensor& features, const at::Tensor& taps, const at::Tensor& flags) {
    const int64_t batch = features.size(0);
    AGINGRT_CHECK_ARG(taps.dim() == 3 && taps.size(0) == batch && taps.size(1) == 2 && taps.size(2) % 2 == 1, kTapsOp,
                      "taps must be [B, 2, K] = [", batch,
                      ", 2, K] with K odd (row 0 k_m, row 1 k_g, as masked_gaussian_blur_tables builds them), got "
                      "shape ",
                      shape_str(taps));
    TORCH_CHECK_TYPE(taps.scalar_type() == tap_dtype(features.scalar_type()), kTapsOp,
                     ": taps must be float32, or float64 for float64 features (masked_gaussian_blur_tables(..., "
                     "dtype=features.dtype) picks it); features are ",
                     features.scalar_type(), ", got taps ", taps.scalar_type());
    check_same_device(features, "features", taps, "taps", kTapsOp);
    AGINGRT_CHECK_ARG(flags.dim() == 1 && flags.size(0) == batch, kTapsOp, "flags must be [B] = [", batch,
                      "] (one bit set per sample), got shape ", shape_str(flags));
    TORCH_CHECK_TYPE(flags.scalar_type() == at::kInt, kTapsOp, ": flags must be int32, got ", flags.scalar_type());
    check_same_device(features, "features", flags, "flags", kTapsOp);
}

// ---- tables (host) -------------------------------------------------------------------------------------------

std::string values_str(const at::Tensor& t) {
    std::string s = "[";
    const auto a = t.accessor<double, 1>();
    for (int64_t i = 0; i < t.size(0); ++i) {
        s += (i ? ", " : "") + std::to_string(a[i]);
    }
    return s + "]";
}

// sigma as float64 on the host (a device-to-host copy when it lives on the GPU), checked finite and >= 0.
at::Tensor host_sigma(const at::Tensor& sigma, const char* name, const char* op) {
    const at::Tensor s = sigma.to(at::kCPU, at::kDouble).contiguous();
    const auto a = s.accessor<double, 1>();
    for (int64_t i = 0; i < s.size(0); ++i) {
        AGINGRT_CHECK_ARG(std::isfinite(a[i]) && a[i] >= 0.0, op, name, " must be finite and >= 0 (0 = no blur), got ",
                          values_str(s));
    }
    return s;
}

// Tables for the kernels: taps [B, 2, K] (row 0 k_m, row 1 k_g) and flags [B] int32, on the host. The taps follow
// gaussian_kernel1d in the oracle: g[n] = exp(-(n - (K-1)/2)^2 / (2 sigma^2)) / sum, in float64, then rounded once
// to tap_dtype(dtype); sigma = 0 gives the unit impulse.
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

BlurTables make_tables(const at::Tensor& sigma_m, const at::Tensor& sigma_g, int64_t k, at::ScalarType dtype,
                       const char* op) {
    const at::Tensor sm = host_sigma(sigma_m, "sigma_m", op);
    const at::Tensor sg = host_sigma(sigma_g, "sigma_g", op);
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
    return {taps.to(tap_dtype(dtype)), flags};
}

// ---- the with-taps path (graph-safe) ---------------------------------------------------------------------------

MaskedGaussianBlurParams make_params(const at::Tensor& f, const at::Tensor& m, const at::Tensor& taps,
                                     const at::Tensor& flags, at::Tensor& out) {
    MaskedGaussianBlurParams p{};
    p.features = f.data_ptr();
    p.mask = m.data_ptr();
    p.taps = taps.data_ptr();
    p.flags = flags.data_ptr<int32_t>();
    p.out = out.data_ptr();
    p.batch = f.size(0);
    p.channels = f.size(1);
    p.height = f.size(2);
    p.width = f.size(3);
    p.kernel_size = static_cast<int32_t>(taps.size(2));
    p.dtype = to_kernel_dtype(f.scalar_type());
    p.mask_dtype = to_kernel_dtype(m.scalar_type());
    return p;
}

at::Tensor with_taps_cpu_impl(const at::Tensor& features, const at::Tensor& mask, const at::Tensor& taps,
                              const at::Tensor& flags) {
    validate_features(features, mask, kTapsOp);
    validate_tables(features, taps, flags);
    const at::Tensor f = features.contiguous();
    const at::Tensor m = mask.contiguous();
    const at::Tensor t = taps.contiguous();
    const at::Tensor fl = flags.contiguous();
    at::Tensor out = at::empty_like(f, at::MemoryFormat::Contiguous);
    const MaskedGaussianBlurParams p = make_params(f, m, t, fl, out);
    // The (b, c) planes are independent: ranges of them over torch's intra-op pool, each range cut at sample
    // boundaries into one kernel call per sample (the kernel takes the sample's mask, taps and flags).
    const int64_t plane = p.height * p.width;
    const int64_t plane_work = std::max<int64_t>(plane * p.kernel_size, 1);
    const int64_t grain = std::max<int64_t>(1, kBlurParallelWork / plane_work);
    const int64_t item = f.element_size();
    parallel_cpu_kernel(p.batch * p.channels, grain, kTapsOp, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end;) {
            const int64_t b = i / p.channels;
            const int64_t c0 = i % p.channels;
            const int64_t count = std::min(end - i, p.channels - c0);
            MaskedGaussianBlurParams chunk = p;
            chunk.features = static_cast<const char*>(p.features) + i * plane * item;
            chunk.out = static_cast<char*>(p.out) + i * plane * item;
            chunk.mask = static_cast<const char*>(p.mask) + b * plane * m.element_size();
            chunk.taps = static_cast<const char*>(p.taps) + b * 2 * p.kernel_size * t.element_size();
            chunk.flags = p.flags + b;
            chunk.batch = 1;
            chunk.channels = count;
            const Status s = masked_gaussian_blur_cpu(chunk);
            if (s != Status::kOk) {
                return s;
            }
            i += count;
        }
        return Status::kOk;
    });
    return out;
}

at::Tensor with_taps_meta_impl(const at::Tensor& features, const at::Tensor& mask, const at::Tensor& taps,
                               const at::Tensor& flags) {
    validate_features(features, mask, kTapsOp);
    validate_tables(features, taps, flags);
    return at::empty_like(features, at::MemoryFormat::Contiguous);
}

#ifdef AGINGRT_WITH_CUDA
at::Tensor with_taps_cuda_impl(const at::Tensor& features, const at::Tensor& mask, const at::Tensor& taps,
                               const at::Tensor& flags) {
    validate_features(features, mask, kTapsOp);
    validate_tables(features, taps, flags);
    AGINGRT_CHECK_ARG(features.scalar_type() != at::kDouble, kTapsOp,
                      "float64 runs on the CPU only; on CUDA features must be float32, float16 or bfloat16");
    AGINGRT_CHECK_ARG(taps.size(2) <= kMaskedBlurCudaMaxKernel, kTapsOp,
                      "kernel_size must be <= ", kMaskedBlurCudaMaxKernel, " on CUDA (the shared-memory halo), got ",
                      taps.size(2), "; run larger kernels on the CPU or through the oracle");
    const c10::cuda::CUDAGuard guard(features.device());
    const at::Tensor f = features.contiguous();
    const at::Tensor m = mask.contiguous();
    const at::Tensor t = taps.contiguous();
    const at::Tensor fl = flags.contiguous();
    at::Tensor out = at::empty_like(f, at::MemoryFormat::Contiguous);
    check_status(masked_gaussian_blur_cuda(make_params(f, m, t, fl, out), c10::cuda::getCurrentCUDAStream().stream()),
                 kTapsOp, "CUDA");
    return out;
}
#endif

// ---- masked_gaussian_blur_tables -----------------------------------------------------------------------------

// Built on the host, returned on the sigmas' device (a host-to-device copy for GPU sigmas).
std::tuple<at::Tensor, at::Tensor> tables_impl(const at::Tensor& sigma_m, const at::Tensor& sigma_g,
                                               int64_t kernel_size, at::ScalarType dtype) {
    validate_table_args(sigma_m, sigma_g, kernel_size, dtype);
    const BlurTables t = make_tables(sigma_m, sigma_g, kernel_size, dtype, kTablesOp);
    return {t.taps.to(sigma_m.device()), t.flags.to(sigma_m.device())};
}

std::tuple<at::Tensor, at::Tensor> tables_meta_impl(const at::Tensor& sigma_m, const at::Tensor& sigma_g,
                                                    int64_t kernel_size, at::ScalarType dtype) {
    validate_table_args(sigma_m, sigma_g, kernel_size, dtype);
    const int64_t batch = sigma_m.size(0);
    return {at::empty({batch, 2, kernel_size}, sigma_m.options().dtype(tap_dtype(dtype))),
            at::empty({batch}, sigma_m.options().dtype(at::kInt))};
}

// ---- masked_gaussian_blur (sigmas): tables, then the with-taps path -------------------------------------------

at::Tensor masked_gaussian_blur_cpu_impl(const at::Tensor& features, const at::Tensor& mask, const at::Tensor& sigma_m,
                                         const at::Tensor& sigma_g, int64_t kernel_size) {
    validate(features, mask, sigma_m, sigma_g, kernel_size);
    const BlurTables t = make_tables(sigma_m, sigma_g, kernel_size, features.scalar_type(), kOp);
    return with_taps_cpu_impl(features, mask, t.taps, t.flags);
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
    // Checked before the tables are built, so the messages name this op and its kernel_size argument.
    AGINGRT_CHECK_ARG(features.scalar_type() != at::kDouble, kOp,
                      "float64 runs on the CPU only; on CUDA features must be float32, float16 or bfloat16");
    AGINGRT_CHECK_ARG(kernel_size <= kMaskedBlurCudaMaxKernel, kOp, "kernel_size must be <= ", kMaskedBlurCudaMaxKernel,
                      " on CUDA (the shared-memory halo), got ", kernel_size,
                      "; run larger kernels on the CPU or through the oracle");
    const BlurTables host = make_tables(sigma_m, sigma_g, kernel_size, features.scalar_type(), kOp);
    return with_taps_cuda_impl(features, mask, host.taps.to(features.device()), host.flags.to(features.device()));
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(agingrt, m) {
    m.def(
        "masked_gaussian_blur(Tensor features, Tensor mask, Tensor sigma_m, Tensor sigma_g, int kernel_size) -> "
        "Tensor");
    m.def(
        "masked_gaussian_blur_tables(Tensor sigma_m, Tensor sigma_g, int kernel_size, ScalarType dtype) -> "
        "(Tensor taps, Tensor flags)");
    m.def("masked_gaussian_blur_with_taps(Tensor features, Tensor mask, Tensor taps, Tensor flags) -> Tensor");
}

TORCH_LIBRARY_IMPL(agingrt, CPU, m) {
    m.impl("masked_gaussian_blur", &masked_gaussian_blur_cpu_impl);
    m.impl("masked_gaussian_blur_tables", &tables_impl);
    m.impl("masked_gaussian_blur_with_taps", &with_taps_cpu_impl);
}

TORCH_LIBRARY_IMPL(agingrt, Meta, m) {
    m.impl("masked_gaussian_blur", &masked_gaussian_blur_meta_impl);
    m.impl("masked_gaussian_blur_tables", &tables_meta_impl);
    m.impl("masked_gaussian_blur_with_taps", &with_taps_meta_impl);
}

#ifdef AGINGRT_WITH_CUDA
TORCH_LIBRARY_IMPL(agingrt, CUDA, m) {
    m.impl("masked_gaussian_blur", &masked_gaussian_blur_cuda_impl);
    m.impl("masked_gaussian_blur_tables", &tables_impl);
    m.impl("masked_gaussian_blur_with_taps", &with_taps_cuda_impl);
}
#endif

}  // namespace agingrt
