// Runs every CUDA kernel launcher of csrc/kernels/cuda under the CPU emulator (cuda_emu.h) and compares it with
// the CPU reference kernel on the same inputs: odd sizes, tile edges, several tiles, strided and channels_last
// layouts, misaligned pointers (scalar tails of the vector paths), every dtype, per-sample flags. Each output
// buffer has guard elements on both sides and starts as NaN, so an element the kernel failed to write, a read of
// unwritten shared memory and an out-of-bounds write all show up. Prints one line per failing case and exits
// non-zero if any failed. Tolerances: both sides round the same float arithmetic to the storage type, so they
// differ only by accumulation order and fused multiply-adds (a few fp32 ulps; one ulp of the storage type).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/half.h"
#include "kernels/cpu/element_io.h"
#include "kernels/ddim_step.h"
#include "kernels/group_norm_act.h"
#include "kernels/guided_backprop_mask.h"
#include "kernels/inv_conv1x1.h"
#include "kernels/masked_gaussian_blur.h"

using namespace agingrt;

namespace {

int g_cases = 0;
int g_failures = 0;
std::mt19937 g_rng(1234);

constexpr int64_t kGuard = 16;  // elements of guard on each side of every buffer

size_t elem_size(DType d) {
    return d == DType::kFloat64 ? 8 : d == DType::kFloat32 ? 4 : 2;
}

const char* dtype_name(DType d) {
    switch (d) {
        case DType::kFloat32:
            return "fp32";
        case DType::kFloat16:
            return "fp16";
        case DType::kBFloat16:
            return "bf16";
        case DType::kFloat64:
            return "fp64";
    }
    return "?";
}

// A typed buffer of n elements plus guards; `shift` elements past a 16-byte boundary (misaligned vector paths).
struct Buffer {
    std::vector<uint64_t> storage;  // 8-byte units keep the base 16-byte aligned on glibc
    DType dtype;
    int64_t n;
    int64_t shift;

