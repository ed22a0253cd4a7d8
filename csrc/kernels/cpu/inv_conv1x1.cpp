// CPU reference for inv_conv1x1 (see csrc/kernels/inv_conv1x1.h): a straightforward per-pixel loop.
#include "kernels/inv_conv1x1.h"

#include <vector>

#include "kernels/cpu/element_io.h"

namespace agingrt {
namespace {

template <typename Acc>
void inv_conv1x1_impl(const InvConv1x1Params& p) {
    const Acc* w = static_cast<const Acc*>(p.weight);
    const Acc* bias = static_cast<const Acc*>(p.bias);
    const int64_t C = p.channels;
    std::vector<Acc> column(static_cast<size_t>(C));  // x[b, :, pix] in Acc, read once per pixel
    for (int64_t b = 0; b < p.batch; ++b) {
        for (int64_t pix = 0; pix < p.pixels; ++pix) {
            const int64_t x_base = b * p.x_stride_b + pix * p.x_stride_p;
            const int64_t y_base = b * p.y_stride_b + pix * p.y_stride_p;
            for (int64_t c = 0; c < C; ++c) {
                column[c] = load_as<Acc>(p.x, p.x_dtype, x_base + c * p.x_stride_c);
            }
            for (int64_t o = 0; o < C; ++o) {
                const Acc* w_row = w + o * C;
                Acc acc = bias ? bias[o] : Acc(0);
                for (int64_t c = 0; c < C; ++c) {
                    acc += w_row[c] * column[c];
                }
                store_as<Acc>(p.y, p.x_dtype, y_base + o * p.y_stride_c, acc);
            }
        }
    }
}

}  // namespace

Status inv_conv1x1_cpu(const InvConv1x1Params& p) {
    if (p.batch < 0 || p.channels < 0 || p.pixels < 0) {
        return Status::kInvalidArgument;
    }
    if (p.batch * p.channels * p.pixels == 0) {
        return Status::kOk;
    }
    if (!p.x || !p.weight || !p.y) {
        return Status::kInvalidArgument;
    }
    if (p.x_dtype == DType::kFloat64) {
        inv_conv1x1_impl<double>(p);
    } else {
        inv_conv1x1_impl<float>(p);
    }
    return Status::kOk;
}

}  // namespace agingrt
