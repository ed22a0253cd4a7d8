// CPU reference for ddim_step (see csrc/kernels/ddim_step.h for the maths).
#include "kernels/ddim_step.h"

#include <algorithm>

#include "common/half.h"

namespace agingrt {
namespace {

template <typename T>
inline T load_eps(const void* eps, DType dtype, int64_t i) {
    switch (dtype) {
        case DType::kFloat16:
            return static_cast<T>(half_to_float(static_cast<const uint16_t*>(eps)[i]));
        case DType::kBFloat16:
            return static_cast<T>(bf16_to_float(static_cast<const uint16_t*>(eps)[i]));
        case DType::kFloat32:
            return static_cast<T>(static_cast<const float*>(eps)[i]);
        case DType::kFloat64:
            return static_cast<T>(static_cast<const double*>(eps)[i]);
    }
    return T(0);
}

template <typename T>
void ddim_step_impl(const DdimStepParams& p) {
    // Scalars rounded to the working precision once (float32 in production, float64 for tests).
    const T a = static_cast<T>(p.coef_a);
    const T b = static_cast<T>(p.coef_b);
    const T c = static_cast<T>(p.coef_c);
    const T e = static_cast<T>(p.coef_e);
    const T* x_t = static_cast<const T*>(p.x_t);
    T* x_prev = static_cast<T*>(p.x_prev);
    for (int64_t i = 0; i < p.n; ++i) {
        const T ax = a * x_t[i];
        const T eps = load_eps<T>(p.eps, p.eps_dtype, i);
        T x0 = ax - b * eps;
        T eps_r = eps;
        if (p.clip) {
            x0 = std::min(std::max(x0, T(-1)), T(1));
            eps_r = (ax - x0) / b;
        }
        x_prev[i] = c * x0 + e * eps_r;
    }
}

}  // namespace

Status ddim_step_cpu(const DdimStepParams& p) {
    if (p.n < 0 || !(p.coef_b > 0.0) || (p.n > 0 && (!p.x_t || !p.eps || !p.x_prev))) {
        return Status::kInvalidArgument;
    }
    if (p.x_dtype == DType::kFloat32) {
        ddim_step_impl<float>(p);
    } else if (p.x_dtype == DType::kFloat64) {
        ddim_step_impl<double>(p);
    } else {
        return Status::kUnsupported;
    }
    return Status::kOk;
}

}  // namespace agingrt
