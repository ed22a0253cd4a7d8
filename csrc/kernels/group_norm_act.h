// group_norm_act: GroupNorm statistics, a per-(n, c) affine and an activation in one op (PADA UNet, AcGAN IN).
// Torch-free: raw pointers, a params struct, a stream, a returned Status (docs/conventions.md item 2).
//
// Per sample n and group g (channels c in [g * C/G, (g + 1) * C/G)), over the (C/G) x H x W values of the group:
//   mu[n, g]   = mean(x)                             GroupNorm (Wu & He, ECCV 2018) eqs. (1)-(2)
//   var[n, g]  = mean((x - mu)^2)                    biased, as nn.GroupNorm / nn.InstanceNorm2d
//   y[n, c, p] = act((x[n, c, p] - mu) * rstd * scale[n, c] + shift[n, c]),   rstd = 1 / sqrt(var + eps)
// InstanceNorm is G = C (AcGAN, docs/models/acgan.md section 9). PADA folds the GN affine, the time scale/shift and the
// condition scale into scale and shift (docs/models/pada.md section 10 item 3):
//   scale = g (1 + s_t)(1 + s_c),   shift = (beta (1 + s_t) + b_t)(1 + s_c).
// Statistics are at least fp32 for every x dtype (fp32 partials over fixed blocks merged in float64 on the CPU
// reference) and deterministic: fixed partitions merged in a fixed order with Chan's formula, no float atomics.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"
#include "common/status.h"
#include "common/stream.h"

namespace agingrt {

enum class GroupNormActivation : int32_t {
    kNone = 0,
    kRelu = 1,  // max(v, 0)
    kSilu = 2,  // v * sigmoid(v)
};

enum class GroupNormLayout : int32_t {
    kNCHW = 0,  // dense [B, C, H, W]: element (n, c, p) at (n * C + c) * P + p
    kNHWC = 1,  // dense channels_last: element (n, c, p) at (n * P + p) * C + c
};

struct GroupNormActParams {
    const void* x;           // [B, C, H, W] dense in `layout`, x_dtype
    const void* scale;       // [B, C]: element (n, c) at n * scale_stride_b + c (stride 0: one row for all), coef_dtype
    const void* shift;       // [B, C]: element (n, c) at n * shift_stride_b + c, coef_dtype
    void* y;                 // [B, C, H, W], x's dtype and layout; may alias x (the statistics are read first)
    int64_t batch;           // B
    int64_t channels;        // C
    int64_t pixels;          // P = H * W
    int64_t groups;          // G, divides C
    int64_t scale_stride_b;  // elements between samples' rows of scale; 0 broadcasts one row
    int64_t shift_stride_b;  // same for shift
    GroupNormLayout layout;
    DType x_dtype;     // float32 / float16 / bfloat16 (float64 on the CPU reference only)
    DType coef_dtype;  // float32; float64 only with float64 x (CPU)
    double eps;        // >= 0, added to the variance
    GroupNormActivation act;
};

// The CPU kernel's independent work items: one per (sample, group), item w = n * G + g.
inline int64_t group_norm_act_cpu_work_items(const GroupNormActParams& p) {
    return p.batch * p.groups;
}

// CPU reference (always built) over the work items [begin, end) of group_norm_act_cpu_work_items(p); the caller
// may run disjoint ranges on different threads (the torch adapter uses at::parallel_for). Each item is computed
// by one call in a fixed order from its own inputs, so the output is bit-identical for every split of the range.
// Per (n, g): a shifted two-pass mean / variance per contiguous row with float partials over fixed blocks merged
// in double (see cpu/group_norm_act.cpp), then the apply in float32 (float64 for float64 x) as
// act((x - mu) * (scale * rstd) + shift).
Status group_norm_act_cpu(const GroupNormActParams& p, int64_t begin, int64_t end);

// All work items on the calling thread.
Status group_norm_act_cpu(const GroupNormActParams& p);

// Bytes of device scratch group_norm_act_cuda needs for these sizes (a function of B, C, P, G and the layout only).
size_t group_norm_act_cuda_workspace_bytes(const GroupNormActParams& p);

// CUDA (built with CUDA): x float32 / float16 / bfloat16, coef float32, fp32 statistics. Three launches:
//   1. partial Welford statistics (count, mean, M2) per fixed chunk: NCHW, chunks of a group's contiguous range;
//      NHWC, per channel over chunks of pixels with warps reading 32 adjacent channels (coalesced);
//   2. one block per (n, g) merges its partials in a fixed tree order (Chan et al.) and writes per-(n, c)
//      (mu, scale * rstd, shift);
//   3. the apply pass, 16-byte vectors where the layout and alignment allow.
// `workspace` must hold group_norm_act_cuda_workspace_bytes(p) bytes, 16-byte aligned, on the stream's device.
Status group_norm_act_cuda(const GroupNormActParams& p, void* workspace, cudaStream_t stream);

}  // namespace agingrt
