// CUDA inv_conv1x1 (see csrc/kernels/inv_conv1x1.h): y[b] = A x[b] + c, a [C x C] by [C x P] product per sample.
//
// Each block computes a [TO x TP] tile of y for one sample: it walks the input channels in chunks of TK, staging
// A[o0:o0+TO, k0:k0+TK] and x[k0:k0+TK, p0:p0+TP] in shared memory (as float), and every thread accumulates an
// [RO x RP] sub-tile in registers (fp32). For Glow's C = 12..48 the op is memory-bound (about C/4 FLOP per byte
// in fp32) and this reads x and writes y once; the tile shape is picked by C so that little of a tile is padding.
// Large C in fp32 NCHW goes to cuBLAS from the adapter instead (csrc/ops/inv_conv1x1.cpp).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/inv_conv1x1.h"

#include "common/cuda_convert.cuh"

namespace agingrt {
namespace {

struct Strides {
    int64_t b, c, p;
};

template <typename T, int TO, int TP, int TK, int RO, int RP>
__global__ void __launch_bounds__((TO / RO) * (TP / RP))
    inv_conv1x1_kernel(const T* __restrict__ x, const float* __restrict__ weight, const float* __restrict__ bias,
                       T* __restrict__ y, int64_t channels, int64_t pixels, Strides xs, Strides ys) {
    constexpr int kThreadsP = TP / RP;  // threads along pixels (fastest, so loads and stores coalesce in NCHW)
    constexpr int kThreadsO = TO / RO;  // threads along output channels
    constexpr int kThreads = kThreadsP * kThreadsO;
    // +1 padding: the transposed stores below walk the first index, which would otherwise hit one bank.
    __shared__ float a_tile[TK][TO + 1];  // A[o0 + o, k0 + k] at [k][o]
    __shared__ float x_tile[TK][TP + 1];  // x[b, k0 + k, p0 + p] at [k][p]

    const int tid = threadIdx.x;
    const int tp = tid % kThreadsP;
    const int to = tid / kThreadsP;
    const int64_t p0 = static_cast<int64_t>(blockIdx.x) * TP;
    const int64_t o0 = static_cast<int64_t>(blockIdx.y) * TO;
    const T* xb = x + static_cast<int64_t>(blockIdx.z) * xs.b;
    T* yb = y + static_cast<int64_t>(blockIdx.z) * ys.b;

    float acc[RO][RP];
#pragma unroll
    for (int i = 0; i < RO; ++i) {
#pragma unroll
        for (int j = 0; j < RP; ++j) {
            acc[i][j] = 0.0f;
        }
    }

    for (int64_t k0 = 0; k0 < channels; k0 += TK) {
        // A is row-major: consecutive threads take consecutive k (coalesced).
        for (int i = tid; i < TO * TK; i += kThreads) {
            const int k = i % TK;
            const int o = i / TK;
            const int64_t go = o0 + o;
            const int64_t gk = k0 + k;
            a_tile[k][o] = (go < channels && gk < channels) ? weight[go * channels + gk] : 0.0f;
        }
        // x: consecutive threads walk whichever axis is contiguous (pixels for NCHW, channels for channels_last).
        const bool pixels_fastest = xs.p == 1;
        for (int i = tid; i < TK * TP; i += kThreads) {
            const int k = pixels_fastest ? i / TP : i % TK;
            const int p = pixels_fastest ? i % TP : i / TK;
            const int64_t gk = k0 + k;
            const int64_t gp = p0 + p;
            x_tile[k][p] = (gk < channels && gp < pixels) ? to_float(xb[gk * xs.c + gp * xs.p]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < TK; ++k) {
            float a[RO];
            float v[RP];
#pragma unroll
            for (int i = 0; i < RO; ++i) {
                a[i] = a_tile[k][to + i * kThreadsO];
            }
#pragma unroll
            for (int j = 0; j < RP; ++j) {
                v[j] = x_tile[k][tp + j * kThreadsP];
            }
#pragma unroll
            for (int i = 0; i < RO; ++i) {
#pragma unroll
                for (int j = 0; j < RP; ++j) {
                    acc[i][j] = fmaf(a[i], v[j], acc[i][j]);
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < RO; ++i) {
        const int64_t o = o0 + to + i * kThreadsO;
        if (o >= channels) {
            continue;
        }
        const float c = bias ? bias[o] : 0.0f;
#pragma unroll
        for (int j = 0; j < RP; ++j) {
            const int64_t p = p0 + tp + j * kThreadsP;
            if (p < pixels) {
                yb[o * ys.c + p * ys.p] = from_float<T>(acc[i][j] + c);
            }
        }
    }
}

constexpr int64_t kMaxGridYZ = 65535;

template <typename T, int TO, int TP, int TK, int RO, int RP>
Status launch(const InvConv1x1Params& p, cudaStream_t stream) {
    const int64_t tiles_p = (p.pixels + TP - 1) / TP;
    const int64_t tiles_o = (p.channels + TO - 1) / TO;
    if (tiles_p > 0x7fffffff || tiles_o > kMaxGridYZ) {
        return Status::kInvalidArgument;
    }
    const Strides xs{p.x_stride_b, p.x_stride_c, p.x_stride_p};
    const Strides ys{p.y_stride_b, p.y_stride_c, p.y_stride_p};
    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    // The grid's z extent is limited to 65535: larger batches go in chunks.
    for (int64_t b0 = 0; b0 < p.batch; b0 += kMaxGridYZ) {
        const int64_t nb = p.batch - b0 < kMaxGridYZ ? p.batch - b0 : kMaxGridYZ;
        const dim3 grid(static_cast<unsigned>(tiles_p), static_cast<unsigned>(tiles_o), static_cast<unsigned>(nb));
        inv_conv1x1_kernel<T, TO, TP, TK, RO, RP><<<grid, (TO / RO) * (TP / RP), 0, stream>>>(
            x + b0 * xs.b, static_cast<const float*>(p.weight), static_cast<const float*>(p.bias), y + b0 * ys.b,
            p.channels, p.pixels, xs, ys);
        AGINGRT_CUDA_CHECK(cudaGetLastError());
    }
    return Status::kOk;
}

// Tile shape by C (256 threads each): small C keeps the padded output rows few and the pixel tile long.
template <typename T>
Status dispatch_tile(const InvConv1x1Params& p, cudaStream_t stream) {
    if (p.channels <= 16) {
        return launch<T, 16, 128, 16, 2, 4>(p, stream);
    }
    if (p.channels <= 32) {
        return launch<T, 32, 128, 16, 4, 4>(p, stream);
    }
    return launch<T, 64, 64, 16, 4, 4>(p, stream);
}

}  // namespace

Status inv_conv1x1_cuda(const InvConv1x1Params& p, cudaStream_t stream) {
    if (p.batch < 0 || p.channels < 0 || p.pixels < 0) {
        return Status::kInvalidArgument;
    }
    if (p.batch * p.channels * p.pixels == 0) {
        return Status::kOk;
    }
    if (!p.x || !p.weight || !p.y) {
        return Status::kInvalidArgument;
    }
    switch (p.x_dtype) {
        case DType::kFloat32:
            return dispatch_tile<float>(p, stream);
        case DType::kFloat16:
            return dispatch_tile<__half>(p, stream);
        case DType::kBFloat16:
            return dispatch_tile<__nv_bfloat16>(p, stream);
        default:
            return Status::kUnsupported;
    }
}

}  // namespace agingrt
