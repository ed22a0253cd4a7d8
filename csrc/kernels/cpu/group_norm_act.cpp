// CPU reference for group_norm_act (see csrc/kernels/group_norm_act.h for the maths).
#include "kernels/group_norm_act.h"

#include <cmath>
#include <vector>

#include "common/half.h"

namespace agingrt {
namespace {

// Typed element access, chosen at compile time so the inner loops carry no dtype switch.
template <DType D>
struct Io;
template <>
struct Io<DType::kFloat32> {
    using Storage = float;
    static float load(float v) { return v; }
    static float store(float v) { return v; }
};
template <>
struct Io<DType::kFloat64> {
    using Storage = double;
    static double load(double v) { return v; }
    static double store(double v) { return v; }
};
template <>
struct Io<DType::kFloat16> {
    using Storage = uint16_t;
    static float load(uint16_t v) { return half_to_float(v); }
    static uint16_t store(float v) { return float_to_half(v); }
};
template <>
struct Io<DType::kBFloat16> {
    using Storage = uint16_t;
    static float load(uint16_t v) { return bf16_to_float(v); }
    static uint16_t store(float v) { return float_to_bf16(v); }
};

template <typename Acc>
inline Acc activate(Acc v, GroupNormActivation act) {
    switch (act) {
        case GroupNormActivation::kRelu:
            return v > Acc(0) ? v : Acc(0);
        case GroupNormActivation::kSilu:
            return v / (Acc(1) + std::exp(-v));
        case GroupNormActivation::kNone:
            break;
    }
    return v;
}

// Calls fn(c, i) for every element i of group (n, g), channel c, in memory order (the pixel loop innermost for
// NCHW, the channel loop innermost for NHWC).
template <typename Fn>
inline void for_each_in_group(const GroupNormActParams& p, int64_t n, int64_t g, Fn fn) {
    const int64_t cg = p.channels / p.groups;
    const int64_t c0 = g * cg;
    if (p.layout == GroupNormLayout::kNCHW) {
        for (int64_t c = c0; c < c0 + cg; ++c) {
            const int64_t row = (n * p.channels + c) * p.pixels;
            for (int64_t q = 0; q < p.pixels; ++q) {
                fn(c, row + q);
            }
        }
    } else {
        for (int64_t q = 0; q < p.pixels; ++q) {
            const int64_t row = (n * p.pixels + q) * p.channels;
            for (int64_t c = c0; c < c0 + cg; ++c) {
                fn(c, row + c);
            }
        }
    }
}

// Acc: the apply's arithmetic (float, or double for float64 x); Coef: scale / shift storage.
template <DType D, typename Acc, typename Coef>
void group_norm_act_impl(const GroupNormActParams& p) {
    using Storage = typename Io<D>::Storage;
    const Storage* x = static_cast<const Storage*>(p.x);
    Storage* y = static_cast<Storage*>(p.y);
    const Coef* scale = static_cast<const Coef*>(p.scale);
    const Coef* shift = static_cast<const Coef*>(p.shift);
    const int64_t cg = p.channels / p.groups;
    const double count = static_cast<double>(cg * p.pixels);
    std::vector<Acc> a(static_cast<size_t>(cg));
    std::vector<Acc> b(static_cast<size_t>(cg));
    for (int64_t n = 0; n < p.batch; ++n) {
        for (int64_t g = 0; g < p.groups; ++g) {
            // Two passes in float64: exact enough that the result is the reference, whatever the mean.
            double sum = 0.0;
            for_each_in_group(p, n, g, [&](int64_t, int64_t i) { sum += static_cast<double>(Io<D>::load(x[i])); });
            const double mean = sum / count;
            double m2 = 0.0;
            for_each_in_group(p, n, g, [&](int64_t, int64_t i) {
                const double d = static_cast<double>(Io<D>::load(x[i])) - mean;
                m2 += d * d;
            });
            const double rstd = 1.0 / std::sqrt(m2 / count + p.eps);
            const int64_t c0 = g * cg;
            for (int64_t k = 0; k < cg; ++k) {
                a[k] = static_cast<Acc>(static_cast<double>(scale[n * p.scale_stride_b + c0 + k]) * rstd);
                b[k] = static_cast<Acc>(shift[n * p.shift_stride_b + c0 + k]);
            }
            const Acc mu = static_cast<Acc>(mean);
            for_each_in_group(p, n, g, [&](int64_t c, int64_t i) {
                // (x - mu) first: exact for x near mu, so a large mean costs no cancellation in the output.
                const Acc v = (static_cast<Acc>(Io<D>::load(x[i])) - mu) * a[c - c0] + b[c - c0];
                y[i] = Io<D>::store(activate(v, p.act));
            });
        }
    }
}

}  // namespace

Status group_norm_act_cpu(const GroupNormActParams& p) {
    if (p.batch < 0 || p.channels < 0 || p.pixels < 0 || p.groups <= 0 || p.channels % p.groups != 0 ||
        !(p.eps >= 0.0)) {
        return Status::kInvalidArgument;
    }
    if (p.batch == 0 || p.channels == 0 || p.pixels == 0) {
        return Status::kOk;
    }
    if (!p.x || !p.y || !p.scale || !p.shift) {
        return Status::kInvalidArgument;
    }
    if (p.x_dtype == DType::kFloat64) {
        if (p.coef_dtype != DType::kFloat64) {
            return Status::kUnsupported;
        }
        group_norm_act_impl<DType::kFloat64, double, double>(p);
        return Status::kOk;
    }
    if (p.coef_dtype != DType::kFloat32) {
        return Status::kUnsupported;
    }
    switch (p.x_dtype) {
        case DType::kFloat32:
            group_norm_act_impl<DType::kFloat32, float, float>(p);
            return Status::kOk;
        case DType::kFloat16:
            group_norm_act_impl<DType::kFloat16, float, float>(p);
            return Status::kOk;
        case DType::kBFloat16:
            group_norm_act_impl<DType::kBFloat16, float, float>(p);
            return Status::kOk;
        default:
            return Status::kUnsupported;
    }
}

}  // namespace agingrt
