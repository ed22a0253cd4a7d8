// CPU reference for masked_gaussian_blur (see csrc/kernels/masked_gaussian_blur.h for the maths and flags).
#include "kernels/masked_gaussian_blur.h"

#include <vector>

#include "kernels/cpu/element_io.h"

namespace agingrt {
namespace {

// One zero-padded 1-D pass along rows: h[y, x] = sum_j taps[j] * src[y, x + j - r].
template <typename Acc>
void blur_rows(const void* f, DType dtype, int64_t base, int64_t h, int64_t w, const Acc* taps, int32_t k,
               std::vector<Acc>& out) {
    const int64_t r = (k - 1) / 2;
    for (int64_t y = 0; y < h; ++y) {
        for (int64_t x = 0; x < w; ++x) {
            Acc acc = 0;
            for (int64_t j = 0; j < k; ++j) {
                const int64_t xx = x + j - r;
                if (xx >= 0 && xx < w) {
                    acc += taps[j] * load_as<Acc>(f, dtype, base + y * w + xx);
                }
            }
            out[y * w + x] = acc;
        }
    }
}

// The vertical pass at one pixel: sum_i taps[i] * h[y + i - r, x].
template <typename Acc>
Acc blur_column_at(const std::vector<Acc>& hbuf, int64_t y, int64_t x, int64_t h, int64_t w, const Acc* taps,
                   int32_t k) {
    const int64_t r = (k - 1) / 2;
    Acc acc = 0;
    for (int64_t i = 0; i < k; ++i) {
        const int64_t yy = y + i - r;
        if (yy >= 0 && yy < h) {
            acc += taps[i] * hbuf[yy * w + x];
        }
    }
    return acc;
}

template <typename Acc>
void masked_gaussian_blur_impl(const MaskedGaussianBlurParams& p) {
    const int64_t h = p.height;
    const int64_t w = p.width;
    const int64_t plane = h * w;
    const int32_t k = p.kernel_size;
    std::vector<Acc> hm(static_cast<size_t>(plane));
    std::vector<Acc> hg(static_cast<size_t>(plane));
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
            if (!g_identity) {
                blur_rows<Acc>(p.features, p.dtype, base, h, w, taps_g, k, hg);
            }
            if (!same && !m_identity) {
                blur_rows<Acc>(p.features, p.dtype, base, h, w, taps_m, k, hm);
            }
            for (int64_t y = 0; y < h; ++y) {
                for (int64_t x = 0; x < w; ++x) {
                    const int64_t i = base + y * w + x;
                    const Acc f = load_as<Acc>(p.features, p.dtype, i);
                    const Acc blurred_g = g_identity ? f : blur_column_at<Acc>(hg, y, x, h, w, taps_g, k);
                    if (same) {
                        store_as<Acc>(p.out, p.dtype, i, blurred_g);
                        continue;
                    }
                    const Acc blurred_m = m_identity ? f : blur_column_at<Acc>(hm, y, x, h, w, taps_m, k);
                    const Acc m = load_as<Acc>(p.mask, p.mask_dtype, b * plane + y * w + x);
                    store_as<Acc>(p.out, p.dtype, i, m * blurred_m + (Acc(1) - m) * blurred_g);  // Eq. (2)
                }
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
