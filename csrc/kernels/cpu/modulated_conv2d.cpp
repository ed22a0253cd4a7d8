// CPU reference for the modulated_conv2d kernels (see csrc/kernels/modulated_conv2d.h for the maths).
#include "kernels/modulated_conv2d.h"

#include <cmath>

#include "common/half.h"

namespace agingrt {
namespace {

// Storage <-> compute conversions; half types compute in float.
template <typename S>
struct Io;
template <>
struct Io<float> {
    using Acc = float;
    static float load(const float* p, int64_t i) { return p[i]; }
    static void store(float* p, int64_t i, float v) { p[i] = v; }
};
template <>
struct Io<double> {
    using Acc = double;
    static double load(const double* p, int64_t i) { return p[i]; }
    static void store(double* p, int64_t i, double v) { p[i] = v; }
};
struct Half {
    uint16_t bits;
};
struct BFloat16 {
    uint16_t bits;
};
template <>
struct Io<Half> {
    using Acc = float;
    static float load(const Half* p, int64_t i) { return half_to_float(p[i].bits); }
    static void store(Half* p, int64_t i, float v) { p[i].bits = float_to_half(v); }
};
template <>
struct Io<BFloat16> {
    using Acc = float;
    static float load(const BFloat16* p, int64_t i) { return bf16_to_float(p[i].bits); }
    static void store(BFloat16* p, int64_t i, float v) { p[i].bits = float_to_bf16(v); }
};

template <typename T, typename S>
void scale_channels_impl(const ScaleChannelsParams& p) {
    // The product is formed in the wider of the two compute types, then rounded once to T.
    using Acc = decltype(typename Io<T>::Acc() * S());
    const T* x = static_cast<const T*>(p.x);
    const S* scale = static_cast<const S*>(p.scale);
    T* y = static_cast<T*>(p.y);
    const int64_t c_n = p.channels;
    const int64_t hw = p.spatial;
    for (int64_t b = 0; b < p.batch; ++b) {
        const S* sb = scale + b * c_n;
        if (p.channels_last) {
            const int64_t base = b * hw * c_n;
            for (int64_t i = 0; i < hw; ++i) {
                for (int64_t c = 0; c < c_n; ++c) {
                    const int64_t k = base + i * c_n + c;
                    Io<T>::store(y, k, static_cast<Acc>(Io<T>::load(x, k)) * static_cast<Acc>(sb[c]));
                }
            }
        } else {
            for (int64_t c = 0; c < c_n; ++c) {
                const Acc s = static_cast<Acc>(sb[c]);
                const int64_t base = (b * c_n + c) * hw;
                for (int64_t i = 0; i < hw; ++i) {
                    Io<T>::store(y, base + i, static_cast<Acc>(Io<T>::load(x, base + i)) * s);
                }
            }
        }
    }
}

template <typename S>
Status scale_channels_dispatch(const ScaleChannelsParams& p) {
    switch (p.dtype) {
        case DType::kFloat32:
            scale_channels_impl<float, S>(p);
            return Status::kOk;
        case DType::kFloat64:
            scale_channels_impl<double, S>(p);
            return Status::kOk;
        case DType::kFloat16:
            scale_channels_impl<Half, S>(p);
            return Status::kOk;
        case DType::kBFloat16:
            scale_channels_impl<BFloat16, S>(p);
            return Status::kOk;
    }
    return Status::kUnsupported;
}

template <typename T>
void demodulation_impl(const DemodulationParams& p) {
    const T* s = static_cast<const T*>(p.styles);
    const T* q = static_cast<const T*>(p.q);
    T* d = static_cast<T*>(p.d);
    for (int64_t b = 0; b < p.batch; ++b) {
        for (int64_t o = 0; o < p.out_channels; ++o) {
            double acc = 0.0;  // float64 accumulation: I can be 512 and s^2 Q spans orders of magnitude
            for (int64_t i = 0; i < p.in_channels; ++i) {
                const double si = static_cast<double>(s[b * p.in_channels + i]);
                acc += si * si * static_cast<double>(q[o * p.in_channels + i]);
            }
            d[b * p.out_channels + o] = static_cast<T>(1.0 / std::sqrt(acc + p.eps));
        }
    }
}

}  // namespace

Status scale_channels_cpu(const ScaleChannelsParams& p) {
    if (p.batch < 0 || p.channels < 0 || p.spatial < 0) {
        return Status::kInvalidArgument;
    }
    if (p.batch * p.channels * p.spatial == 0) {
        return Status::kOk;
    }
    if (!p.x || !p.scale || !p.y) {
        return Status::kInvalidArgument;
    }
    if (p.scale_dtype == DType::kFloat32) {
        return scale_channels_dispatch<float>(p);
    }
    if (p.scale_dtype == DType::kFloat64) {
        return scale_channels_dispatch<double>(p);
    }
    return Status::kUnsupported;
}

Status demodulation_coefficients_cpu(const DemodulationParams& p) {
    if (p.batch < 0 || p.in_channels < 0 || p.out_channels < 0 || !(p.eps > 0.0)) {
        return Status::kInvalidArgument;
    }
    if (p.batch * p.out_channels == 0) {
        return Status::kOk;
    }
    if (!p.d || (p.in_channels > 0 && (!p.styles || !p.q))) {
        return Status::kInvalidArgument;
    }
    if (p.dtype == DType::kFloat32) {
        demodulation_impl<float>(p);
    } else if (p.dtype == DType::kFloat64) {
        demodulation_impl<double>(p);
    } else {
        return Status::kUnsupported;
    }
    return Status::kOk;
}

}  // namespace agingrt
