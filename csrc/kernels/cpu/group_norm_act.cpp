// CPU reference for group_norm_act (see csrc/kernels/group_norm_act.h for the maths).
//
// Work: one item per (n, g), w = n * G + g; a call handles items [begin, end) and each item is computed by this
// code alone, in a fixed order, so any split of the items over threads gives bit-identical output.
//
// Statistics, per item, in the compute type T (float; double for float64 x), merged in double:
//   NCHW: per channel row of P contiguous values, a shifted sum S = sum(x - x_0) (x_0 the row's first value, so
//         the float partials are of the spread, not of the mean), row mean m_r = x_0 + S / P, then a centred
//         sum of squares sum((x - T(m_r))^2) minus P (m_r - T(m_r))^2; the rows' (P, m_r, M2_r) merge in
//         order with Chan et al.'s formula. The row's second read hits the cache.
//   NHWC: the same two passes over the whole group, with per-channel lanes across pixels (the consecutive groups
//         of a sample in one range together, vectorised across their channels; see run_nhwc).
// Each sum runs kLanes independent T accumulators over whole blocks of kBlock values (plain loops gcc -O3
// vectorises without reassociating anything), then adds the block's lanes into double lanes; the lanes are summed
// in a fixed order at the end. A float partial sums kBlock / kLanes = 8 values per lane, so it carries at most
// ~8 float roundings of spread-sized terms (relative ~5e-7 for the sum of squares, ~2.5e-7 in rstd), well inside
// the op's 1e-5 fp32 tolerance. No E[x^2] - E[x]^2: a large mean costs no precision.
// Apply: act((x - mu) * a + b) in T with a = scale * rstd and b = shift per channel; SiLU's exp through an
// exp2-split polynomial (exp_approx, max rel. error ~2e-7 in float) that vectorises, std::exp for double.
// fp16 / bf16 rows go through a float stack buffer of kChunk values (converted once per pass).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/half.h"
#include "kernels/cpu/cpu_clones.h"
#include "kernels/group_norm_act.h"

// The hot loops are cloned per ISA (AGINGRT_CPU_CLONES, kernels/cpu/cpu_clones.h), since SiLU's polynomial is
// compute-bound; every sum has explicit lanes, so the clones are bit-identical
// (tests/ops/test_group_norm_act_cpu.py compares them).
// Measured on a Zen 5 core, the whole op with fp32 SiLU on [1, 128, 64, 64] (in cache): ~0.8 ns per value with AVX2,
// ~0.4 with AVX-512 (~0.3 if FMA were allowed), ~1.6 with SSE2 alone.

