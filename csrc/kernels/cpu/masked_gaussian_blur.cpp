// CPU kernel for masked_gaussian_blur (see csrc/kernels/masked_gaussian_blur.h for the maths and flags).
// Each (b, c) plane is loaded once into accumulation-type buffers; both passes then run row by row with the tap
// loop outside the pixel loop, so the pixel loop is a plain a[x] += t * s[x + o] that the compiler vectorises.
// Every output still sums its taps in ascending order from zero, skipping the zero-padded ones, so the result
// is the per-pixel form's bit for bit. The torch adapter splits the planes over threads.
#include "kernels/masked_gaussian_blur.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/element_io.h"

namespace agingrt {
namespace {

// out[y, x] = sum_j taps[j] * src[y, x + j - r] over the in-range j (zero padding), rows of width w.
template <typename Acc>
void blur_rows(const Acc* src, int64_t h, int64_t w, const Acc* taps, int32_t k, Acc* out) {
    const int64_t r = (k - 1) / 2;
    std::fill(out, out + h * w, Acc(0));
    for (int64_t y = 0; y < h; ++y) {
        const Acc* row = src + y * w;
        Acc* dst = out + y * w;
        for (int64_t j = 0; j < k; ++j) {
            const int64_t offset = j - r;  // reads x + offset, which must lie in [0, w)
            const int64_t x0 = std::max<int64_t>(0, -offset);
            const int64_t x1 = std::min<int64_t>(w, w - offset);
            const Acc t = taps[j];
            for (int64_t x = x0; x < x1; ++x) {
                dst[x] += t * row[x + offset];
            }
        }
    }
}

// out[y, :] = sum_i taps[i] * src[y + i - r, :] over the in-range i (zero padding).
template <typename Acc>
void blur_columns(const Acc* src, int64_t h, int64_t w, const Acc* taps, int32_t k, Acc* out) {
    const int64_t r = (k - 1) / 2;
    std::fill(out, out + h * w, Acc(0));
    for (int64_t y = 0; y < h; ++y) {
        Acc* dst = out + y * w;
        const int64_t i0 = std::max<int64_t>(0, r - y);
        const int64_t i1 = std::min<int64_t>(k, h + r - y);
        for (int64_t i = i0; i < i1; ++i) {
            const Acc* row = src + (y + i - r) * w;
            const Acc t = taps[i];
            for (int64_t x = 0; x < w; ++x) {
                dst[x] += t * row[x];
            }
        }
    }
}

template <typename Acc>
void masked_gaussian_blur_impl(const MaskedGaussianBlurParams& p) {
    const int64_t h = p.height;
    const int64_t w = p.width;
    const int64_t plane = h * w;
    const int32_t k = p.kernel_size;
    std::vector<Acc> f(static_cast<size_t>(plane));
    std::vector<Acc> rows(static_cast<size_t>(plane));
    std::vector<Acc> bm(static_cast<size_t>(plane));
    std::vector<Acc> bg(static_cast<size_t>(plane));
    for (int64_t b = 0; b < p.batch; ++b) {
        const int32_t flags = p.flags[b];
        const bool m_identity = flags & kBlurMIdentity;
        const bool g_identity = flags & kBlurGIdentity;
        const bool same = flags & kBlurSame;
        const Acc* taps_m = static_cast<const Acc*>(p.taps) + b * 2 * k;
        const Acc* taps_g = taps_m + k;
        for (int64_t c = 0; c < p.channels; ++c) {
            const int64_t base = (b * p.channels + c) * plane;
            if (same && g_identity) {  // both blurs are the identity: a bitwise copy
                for (int64_t i = 0; i < plane; ++i) {
                    copy_element(p.features, p.out, p.dtype, base + i);
                }
                continue;
            }
            for (int64_t i = 0; i < plane; ++i) {
                f[i] = load_as<Acc>(p.features, p.dtype, base + i);
            }
            const Acc* blurred_g = f.data();
            if (!g_identity) {
                blur_rows<Acc>(f.data(), h, w, taps_g, k, rows.data());
                blur_columns<Acc>(rows.data(), h, w, taps_g, k, bg.data());
                blurred_g = bg.data();
            }
            if (same) {
                for (int64_t i = 0; i < plane; ++i) {
                    store_as<Acc>(p.out, p.dtype, base + i, blurred_g[i]);
                }
                continue;
            }
            const Acc* blurred_m = f.data();
            if (!m_identity) {
                blur_rows<Acc>(f.data(), h, w, taps_m, k, rows.data());
                blur_columns<Acc>(rows.data(), h, w, taps_m, k, bm.data());
                blurred_m = bm.data();
            }
            for (int64_t i = 0; i < plane; ++i) {
                const Acc m = load_as<Acc>(p.mask, p.mask_dtype, b * plane + i);
                store_as<Acc>(p.out, p.dtype, base + i, m * blurred_m[i] + (Acc(1) - m) * blurred_g[i]);  // Eq. (2)
            }
        }
    }
}

}  // namespace

Status masked_gaussian_blur_cpu(const MaskedGaussianBlurParams& p) {
    if (p.batch < 0 || p.channels < 0 || p.height < 0 || p.width < 0 || p.kernel_size < 1 || p.kernel_size % 2 == 0) {
        return Status::kInvalidArgument;
    }
    if (p.batch * p.channels * p.height * p.width == 0) {
        return Status::kOk;
    }
    if (!p.features || !p.mask || !p.taps || !p.flags || !p.out) {
        return Status::kInvalidArgument;
    }
    if (p.dtype == DType::kFloat64) {
        masked_gaussian_blur_impl<double>(p);
    } else {
        masked_gaussian_blur_impl<float>(p);
    }
    return Status::kOk;
}

}  // namespace agingrt
