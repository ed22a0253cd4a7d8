// CPU reference for guided_relu_backward and the Eq. (1) mask reduction (see csrc/kernels/guided_backprop_mask.h).
// Straightforward loops in the order the CUDA kernels use: rows then columns for the blur, float64 statistics.
#include "kernels/guided_backprop_mask.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/half.h"

namespace agingrt {
namespace {

inline double load_as_double(const void* p, DType dtype, int64_t i) {
    switch (dtype) {
        case DType::kFloat32:
            return static_cast<const float*>(p)[i];
        case DType::kFloat64:
            return static_cast<const double*>(p)[i];
        case DType::kFloat16:
            return half_to_float(static_cast<const uint16_t*>(p)[i]);
        case DType::kBFloat16:
            return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    }
    return 0.0;
}

template <typename T>
void guided_relu_impl(const GuidedReluBackwardParams& p) {
    const T* g = static_cast<const T*>(p.grad_out);
    const T* a = static_cast<const T*>(p.act);
    T* out = static_cast<T*>(p.grad_in);
    for (int64_t i = 0; i < p.n; ++i) {
        const bool keep = (a[i] > T(0)) & (g[i] > T(0));  // no short circuit: the loop vectorises as a select
        out[i] = keep ? g[i] : T(0);
    }
}

// fp16 / bf16: the sign tests are exact on the bits' float value; the kept value is copied bit for bit.
template <float (*ToFloat)(uint16_t)>
void guided_relu_half_impl(const GuidedReluBackwardParams& p) {
    const uint16_t* g = static_cast<const uint16_t*>(p.grad_out);
    const uint16_t* a = static_cast<const uint16_t*>(p.act);
    uint16_t* out = static_cast<uint16_t*>(p.grad_in);
    for (int64_t i = 0; i < p.n; ++i) {
        out[i] = (ToFloat(a[i]) > 0.0f && ToFloat(g[i]) > 0.0f) ? g[i] : uint16_t(0);
    }
}

// Unbiased standard deviation of v[0..n), two passes in float64 (n >= 2).
template <typename T>
double unbiased_std(const T* v, int64_t n) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        sum += static_cast<double>(v[i]);
    }
    const double mean = sum / static_cast<double>(n);
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const double dv = static_cast<double>(v[i]) - mean;
        ss += dv * dv;
    }
    return std::sqrt(ss / static_cast<double>(n - 1));
}

// out[y, x] = sum_k taps[k] * in[y + (k - r) * step_y, x + (k - r) * step_x] inside the image (zero padding).
template <typename T>
void blur_1d(const T* in, T* out, int64_t h, int64_t w, const std::vector<T>& taps, bool along_rows) {
    const int64_t r = (static_cast<int64_t>(taps.size()) - 1) / 2;
    const int64_t len = along_rows ? w : h;
    for (int64_t y = 0; y < h; ++y) {
        for (int64_t x = 0; x < w; ++x) {
            const int64_t pos = along_rows ? x : y;
            const int64_t k0 = std::max<int64_t>(0, r - pos);
            const int64_t k1 = std::min<int64_t>(2 * r, len - 1 - pos + r);
            T acc = T(0);
            for (int64_t k = k0; k <= k1; ++k) {
                const int64_t q = pos + k - r;
                acc += taps[k] * (along_rows ? in[y * w + q] : in[q * w + x]);
            }
            out[y * w + x] = acc;
        }
    }
}

// T is the working precision: float64 for float64 grads, float32 otherwise (as on CUDA).
template <typename T>
void mask_impl(const GuidedBackpropMaskParams& p) {
    const int64_t h = p.height;
    const int64_t w = p.width;
    const int64_t hw = h * w;
    std::vector<T> taps(p.taps, p.taps + p.kernel_size);  // rounded once from float64
    std::vector<T> a(hw);
    std::vector<T> rows(hw);
    T* mask = static_cast<T*>(p.mask);
    for (int64_t b = 0; b < p.batch; ++b) {
        // 1. A = mean_c |G|, summed in float64 over channels in order.
        for (int64_t y = 0; y < h; ++y) {
            for (int64_t x = 0; x < w; ++x) {
                double acc = 0.0;
                for (int64_t c = 0; c < p.channels; ++c) {
                    const int64_t off = b * p.stride_b + c * p.stride_c + y * p.stride_h + x * p.stride_w;
                    acc += std::fabs(load_as_double(p.grad, p.grad_dtype, off));
                }
                a[y * w + x] = static_cast<T>(acc / static_cast<double>(p.channels));
            }
        }
        // 2. A / (std(A) + 1e-15).
        const T norm = static_cast<T>(unbiased_std(a.data(), hw) + 1e-15);
        for (T& v : a) {
            v = v / norm;
        }
        // 3. Separable blur: rows (along W), then columns (along H), into the output plane.
        T* out = mask + b * hw;
        blur_1d(a.data(), rows.data(), h, w, taps, true);
        blur_1d(rows.data(), out, h, w, taps, false);
        // 4-5. tau = 2 std + 1e-15, M = min(B~ / tau, 1).
        const T tau = static_cast<T>(2.0 * unbiased_std(out, hw) + 1e-15);
        for (int64_t i = 0; i < hw; ++i) {
            out[i] = std::min(out[i] / tau, T(1));
        }
    }
}

}  // namespace

size_t guided_backprop_mask_workspace_bytes(int64_t batch, int64_t height, int64_t width) {
    return static_cast<size_t>(2 * batch * height * width) * sizeof(float);
}

Status guided_relu_backward_cpu(const GuidedReluBackwardParams& p) {
    if (p.n < 0 || (p.n > 0 && (!p.grad_out || !p.act || !p.grad_in))) {
        return Status::kInvalidArgument;
    }
    switch (p.dtype) {
        case DType::kFloat32:
            guided_relu_impl<float>(p);
            return Status::kOk;
        case DType::kFloat64:
            guided_relu_impl<double>(p);
            return Status::kOk;
        case DType::kFloat16:
            guided_relu_half_impl<half_to_float>(p);
            return Status::kOk;
        case DType::kBFloat16:
            guided_relu_half_impl<bf16_to_float>(p);
            return Status::kOk;
    }
    return Status::kUnsupported;
}

Status guided_backprop_mask_cpu(const GuidedBackpropMaskParams& p) {
    if (p.batch < 0 || p.channels < 1 || p.height < 1 || p.width < 1 || p.height * p.width < 2 || p.kernel_size < 1 ||
        p.kernel_size % 2 == 0 || !p.taps) {
        return Status::kInvalidArgument;
    }
    if (p.batch == 0) {
        return Status::kOk;
    }
    if (!p.grad || !p.mask) {
        return Status::kInvalidArgument;
    }
    if (p.mask_dtype == DType::kFloat64 && p.grad_dtype == DType::kFloat64) {
        mask_impl<double>(p);
    } else if (p.mask_dtype == DType::kFloat32 && p.grad_dtype != DType::kFloat64) {
        mask_impl<float>(p);
    } else {
        return Status::kUnsupported;
    }
    return Status::kOk;
}

}  // namespace agingrt