    Buffer(DType d, int64_t count, int64_t shift_elems = 0) : dtype(d), n(count), shift(shift_elems) {
        const size_t bytes = (static_cast<size_t>(count + 2 * kGuard + shift_elems)) * elem_size(d);
        storage.assign(bytes / 8 + 2, ~uint64_t(0));  // all bits set: NaN in every float type
    }
    unsigned char* base() { return reinterpret_cast<unsigned char*>(storage.data()); }
    void* data() { return base() + (kGuard + shift) * elem_size(dtype); }
    float get(int64_t i) { return load_as<float>(data(), dtype, i); }
    void set(int64_t i, float v) { store_as<float>(data(), dtype, i, v); }
    void fill_random(float scale = 1.0f) {
        std::normal_distribution<float> dist(0.0f, scale);
        for (int64_t i = 0; i < n; ++i) {
            set(i, dist(g_rng));
        }
    }
    bool guards_intact() {
        const size_t es = elem_size(dtype);
        const unsigned char* b = base();
        for (size_t i = 0; i < static_cast<size_t>(kGuard + shift) * es; ++i) {
            if (b[i] != 0xff) {
                return false;
            }
        }
        const size_t end = static_cast<size_t>(kGuard + shift + n) * es;
        for (size_t i = end; i < end + kGuard * es; ++i) {
            if (b[i] != 0xff) {
                return false;
            }
        }
        return true;
    }
};

// Compare the emulated CUDA output with the CPU reference over n elements; NaN must match NaN.
void expect_close(const std::string& what, Buffer& cuda, Buffer& ref, double atol, double rtol) {
    ++g_cases;
    if (!cuda.guards_intact()) {
        std::printf("FAIL %s: wrote outside the output buffer\n", what.c_str());
        ++g_failures;
        return;
    }
    for (int64_t i = 0; i < ref.n; ++i) {
        const double a = cuda.get(i);
        const double b = ref.get(i);
        const bool both_nan = std::isnan(a) && std::isnan(b);
        if (!both_nan && !(std::fabs(a - b) <= atol + rtol * std::fabs(b))) {
            std::printf("FAIL %s: element %lld: cuda %.9g, cpu %.9g\n", what.c_str(), static_cast<long long>(i), a, b);
            ++g_failures;
            return;
        }
    }
}

void expect_ok(const std::string& what, Status s) {
    if (s != Status::kOk) {
        ++g_cases;
        ++g_failures;
        std::printf("FAIL %s: status %s\n", what.c_str(), status_name(s));
    }
}

// One ulp of the storage type at 1 (fp32 gets a few: fused multiply-adds and summation order).
double ulp(DType d) {
    return d == DType::kFloat16 ? 1.0 / 1024 : d == DType::kBFloat16 ? 1.0 / 128 : 4e-7;
}

// ---- ddim_step ------------------------------------------------------------------------------------------------

void test_ddim_step() {
    for (DType ed : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
        for (int64_t n : {1, 3, 4, 7, 1937}) {
            for (int64_t shift : {0, 1}) {
                for (bool clip : {true, false}) {
                    Buffer x(DType::kFloat32, n, shift), e(ed, n), out(DType::kFloat32, n), ref(DType::kFloat32, n);
                    x.fill_random(2.0f);
                    e.fill_random();
                    DdimStepParams p{};
                    p.x_t = x.data();
                    p.eps = e.data();
                    p.n = n;
                    p.x_dtype = DType::kFloat32;
                    p.eps_dtype = ed;
                    p.coef_a = std::sqrt(1.0 / 0.3);
                    p.coef_b = std::sqrt(1.0 / 0.3 - 1.0);
                    p.coef_c = std::sqrt(0.6);
                    p.coef_e = std::sqrt(0.4);
                    p.clip = clip;
                    p.x_prev = out.data();
                    const std::string what = std::string("ddim_step eps ") + dtype_name(ed) + " n " +
                                             std::to_string(n) + " shift " + std::to_string(shift) +
                                             (clip ? " clip" : "");
                    expect_ok(what, ddim_step_cuda(p, nullptr));
                    p.x_prev = ref.data();
                    expect_ok(what + " (cpu)", ddim_step_cpu(p));
                    expect_close(what, out, ref, 1e-5, 1e-5);
                }
            }
        }
    }
}

// ---- inv_conv1x1 ----------------------------------------------------------------------------------------------

enum class Layout { kNchw, kChannelsLast, kChannelSlice };

void test_inv_conv1x1() {
    struct Case {
        int64_t b, c, h, w;
    };
    for (DType d : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
        for (Case cs :
             {Case{1, 3, 1, 1}, Case{2, 12, 5, 7}, Case{1, 17, 9, 15}, Case{2, 33, 3, 45}, Case{1, 70, 4, 5}}) {
            for (Layout layout : {Layout::kNchw, Layout::kChannelsLast, Layout::kChannelSlice}) {
                for (bool with_bias : {true, false}) {
                    const int64_t b = cs.b, c = cs.c, p = cs.h * cs.w;
                    // x strides over (batch, channel, pixel); the slice is channels [0, C) of a 2C-channel NCHW x
                    const int64_t xc = layout == Layout::kChannelSlice ? 2 * c : c;
                    Buffer x(d, b * xc * p);
                    x.fill_random();
                    Buffer wt(DType::kFloat32, c * c), bias(DType::kFloat32, c);
                    wt.fill_random(1.0f / std::sqrt(static_cast<float>(c)));
                    bias.fill_random();
                    Buffer out(d, b * c * p), ref(d, b * c * p);
                    InvConv1x1Params q{};
                    q.x = x.data();
                    q.weight = wt.data();
                    q.bias = with_bias ? bias.data() : nullptr;
                    q.batch = b;
                    q.channels = c;
                    q.pixels = p;
                    const bool cl = layout == Layout::kChannelsLast;
                    q.x_stride_b = xc * p;
                    q.x_stride_c = cl ? 1 : p;
                    q.x_stride_p = cl ? c : 1;
                    q.y_stride_b = c * p;  // y follows x's memory format (channels_last -> channels_last)
                    q.y_stride_c = cl ? 1 : p;
                    q.y_stride_p = cl ? c : 1;
                    q.x_dtype = d;
                    const std::string what = std::string("inv_conv1x1 ") + dtype_name(d) + " [" + std::to_string(b) +
                                             ", " + std::to_string(c) + ", " + std::to_string(cs.h) + ", " +
                                             std::to_string(cs.w) + "] layout " + std::to_string(int(layout)) +
                                             (with_bias ? " bias" : "");
                    q.y = out.data();
                    expect_ok(what, inv_conv1x1_cuda(q, nullptr));
                    q.y = ref.data();
                    expect_ok(what + " (cpu)", inv_conv1x1_cpu(q));
                    expect_close(what, out, ref, 4 * ulp(d) * std::sqrt(static_cast<double>(c)), 2 * ulp(d));
                }
            }
        }
    }
}

// ---- masked_gaussian_blur -------------------------------------------------------------------------------------

void fill_taps(double sigma, int k, double* out) {  // as csrc/ops/masked_gaussian_blur.cpp
    const double center = (k - 1) / 2.0;
    double sum = 0.0;
    for (int n = 0; n < k; ++n) {
        const double dn = n - center;
        out[n] = sigma == 0.0 ? (n == (k - 1) / 2 ? 1.0 : 0.0) : std::exp(-(dn * dn) / (2.0 * sigma * sigma));
        sum += out[n];
    }
    for (int n = 0; n < k; ++n) {
        out[n] /= sum;
    }
}

void test_masked_gaussian_blur() {
    // (sigma_m, sigma_g) per sample: both blur, m identity, same, both identity (bitwise copy), g identity.
    const double sigmas[5][2] = {{1.3, 0.7}, {0.0, 2.0}, {1.5, 1.5}, {0.0, 0.0}, {2.0, 0.0}};
    const int64_t batch = 5, channels = 2;
    struct Size {
        int64_t h, w;
    };
    for (DType d : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
        for (bool mask_fp32 : {false, true}) {
            for (Size sz : {Size{1, 1}, Size{5, 7}, Size{33, 40}}) {
                for (int k : {1, 3, 9, 31, 33, 63}) {
                    if (sz.h == 33 && k != 9 && k != 33) {
                        continue;  // the large plane for one kernel per tile size is enough
                    }
                    const int64_t n = batch * channels * sz.h * sz.w;
                    Buffer f(d, n), out(d, n), ref(d, n);
                    f.fill_random(2.0f);
                    const DType md = mask_fp32 ? DType::kFloat32 : d;
                    Buffer m(md, batch * sz.h * sz.w);
                    std::uniform_real_distribution<float> u(0.0f, 1.0f);
                    for (int64_t i = 0; i < m.n; ++i) {
                        m.set(i, u(g_rng));
                    }
                    std::vector<double> taps64(batch * 2 * k);
                    std::vector<float> taps32(batch * 2 * k);
                    std::vector<int32_t> flags(batch);
                    for (int64_t s = 0; s < batch; ++s) {
                        fill_taps(sigmas[s][0], k, &taps64[s * 2 * k]);
                        fill_taps(sigmas[s][1], k, &taps64[s * 2 * k + k]);
                        flags[s] = (sigmas[s][0] == 0.0 ? kBlurMIdentity : 0) |
                                   (sigmas[s][1] == 0.0 ? kBlurGIdentity : 0) |
                                   (sigmas[s][0] == sigmas[s][1] ? kBlurSame : 0);
                    }
                    for (size_t i = 0; i < taps64.size(); ++i) {
                        taps32[i] = static_cast<float>(taps64[i]);
                    }
                    MaskedGaussianBlurParams p{};
                    p.features = f.data();
                    p.mask = m.data();
                    p.taps = taps32.data();
                    p.flags = flags.data();
                    p.batch = batch;
                    p.channels = channels;
                    p.height = sz.h;
                    p.width = sz.w;
                    p.kernel_size = k;
                    p.dtype = d;
                    p.mask_dtype = md;
                    const std::string what = std::string("masked_gaussian_blur ") + dtype_name(d) + " mask " +
                                             dtype_name(md) + " " + std::to_string(sz.h) + "x" + std::to_string(sz.w) +
                                             " K " + std::to_string(k);
                    p.out = out.data();
                    expect_ok(what, masked_gaussian_blur_cuda(p, nullptr));
                    p.out = ref.data();
                    expect_ok(what + " (cpu)", masked_gaussian_blur_cpu(p));
                    expect_close(what, out, ref, 2 * 2.0 * ulp(d), 2 * ulp(d));
                }
            }
        }
    }
}

// ---- guided backprop ------------------------------------------------------------------------------------------

void test_guided_relu() {
    for (DType d : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
        for (int64_t n : {1, 7, 8, 1003}) {
            for (int64_t shift : {0, 1}) {
                Buffer g(d, n, shift), a(d, n), out(d, n), ref(d, n);
                g.fill_random();
                a.fill_random();
                GuidedReluBackwardParams p{};
                p.grad_out = g.data();
                p.act = a.data();
                p.n = n;
                p.dtype = d;
                const std::string what = std::string("guided_relu_backward ") + dtype_name(d) + " n " +
                                         std::to_string(n) + " shift " + std::to_string(shift);
                p.grad_in = out.data();
                expect_ok(what, guided_relu_backward_cuda(p, nullptr));
                p.grad_in = ref.data();
                expect_ok(what + " (cpu)", guided_relu_backward_cpu(p));
                expect_close(what, out, ref, 0.0, 0.0);
            }
        }
    }
}

void test_guided_backprop_mask() {
    struct Size {
        int64_t h, w;
    };
    enum class GradLayout { kNchw, kChannelsLast, kTransposed };
    for (DType d : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
        for (Size sz : {Size{1, 2}, Size{5, 7}, Size{12, 14}, Size{40, 33}}) {
            for (GradLayout layout : {GradLayout::kNchw, GradLayout::kChannelsLast, GradLayout::kTransposed}) {
                for (int k : {1, 5, 29, 101}) {
                    const int64_t b = 2, c = 3, h = sz.h, w = sz.w, hw = h * w;
                    Buffer g(d, b * c * hw);
                    g.fill_random();
                    GuidedBackpropMaskParams p{};
                    p.grad = g.data();
                    p.batch = b;
                    p.channels = c;
                    p.height = h;
                    p.width = w;
                    p.stride_b = c * hw;
                    if (layout == GradLayout::kNchw) {
                        p.stride_c = hw, p.stride_h = w, p.stride_w = 1;
                    } else if (layout == GradLayout::kChannelsLast) {
                        p.stride_c = 1, p.stride_h = w * c, p.stride_w = c;
                    } else {  // a [B, C, W, H] buffer seen transposed: H is the fastest axis
                        p.stride_c = hw, p.stride_h = 1, p.stride_w = h;
                    }
                    p.grad_dtype = d;
                    std::vector<double> taps(k);
                    fill_taps(0.3 * (k / 2.0 - 1) + 0.8, k, taps.data());
                    p.taps = taps.data();
                    p.kernel_size = k;
                    p.mask_dtype = DType::kFloat32;
                    std::vector<float> workspace(guided_backprop_mask_workspace_bytes(b, h, w) / sizeof(float));
                    p.workspace = workspace.data();
                    Buffer out(DType::kFloat32, b * hw), ref(DType::kFloat32, b * hw);
                    const std::string what = std::string("guided_backprop_mask ") + dtype_name(d) + " " +
                                             std::to_string(h) + "x" + std::to_string(w) + " layout " +
                                             std::to_string(int(layout)) + " K " + std::to_string(k);
                    p.mask = out.data();
                    expect_ok(what, guided_backprop_mask_cuda(p, nullptr));
                    p.mask = ref.data();
                    expect_ok(what + " (cpu)", guided_backprop_mask_cpu(p));
                    expect_close(what, out, ref, 2e-6, 2e-5);  // channel sum in fp32 (CUDA) vs fp64 (CPU)
                }
            }
        }
    }
}

// ---- group_norm_act ---------------------------------------------------------------------------------------------

// Pointer alignment (vector vs scalar paths), [B, C] rows vs one broadcast [C] row of scale / shift, in place, and
// the mean of x (a large one tests that the fp32 statistics do not cancel).
struct GroupNormMode {
    int64_t x_shift, y_shift;  // elements past a 16-byte boundary
    bool in_place, scale_bcast, shift_bcast;
    float mean;
};

// Tolerance: both sides compute act((x - mu) * a + b) in fp32 and round it once to the storage type, so they differ
// by the statistics plus one rounding flip of the output (rtol: one ulp of the storage type). The CPU takes mean and
// variance in float64 and rounds mu and a = scale * rstd to fp32; CUDA merges fp32 Welford partials with Chan's
// formula, so its mu and rstd are off by a few fp32 ulps of the group's magnitude: |dmu| <~ k 2^-24 (|mean| + std),
// |drstd / rstd| <~ k 2^-24 R with R = 1 + |mean| / std. At the output that is
//   |scale| * (|dmu| * rstd + |z| * |drstd / rstd|) <= k 2^-24 R |scale| (1 + |z|),
// z = (x - mu) * rstd the normalised value (|z| < 6 for these sizes), the activation's slope <= 1.1. With k = 8 the
// largest error seen is ~1/20 of the bound (mean 0: ~3 fp32 ulps of |scale|; mean 1e3: ~1.6 ulps of 1e3 in mu),
// while a variance taken as fp32 E[x^2] - E[x]^2 would be off by ~2^-24 R^2, ~10 times the bound at R = 1e3.
void group_norm_case(DType d, GroupNormLayout layout, int64_t b, int64_t c, int64_t h, int64_t w, int64_t g,
                     const GroupNormMode& m, GroupNormActivation act) {
    // Spread of x around its mean: at 1e3 the half types' ulps are 0.5 (fp16) and 4 (bf16).
    const float spread = d == DType::kBFloat16 ? 16.0f : d == DType::kFloat16 ? 2.0f : 1.0f;
    const int64_t pix = h * w, n = b * c * pix;
    Buffer x(d, n, m.x_shift);
    for (int64_t i = 0; i < n; ++i) {
        x.set(i, m.mean + spread * std::normal_distribution<float>(0.0f, 1.0f)(g_rng));
    }
    Buffer scale(DType::kFloat32, m.scale_bcast ? c : b * c), shift(DType::kFloat32, m.shift_bcast ? c : b * c);
    double max_scale = 0.0;
    for (int64_t i = 0; i < scale.n; ++i) {
        scale.set(i, 1.0f + 0.5f * std::normal_distribution<float>(0.0f, 1.0f)(g_rng));
        max_scale = std::fmax(max_scale, std::fabs(scale.get(i)));
    }
    shift.fill_random();
    Buffer out(d, n, m.in_place ? m.x_shift : m.y_shift), ref(d, n);
    GroupNormActParams p{};
    p.x = x.data();
    p.scale = scale.data();
    p.shift = shift.data();
    p.batch = b;
    p.channels = c;
    p.pixels = pix;
    p.groups = g;
    p.scale_stride_b = m.scale_bcast ? 0 : c;
    p.shift_stride_b = m.shift_bcast ? 0 : c;
    p.layout = layout;
    p.x_dtype = d;
    p.coef_dtype = DType::kFloat32;
    p.eps = 1e-5;
    p.act = act;
    const char* act_name = act == GroupNormActivation::kRelu   ? "relu"
                           : act == GroupNormActivation::kSilu ? "silu"
                                                               : "none";
    const std::string what =
        std::string("group_norm_act ") + dtype_name(d) + (layout == GroupNormLayout::kNHWC ? " NHWC [" : " NCHW [") +
        std::to_string(b) + ", " + std::to_string(c) + ", " + std::to_string(h) + ", " + std::to_string(w) + "] G " +
        std::to_string(g) + " " + act_name + " shift " + std::to_string(m.x_shift) + "/" + std::to_string(m.y_shift) +
        (m.in_place ? " in place" : "") + (m.scale_bcast ? " scale[C]" : " scale[B,C]") +
        (m.shift_bcast ? " shift[C]" : " shift[B,C]") + " mean " + std::to_string(static_cast<int>(m.mean));
    p.y = ref.data();
    expect_ok(what + " (cpu)", group_norm_act_cpu(p));
    if (m.in_place) {
        std::memcpy(out.data(), x.data(), n * elem_size(d));
        p.x = out.data();
    }
    p.y = out.data();
    // The workspace as a guarded fp32 buffer that starts as NaN: a partial or coefficient the kernels fail to write
    // poisons y, and a write past the size the launcher asked for shows in the guards.
    Buffer ws(DType::kFloat32, static_cast<int64_t>(group_norm_act_cuda_workspace_bytes(p) / sizeof(float)));
    expect_ok(what, group_norm_act_cuda(p, ws.data(), nullptr));
    if (!ws.guards_intact()) {
        ++g_cases;
        ++g_failures;
        std::printf("FAIL %s: wrote outside the workspace\n", what.c_str());
    }
    const double r = 1.0 + std::fabs(m.mean) / spread;
    expect_close(what, out, ref, 8.0 * std::ldexp(1.0, -24) * r * max_scale * (1.0 + 6.0), ulp(d));
}

void test_group_norm_act() {
    struct Shape {
        int64_t b, c, h, w;
        std::vector<int64_t> groups;
    };
    // The emulator's cost is mostly per (n, g) block (256 fibers merging Welford states), so G = C stays small.
    const Shape shapes[] = {
        {1, 3, 1, 1, {1, 3}},     // one pixel: G = C has zero variance (y = shift exactly)
        {2, 3, 5, 7, {1, 3}},     // odd plane, scalar paths (35 pixels, 105-element groups)
        {2, 32, 3, 5, {1, 8}},    // one full NHWC tile; NCHW group lengths 480 and 60 (fp32 vectors only)
        {2, 48, 4, 6, {1, 6}},    // one and a half tiles; 24 pixels and C % 8 == 0: every vector path
        {1, 16, 4, 6, {16}},      // InstanceNorm (one channel per group), half a tile, on the vector paths
        {1, 67, 7, 9, {1}},       // three tiles, the last with 3 channels; odd everything
        {2, 32, 16, 33, {1, 2}},  // several statistics chunks: NCHW 3 (G = 1) and 2 (G = 2), NHWC 3 (528 pixels)
    };
    const GroupNormMode modes[] = {
        {0, 0, false, false, false, 0.0f},  // aligned, [B, C] coefficients
        {1, 0, false, true, false, 1e3f},   // misaligned x (scalar statistics and apply), large mean
        {0, 1, false, false, true, 0.0f},   // vector statistics, misaligned y (scalar apply)
        {0, 0, true, true, true, -1e3f},    // in place, aligned, large negative mean
    };
    int combo = 0;
    for (DType d : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
        for (GroupNormLayout layout : {GroupNormLayout::kNCHW, GroupNormLayout::kNHWC}) {
            for (const Shape& sh : shapes) {
                for (int64_t g : sh.groups) {
                    // Every activation in each combination, rotated over the modes from one combination to the next.
                    ++combo;
                    for (int k = 0; k < 4; ++k) {
                        const auto act = static_cast<GroupNormActivation>((k + combo) % 3);
                        group_norm_case(d, layout, sh.b, sh.c, sh.h, sh.w, g, modes[k], act);
                    }
                }
            }
        }
    }
}

}  // namespace

int main() {
    test_ddim_step();
    test_inv_conv1x1();
    test_masked_gaussian_blur();
    test_guided_relu();
    test_guided_backprop_mask();
    test_group_norm_act();
    std::printf("%d cases, %d failed\n", g_cases, g_failures);
    return g_failures == 0 ? 0 : 1;
}