namespace agingrt {
namespace {

constexpr int64_t kLanes = 16;          // 4 SSE / 2 AVX / 1 AVX-512 vectors of float
constexpr int64_t kBlock = 8 * kLanes;  // values per float partial before it moves into double
constexpr int64_t kChunk = 8 * kBlock;  // fp16 / bf16 values converted per stack buffer
constexpr int64_t kPixelBlock = 16;     // NHWC: pixels per float partial of each channel lane

// Storage type of each dtype and its conversion to / from the compute type T.
template <DType D>
struct Io;
template <>
struct Io<DType::kFloat32> {
    using Storage = float;
    using T = float;
};
template <>
struct Io<DType::kFloat64> {
    using Storage = double;
    using T = double;
};
template <>
struct Io<DType::kFloat16> {
    using Storage = uint16_t;
    using T = float;
    static float load(uint16_t v) { return half_to_float(v); }
    static uint16_t store(float v) { return float_to_half(v); }
};
template <>
struct Io<DType::kBFloat16> {
    using Storage = uint16_t;
    using T = float;
    static float load(uint16_t v) { return bf16_to_float(v); }
    static uint16_t store(float v) { return float_to_bf16(v); }
};

template <DType D>
constexpr bool kDirect = D == DType::kFloat32 || D == DType::kFloat64;  // storage is T: no conversion

// n values of src as T: src itself for float / double, else converted into buf (n <= the buffer's size).
template <DType D>
inline const typename Io<D>::T* load_span(const typename Io<D>::Storage* src, int64_t n, typename Io<D>::T* buf) {
    if constexpr (kDirect<D>) {
        return src;
    } else {
        for (int64_t i = 0; i < n; ++i) {
            buf[i] = Io<D>::load(src[i]);
        }
        return buf;
    }
}

// exp(v) for float, vectorisable: v = k ln2 + f with k = rint(v / ln2) (round by the 1.5 * 2^23 trick), ln2 split
// in two (Cody-Waite) so f is exact to float, exp(f) by Cephes' degree-6 minimax polynomial on |f| <= ln2 / 2
// (rel. error < 2e-7 before the final rounding), then times 2^k built in the exponent bits. v is clamped to
// [-87, 87] so that 2^k stays normal (exp(-87) = 1.6e-38, exp(87) = 6.1e37, which SiLU only divides by); the clamp
// is one select on |v| because gcc does not if-convert two float selects in a row (with -ftrapping-math, the
// default), and the loop would stay scalar.
inline float exp_approx(float v) {
    const float m = std::fabs(v);
    v = std::copysign(m < 87.0f ? m : 87.0f, v);
    const float round = 12582912.0f;  // 1.5 * 2^23
    const float k = (v * 1.44269504088896341f + round) - round;
    const float f = (v - k * 0.693359375f) - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    p = p * f * f + f + 1.0f;
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

template <GroupNormActivation A, typename T>
inline T activate(T v) {
    if constexpr (A == GroupNormActivation::kRelu) {
        return v > T(0) ? v : T(0);
    } else if constexpr (A == GroupNormActivation::kSilu) {
        if constexpr (sizeof(T) == sizeof(float)) {
            return v / (1.0f + exp_approx(-v));
        } else {
            return v / (T(1) + std::exp(-v));
        }
    } else {
        return v;
    }
}

// Double lanes that whole blocks of float (or double) partials are added into; summed in a fixed order at the end.
struct LaneTotals {
    double lane[kLanes] = {};
    double tail = 0.0;

    template <typename T>
    void add_block(const T* acc) {
        for (int64_t l = 0; l < kLanes; ++l) {
            lane[l] += static_cast<double>(acc[l]);
        }
    }
    double total() const {
        double s = tail;
        for (int64_t l = 0; l < kLanes; ++l) {
            s += lane[l];
        }
        return s;
    }
};

// Adds sum(v[i] - k) (kSquare: sum((v[i] - k)^2)) over n contiguous values into t.
template <bool kSquare, typename T>
AGINGRT_CPU_CLONES void accumulate_span(const T* v, int64_t n, T k, LaneTotals& t) {
    int64_t i = 0;
    for (; i + kBlock <= n; i += kBlock) {
        T acc[kLanes] = {};
        for (int64_t j = i; j < i + kBlock; j += kLanes) {
            for (int64_t l = 0; l < kLanes; ++l) {
                const T d = v[j + l] - k;
                acc[l] += kSquare ? d * d : d;
            }
        }
        t.add_block(acc);
    }
    for (; i < n; ++i) {
        const double d = static_cast<double>(v[i] - k);
        t.tail += kSquare ? d * d : d;
    }
}

template <DType D>
inline typename Io<D>::T value_at(const typename Io<D>::Storage* x) {
    if constexpr (kDirect<D>) {
        return *x;
    } else {
        return Io<D>::load(*x);
    }
}

// Sum of (x - k) (kSquare: (x - k)^2) over n contiguous values, fp16 / bf16 through the stack buffer in chunks of
// whole blocks, so the order of operations is the float one.
template <DType D, bool kSquare>
double sum_contiguous(const typename Io<D>::Storage* x, int64_t n, typename Io<D>::T k) {
    using T = typename Io<D>::T;
    LaneTotals t;
    if constexpr (kDirect<D>) {
        accumulate_span<kSquare>(x, n, k, t);
    } else {
        T buf[kChunk];
        for (int64_t off = 0; off < n; off += kChunk) {
            const int64_t len = std::min(kChunk, n - off);
            accumulate_span<kSquare>(load_span<D>(x + off, len, buf), len, k, t);
        }
    }
    return t.total();
}

// Running (count, mean, M2) of a group, merged one part at a time with Chan et al.'s formula in double.
struct Moments {
    double count = 0.0;
    double mean = 0.0;
    double m2 = 0.0;  // sum of squared deviations from mean

    void merge(double n_b, double mean_b, double m2_b) {
        const double n = count + n_b;
        const double delta = mean_b - mean;
        mean += delta * (n_b / n);
        m2 += m2_b + delta * delta * (count * n_b / n);
        count = n;
    }
};

// M2 from the second pass's sum of (x - centre)^2 with centre = T(mean): sum (x - c)^2 = M2 + n (mean - c)^2.
inline double m2_from_centred(double sum_sq, double n, double mean, double centre) {
    const double d = mean - centre;
    return std::max(0.0, sum_sq - n * d * d);
}

// NCHW statistics of the cg rows of P values from `group`: two passes per row (shift x_0, then the row mean),
// rows merged in order.
template <DType D>
Moments nchw_moments(const typename Io<D>::Storage* group, int64_t cg, int64_t pixels) {
    using T = typename Io<D>::T;
    const double n = static_cast<double>(pixels);
    Moments mom;
    for (int64_t r = 0; r < cg; ++r) {
        const auto* row = group + r * pixels;
        const T x0 = value_at<D>(row);
        const double mean = static_cast<double>(x0) + sum_contiguous<D, false>(row, pixels, x0) / n;
        const T centre = static_cast<T>(mean);
        const double sum_sq = sum_contiguous<D, true>(row, pixels, centre);
        mom.merge(n, mean, m2_from_centred(sum_sq, n, mean, static_cast<double>(centre)));
    }
    return mom;
}

// NHWC scratch, one value per channel of a run of groups (at most C), allocated once per call.
template <typename T>
struct NhwcScratch {
    std::vector<T> centre, acc, in, out, mu, a, b;
    std::vector<double> total;
    explicit NhwcScratch(int64_t channels)
        : centre(static_cast<size_t>(channels)),
          acc(static_cast<size_t>(channels)),
          in(static_cast<size_t>(channels)),
          out(static_cast<size_t>(channels)),
          mu(static_cast<size_t>(channels)),
          a(static_cast<size_t>(channels)),
          b(static_cast<size_t>(channels)),
          total(static_cast<size_t>(channels)) {}
};

// Per-channel sums over the P pixel rows (cs values at stride C) of (x - k[c]) or (x - k[c])^2 into s.total: T lanes
// (one per channel) over blocks of kPixelBlock pixels, each block added into the channel's double total.
template <DType D, bool kSquare>
AGINGRT_CPU_CLONES void sum_channels(const typename Io<D>::Storage* x, int64_t cs, int64_t stride, int64_t pixels,
                                     const typename Io<D>::T* k, NhwcScratch<typename Io<D>::T>& s) {
    using T = typename Io<D>::T;
    T* acc = s.acc.data();
    double* total = s.total.data();
    std::fill(total, total + cs, 0.0);
    for (int64_t q0 = 0; q0 < pixels; q0 += kPixelBlock) {
        const int64_t q1 = std::min(pixels, q0 + kPixelBlock);
        std::fill(acc, acc + cs, T(0));
        for (int64_t q = q0; q < q1; ++q) {
            const T* v = load_span<D>(x + q * stride, cs, s.in.data());
            for (int64_t c = 0; c < cs; ++c) {
                const T d = v[c] - k[c];
                acc[c] += kSquare ? d * d : d;
            }
        }
        for (int64_t c = 0; c < cs; ++c) {
            total[c] += static_cast<double>(acc[c]);
        }
    }
}

// Sum of the channel totals [c0, c0 + cg) of one group, in channel order.
inline double group_total(const double* total, int64_t c0, int64_t cg) {
    double sum = 0.0;
    for (int64_t c = c0; c < c0 + cg; ++c) {
        sum += total[c];
    }
    return sum;
}

template <GroupNormActivation A, typename T>
AGINGRT_CPU_CLONES void apply_span(const T* x, T* y, int64_t n, T mu, T a, T b) {
    for (int64_t i = 0; i < n; ++i) {
        // (x - mu) first: exact for x near mu, so a large mean costs no cancellation in the output.
        y[i] = activate<A>((x[i] - mu) * a + b);
    }
}

// Writes n values of act((x - mu) * a + b) to y: straight into y for float / double, else through a stack buffer.
template <DType D, GroupNormActivation A>
void apply_contiguous(const typename Io<D>::Storage* x, typename Io<D>::Storage* y, int64_t n, typename Io<D>::T mu,
                      typename Io<D>::T a, typename Io<D>::T b) {
    using T = typename Io<D>::T;
    if constexpr (kDirect<D>) {
        apply_span<A>(x, y, n, mu, a, b);
    } else {
        T in[kChunk];
        T out[kChunk];
        for (int64_t off = 0; off < n; off += kChunk) {
            const int64_t len = std::min(kChunk, n - off);
            apply_span<A>(load_span<D>(x + off, len, in), out, len, mu, a, b);
            for (int64_t i = 0; i < len; ++i) {
                y[off + i] = Io<D>::store(out[i]);
            }
        }
    }
}

// NHWC apply over the P pixel rows (cs values at stride C): per-channel mu, a and b.
template <DType D, GroupNormActivation A>
AGINGRT_CPU_CLONES void apply_nhwc(const typename Io<D>::Storage* x, typename Io<D>::Storage* y, int64_t cs,
                                   int64_t stride, int64_t pixels, NhwcScratch<typename Io<D>::T>& s) {
    using T = typename Io<D>::T;
    const T* mu = s.mu.data();
    const T* a = s.a.data();
    const T* b = s.b.data();
    for (int64_t q = 0; q < pixels; ++q) {
        const T* in = load_span<D>(x + q * stride, cs, s.in.data());
        T* out = s.out.data();
        if constexpr (kDirect<D>) {
            out = y + q * stride;
        }
        for (int64_t c = 0; c < cs; ++c) {
            out[c] = activate<A>((in[c] - mu[c]) * a[c] + b[c]);
        }
        if constexpr (!kDirect<D>) {
            for (int64_t c = 0; c < cs; ++c) {
                y[q * stride + c] = Io<D>::store(out[c]);
            }
        }
    }
}

// Per channel k of group (n, g) starting at channel c0: a = scale * rstd (in double, then rounded to T), b = shift.
template <typename T, typename Coef>
inline void fold_affine(const GroupNormActParams& p, int64_t n, int64_t c0, int64_t cg, double rstd, T* a, T* b) {
    const Coef* scale = static_cast<const Coef*>(p.scale) + n * p.scale_stride_b + c0;
    const Coef* shift = static_cast<const Coef*>(p.shift) + n * p.shift_stride_b + c0;
    for (int64_t k = 0; k < cg; ++k) {
        a[k] = static_cast<T>(static_cast<double>(scale[k]) * rstd);
        b[k] = static_cast<T>(shift[k]);
    }
}

// NCHW items [begin, end), one at a time: statistics over the group's cg rows, then the apply row by row.
template <DType D, GroupNormActivation A, typename Coef>
void run_nchw(const GroupNormActParams& p, int64_t begin, int64_t end) {
    using Storage = typename Io<D>::Storage;
    using T = typename Io<D>::T;
    const Storage* x = static_cast<const Storage*>(p.x);
    Storage* y = static_cast<Storage*>(p.y);
    const int64_t cg = p.channels / p.groups;
    std::vector<T> a(static_cast<size_t>(cg));
    std::vector<T> b(static_cast<size_t>(cg));
    for (int64_t w = begin; w < end; ++w) {
        const int64_t n = w / p.groups;
        const int64_t c0 = (w % p.groups) * cg;
        const int64_t first = (n * p.channels + c0) * p.pixels;  // cg rows of P values from here
        const Moments mom = nchw_moments<D>(x + first, cg, p.pixels);
        fold_affine<T, Coef>(p, n, c0, cg, 1.0 / std::sqrt(mom.m2 / mom.count + p.eps), a.data(), b.data());
        const T mu = static_cast<T>(mom.mean);
        for (int64_t k = 0; k < cg; ++k) {
            const int64_t row = first + k * p.pixels;
            apply_contiguous<D, A>(x + row, y + row, p.pixels, mu, a[k], b[k]);
        }
    }
}

// NHWC items [begin, end): the consecutive groups g0 <= g < g1 of one sample are the channels [g0 cg, g1 cg),
// contiguous in every pixel row, so they are processed together, vectorised across channels. Each group's sums are
// still its own channels' lanes added in channel order, exactly what it gets alone, so the output does not depend
// on how [0, B G) is split. Per group: the first pass shifts by the group's first value, the second is centred on
// T(mean), as in NCHW.
template <DType D, GroupNormActivation A, typename Coef>
void run_nhwc(const GroupNormActParams& p, int64_t begin, int64_t end) {
    using Storage = typename Io<D>::Storage;
    using T = typename Io<D>::T;
    const int64_t cg = p.channels / p.groups;
    const double count = static_cast<double>(cg * p.pixels);
    NhwcScratch<T> s(p.channels);
    std::vector<double> mean(static_cast<size_t>(p.groups));
    for (int64_t w = begin; w < end;) {
        const int64_t n = w / p.groups;
        const int64_t g0 = w % p.groups;
        const int64_t groups = std::min(p.groups - g0, end - w);
        const int64_t cs = groups * cg;
        const int64_t first = n * p.pixels * p.channels + g0 * cg;  // P rows of cs values, C apart
        const Storage* x = static_cast<const Storage*>(p.x) + first;
        Storage* y = static_cast<Storage*>(p.y) + first;
        for (int64_t c = 0; c < cs; ++c) {
            s.centre[c] = value_at<D>(x + c - c % cg);  // the shift of the first pass: the group's first value
        }
        sum_channels<D, false>(x, cs, p.channels, p.pixels, s.centre.data(), s);
        for (int64_t j = 0; j < groups; ++j) {
            mean[j] = static_cast<double>(s.centre[j * cg]) + group_total(s.total.data(), j * cg, cg) / count;
            std::fill(s.centre.begin() + j * cg, s.centre.begin() + (j + 1) * cg, static_cast<T>(mean[j]));
        }
        sum_channels<D, true>(x, cs, p.channels, p.pixels, s.centre.data(), s);
        for (int64_t j = 0; j < groups; ++j) {
            const double centre = static_cast<double>(s.centre[j * cg]);
            const double m2 = m2_from_centred(group_total(s.total.data(), j * cg, cg), count, mean[j], centre);
            fold_affine<T, Coef>(p, n, (g0 + j) * cg, cg, 1.0 / std::sqrt(m2 / count + p.eps), &s.a[j * cg],
                                 &s.b[j * cg]);
            std::fill(s.mu.begin() + j * cg, s.mu.begin() + (j + 1) * cg, static_cast<T>(mean[j]));
        }
        apply_nhwc<D, A>(x, y, cs, p.channels, p.pixels, s);
        w += groups;
    }
}

template <DType D, GroupNormActivation A, typename Coef>
void run_items(const GroupNormActParams& p, int64_t begin, int64_t end) {
    if (p.layout == GroupNormLayout::kNCHW) {
        run_nchw<D, A, Coef>(p, begin, end);
    } else {
        run_nhwc<D, A, Coef>(p, begin, end);
    }
}

template <DType D, typename Coef>
void run_items(const GroupNormActParams& p, int64_t begin, int64_t end) {
    switch (p.act) {
        case GroupNormActivation::kRelu:
            run_items<D, GroupNormActivation::kRelu, Coef>(p, begin, end);
            return;
        case GroupNormActivation::kSilu:
            run_items<D, GroupNormActivation::kSilu, Coef>(p, begin, end);
            return;
        case GroupNormActivation::kNone:
            run_items<D, GroupNormActivation::kNone, Coef>(p, begin, end);
            return;
    }
}

}  // namespace

Status group_norm_act_cpu(const GroupNormActParams& p, int64_t begin, int64_t end) {
    if (p.batch < 0 || p.channels < 0 || p.pixels < 0 || p.groups <= 0 || p.channels % p.groups != 0 ||
        !(p.eps >= 0.0)) {
        return Status::kInvalidArgument;
    }
    if (begin < 0 || begin > end || end > group_norm_act_cpu_work_items(p)) {
        return Status::kInvalidArgument;
    }
    if (begin == end || p.channels == 0 || p.pixels == 0) {
        return Status::kOk;
    }
    if (!p.x || !p.y || !p.scale || !p.shift) {
        return Status::kInvalidArgument;
    }
    if (p.x_dtype == DType::kFloat64) {
        if (p.coef_dtype != DType::kFloat64) {
            return Status::kUnsupported;
        }
        run_items<DType::kFloat64, double>(p, begin, end);
        return Status::kOk;
    }
    if (p.coef_dtype != DType::kFloat32) {
        return Status::kUnsupported;
    }
    switch (p.x_dtype) {
        case DType::kFloat32:
            run_items<DType::kFloat32, float>(p, begin, end);
            return Status::kOk;
        case DType::kFloat16:
            run_items<DType::kFloat16, float>(p, begin, end);
            return Status::kOk;
        case DType::kBFloat16:
            run_items<DType::kBFloat16, float>(p, begin, end);
            return Status::kOk;
        default:
            return Status::kUnsupported;
    }
}

Status group_norm_act_cpu(const GroupNormActParams& p) {
    return group_norm_act_cpu(p, 0, group_norm_act_cpu_work_items(p));
}

}  // namespace agingrt
