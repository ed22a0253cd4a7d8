// CUDA kernels around the modulated convolution (see csrc/kernels/modulated_conv2d.h). The convolution itself
// runs in cuDNN through ATen; these are its prologue (x * s), epilogue (y * d) and the demodulation reduction.
// Memory-bound: one read and one write per element, 16-byte vector accesses when layout and alignment allow.
// Half types are only loaded, converted to float, multiplied in float and rounded once on store; the
// conversion intrinsics of cuda_fp16.h / cuda_bf16.h work on every architecture (no bf16 arithmetic).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/modulated_conv2d.h"

#include "common/cuda_convert.cuh"
#include "common/cuda_launch.cuh"

namespace agingrt {
namespace {

// x and y may alias (the in-place y * d epilogue), so neither is __restrict__.
// Index of the scale for element i: NCHW -> i / HW (the (b, c) row); NHWC -> b * C + i % C.
template <bool kChannelsLast>
__device__ __forceinline__ int64_t scale_index(int64_t i, int64_t hw, int64_t c) {
    if (kChannelsLast) {
        return (i / (hw * c)) * c + i % c;
    }
    return i / hw;
}

template <typename T, bool kChannelsLast>
__global__ void scale_channels_kernel(const T* x, const float* __restrict__ scale, T* y, int64_t n, int64_t hw,
                                      int64_t c) {
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = from_float<T>(to_float(x[i]) * scale[scale_index<kChannelsLast>(i, hw, c)]);
    }
}

// 16 bytes per access (4 floats or 8 halves). The caller guarantees a vector never crosses a (b, c) row in
// NCHW (HW % V == 0) and never crosses a pixel in NHWC (C % V == 0), and that the pointers are 16-byte aligned.
template <typename T, bool kChannelsLast>
__global__ void scale_channels_vec_kernel(const uint4* x, const float* __restrict__ scale, uint4* y, int64_t n_vec,
                                          int64_t hw, int64_t c) {
    constexpr int kV = 16 / sizeof(T);
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < n_vec; v += stride) {
        uint4 raw = x[v];
        T* e = reinterpret_cast<T*>(&raw);
        const int64_t s0 = scale_index<kChannelsLast>(v * kV, hw, c);
#pragma unroll
        for (int k = 0; k < kV; ++k) {
            const float s = kChannelsLast ? scale[s0 + k] : scale[s0];
            e[k] = from_float<T>(to_float(e[k]) * s);
        }
        y[v] = raw;
    }
}

template <typename T, bool kChannelsLast>
Status launch_scale(const ScaleChannelsParams& p, cudaStream_t stream) {
    constexpr int kThreads = 256;
    constexpr int64_t kV = 16 / sizeof(T);
    const int64_t n = p.batch * p.channels * p.spatial;
    const T* x = static_cast<const T*>(p.x);
    const float* s = static_cast<const float*>(p.scale);
    T* y = static_cast<T*>(p.y);
    const bool rows_ok = kChannelsLast ? (p.channels % kV == 0) : (p.spatial % kV == 0);
    if (rows_ok && aligned16(x) && aligned16(y)) {
        const int64_t n_vec = n / kV;
        scale_channels_vec_kernel<T, kChannelsLast><<<grid_for(n_vec, kThreads), kThreads, 0, stream>>>(
            reinterpret_cast<const uint4*>(x), s, reinterpret_cast<uint4*>(y), n_vec, p.spatial, p.channels);
    } else {
        scale_channels_kernel<T, kChannelsLast>
            <<<grid_for(n, kThreads), kThreads, 0, stream>>>(x, s, y, n, p.spatial, p.channels);
    }
    AGINGRT_CUDA_CHECK(cudaGetLastError());
    return Status::kOk;
}

template <typename T>
Status launch_scale_layout(const ScaleChannelsParams& p, cudaStream_t stream) {
    return p.channels_last ? launch_scale<T, true>(p, stream) : launch_scale<T, false>(p, stream);
}

// One warp per (b, o): lanes stride over i (coalesced reads of Q's row o), then a shuffle tree in a fixed
// order, so the result is deterministic.
__global__ void demodulation_kernel(const float* __restrict__ s, const float* __restrict__ q, float* __restrict__ d,
                                    int64_t batch, int64_t in_ch, int64_t out_ch, float eps) {
    const int64_t warps_per_block = blockDim.x / 32;
    const int lane = threadIdx.x % 32;
    const int64_t total = batch * out_ch;
    for (int64_t w = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / 32; w < total;
         w += static_cast<int64_t>(gridDim.x) * warps_per_block) {
        const int64_t b = w / out_ch;
        const int64_t o = w % out_ch;
        const float* sb = s + b * in_ch;
        const float* qo = q + o * in_ch;
        float acc = 0.0f;
        for (int64_t i = lane; i < in_ch; i += 32) {
            const float si = sb[i];
            acc = fmaf(si * si, qo[i], acc);
        }
#pragma unroll
        for (int off = 16; off > 0; off /= 2) {
            acc += __shfl_xor_sync(0xffffffffu, acc, off);
        }
        if (lane == 0) {
            d[w] = rsqrtf(acc + eps);
        }
    }
}

}  // namespace

Status scale_channels_cuda(const ScaleChannelsParams& p, cudaStream_t stream) {
    if (p.batch < 0 || p.channels < 0 || p.spatial < 0) {
        return Status::kInvalidArgument;
    }
    if (p.scale_dtype != DType::kFloat32) {
        return Status::kUnsupported;
    }
    if (p.batch * p.channels * p.spatial == 0) {
        return Status::kOk;
    }
    switch (p.dtype) {
        case DType::kFloat32:
            return launch_scale_layout<float>(p, stream);
        case DType::kFloat16:
            return launch_scale_layout<__half>(p, stream);
        case DType::kBFloat16:
            return launch_scale_layout<__nv_bfloat16>(p, stream);
        default:
            return Status::kUnsupported;
    }
}

Status demodulation_coefficients_cuda(const DemodulationParams& p, cudaStream_t stream) {
    if (p.batch < 0 || p.in_channels < 0 || p.out_channels < 0 || !(p.eps > 0.0)) {
        return Status::kInvalidArgument;
    }
    if (p.dtype != DType::kFloat32) {
        return Status::kUnsupported;
    }
    const int64_t total = p.batch * p.out_channels;
    if (total == 0) {
        return Status::kOk;
    }
    constexpr int kThreads = 256;  // 8 warps, one (b, o) each
    demodulation_kernel<<<grid_for(total * 32, kThreads), kThreads, 0, stream>>>(
        static_cast<const float*>(p.styles), static_cast<const float*>(p.q), static_cast<float*>(p.d), p.batch,
        p.in_channels, p.out_channels, static_cast<float>(p.eps));
    AGINGRT_CUDA_CHECK(cudaGetLastError());
    return Status::kOk;
}

}  // namespace agingrt
