// CUDA guided_relu_backward and the Eq. (1) mask reduction (see csrc/kernels/guided_backprop_mask.h).
//
// The mask runs as five small launches on [B, H, W] float planes (224^2 per image for CUSP):
//   channel_mean_abs  G -> A (workspace plane 0)            one thread per pixel, channels summed in order
//   image_std_apply   A /= std(A) + 1e-15, in place         one block per image
//   blur_1d           A -> rows (plane 1) -> B~ (mask)       one thread per pixel, taps in shared memory
//   image_std_apply   M = min(B~ / (2 std(B~) + 1e-15), 1)  one block per image
// The per-image statistics are block reductions in float64 with a fixed tree (no atomics), so repeated
// calls give identical bits. Half inputs are converted to float on load (no half arithmetic).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/guided_backprop_mask.h"

#include "common/cuda_convert.cuh"
#include "common/cuda_launch.cuh"

namespace agingrt {
namespace {

// ---- guided ReLU backward ---------------------------------------------------------------------------
// grad_in may alias grad_out, so g is not __restrict__.

template <typename T>
__device__ __forceinline__ T guided(T g, T a) {
    return (to_float(a) > 0.0f && to_float(g) > 0.0f) ? g : T(0.0f);
}

template <typename T>
__global__ void guided_relu_kernel(const T* g, const T* __restrict__ a, T* out, int64_t n) {
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = guided(g[i], a[i]);
    }
}

// 16-byte accesses (4 floats or 8 halves) for aligned pointers; the tail goes to guided_relu_kernel.
template <typename T>
__global__ void guided_relu_vec_kernel(const uint4* g, const uint4* __restrict__ a, uint4* out, int64_t n_vec) {
    constexpr int kV = 16 / sizeof(T);
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < n_vec; v += stride) {
        uint4 gr = g[v];
        const uint4 ar = a[v];
        T* ge = reinterpret_cast<T*>(&gr);
        const T* ae = reinterpret_cast<const T*>(&ar);
#pragma unroll
        for (int k = 0; k < kV; ++k) {
            ge[k] = guided(ge[k], ae[k]);
        }
        out[v] = gr;
    }
}

template <typename T>
Status launch_guided_relu(const GuidedReluBackwardParams& p, cudaStream_t stream) {
    constexpr int kThreads = 256;
    constexpr int64_t kV = 16 / sizeof(T);
    const T* g = static_cast<const T*>(p.grad_out);
    const T* a = static_cast<const T*>(p.act);
    T* out = static_cast<T*>(p.grad_in);
    const int64_t n_vec = (aligned16(g) && aligned16(a) && aligned16(out)) ? p.n / kV : 0;
    if (n_vec > 0) {
        guided_relu_vec_kernel<T><<<grid_for(n_vec, kThreads), kThreads, 0, stream>>>(
            reinterpret_cast<const uint4*>(g), reinterpret_cast<const uint4*>(a), reinterpret_cast<uint4*>(out), n_vec);
        AGINGRT_CUDA_CHECK(cudaGetLastError());
    }
    const int64_t done = n_vec * kV;
    if (p.n > done) {
        guided_relu_kernel<T>
            <<<grid_for(p.n - done, kThreads), kThreads, 0, stream>>>(g + done, a + done, out + done, p.n - done);
        AGINGRT_CUDA_CHECK(cudaGetLastError());
    }
    return Status::kOk;
}

// ---- Eq. (1) reduction -------------------------------------------------------------------------------

template <typename T>
__global__ void channel_mean_abs_kernel(const T* __restrict__ g, float* __restrict__ a, int64_t batch, int64_t channels,
                                        int64_t h, int64_t w, int64_t sb, int64_t sc, int64_t sh, int64_t sw) {
    const int64_t hw = h * w;
    const int64_t n = batch * hw;
    const float inv_c = 1.0f / static_cast<float>(channels);
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t b = i / hw;
        const int64_t y = (i % hw) / w;
        const int64_t x = i % w;
        const T* src = g + b * sb + y * sh + x * sw;
        float acc = 0.0f;
        for (int64_t c = 0; c < channels; ++c) {
            acc += fabsf(to_float(src[c * sc]));
        }
        a[i] = acc * inv_c;
    }
}

constexpr int kStatThreads = 512;

// Sum of v over the block, in a fixed tree order; every thread gets the result.
__device__ double block_sum(double v, double* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = kStatThreads / 2; s > 0; s /= 2) {
        if (threadIdx.x < s) {
            shared[threadIdx.x] += shared[threadIdx.x + s];
        }
        __syncthreads();
    }
    const double total = shared[0];
    __syncthreads();  // shared[] is reused by the next call
    return total;
}

// One block per image: s = unbiased std of v (two passes, float64), then
//   clip == false: v = v / (s + 1e-15)               (step 2)
//   clip == true:  v = min(v / (2 s + 1e-15), 1)     (steps 4-5)
__global__ void image_std_apply_kernel(float* data, int64_t hw, bool clip) {
    __shared__ double shared[kStatThreads];
    float* v = data + static_cast<int64_t>(blockIdx.x) * hw;
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < hw; i += kStatThreads) {
        sum += static_cast<double>(v[i]);
    }
    const double mean = block_sum(sum, shared) / static_cast<double>(hw);
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < hw; i += kStatThreads) {
        const double d = static_cast<double>(v[i]) - mean;
        ss += d * d;
    }
    const double sd = sqrt(block_sum(ss, shared) / static_cast<double>(hw - 1));
    const float denom = static_cast<float>(clip ? 2.0 * sd + 1e-15 : sd + 1e-15);
    for (int64_t i = threadIdx.x; i < hw; i += kStatThreads) {
        const float q = v[i] / denom;
        v[i] = clip ? fminf(q, 1.0f) : q;
    }
}

// Zero-padded 1-D blur along W (along_rows) or H of [B, H, W] planes; taps (float64, already trimmed to the
// reach that can touch the image) are rounded to float once into shared memory.
__global__ void blur_1d_kernel(const float* __restrict__ in, float* __restrict__ out, int64_t batch, int64_t h,
                               int64_t w, const double* __restrict__ taps, int taps_n, bool along_rows) {
    extern __shared__ float s_taps[];
    for (int k = threadIdx.x; k < taps_n; k += blockDim.x) {
        s_taps[k] = static_cast<float>(taps[k]);
    }
    __syncthreads();
    const int64_t r = (taps_n - 1) / 2;
    const int64_t hw = h * w;
    const int64_t n = batch * hw;
    const int64_t len = along_rows ? w : h;
    const int64_t step = along_rows ? 1 : w;
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t pos = along_rows ? i % w : (i % hw) / w;
        const int64_t k0 = pos < r ? r - pos : 0;
        const int64_t k1 = len - 1 - pos + r < 2 * r ? len - 1 - pos + r : 2 * r;
        const float* src = in + i + (k0 - r) * step;
        float acc = 0.0f;
        for (int64_t k = k0; k <= k1; ++k, src += step) {
            acc = fmaf(s_taps[k], *src, acc);
        }
        out[i] = acc;
    }
}

template <typename T>
Status launch_channel_mean_abs(const GuidedBackpropMaskParams& p, float* a, cudaStream_t stream) {
    constexpr int kThreads = 256;
    channel_mean_abs_kernel<T><<<grid_for(p.batch * p.height * p.width, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(p.grad), a, p.batch, p.channels, p.height, p.width, p.stride_b, p.stride_c, p.stride_h,
        p.stride_w);
    AGINGRT_CUDA_CHECK(cudaGetLastError());
    return Status::kOk;
}

}  // namespace

Status guided_relu_backward_cuda(const GuidedReluBackwardParams& p, cudaStream_t stream) {
    if (p.n < 0) {
        return Status::kInvalidArgument;
    }
    if (p.n == 0) {
        return Status::kOk;
    }
    switch (p.dtype) {
        case DType::kFloat32:
            return launch_guided_relu<float>(p, stream);
        case DType::kFloat16:
            return launch_guided_relu<__half>(p, stream);
        case DType::kBFloat16:
            return launch_guided_relu<__nv_bfloat16>(p, stream);
        default:
            return Status::kUnsupported;
    }
}

Status guided_backprop_mask_cuda(const GuidedBackpropMaskParams& p, cudaStream_t stream) {
    if (p.batch < 0 || p.channels < 1 || p.height < 1 || p.width < 1 || p.height * p.width < 2 || p.kernel_size < 1 ||
        p.kernel_size % 2 == 0 || !p.taps) {
        return Status::kInvalidArgument;
    }
    if (p.mask_dtype != DType::kFloat32) {
        return Status::kUnsupported;
    }
    if (p.batch == 0) {
        return Status::kOk;
    }
    if (!p.grad || !p.mask || !p.workspace) {
        return Status::kInvalidArgument;
    }
    const int64_t hw = p.height * p.width;
    float* a = static_cast<float*>(p.workspace);  // [B, H, W]
    float* rows = a + p.batch * hw;               // [B, H, W]
    float* mask = static_cast<float*>(p.mask);    // [B, 1, H, W]

    Status st = Status::kOk;
    switch (p.grad_dtype) {
        case DType::kFloat32:
            st = launch_channel_mean_abs<float>(p, a, stream);
            break;
        case DType::kFloat16:
            st = launch_channel_mean_abs<__half>(p, a, stream);
            break;
        case DType::kBFloat16:
            st = launch_channel_mean_abs<__nv_bfloat16>(p, a, stream);
            break;
        default:
            return Status::kUnsupported;
    }
    if (st != Status::kOk) {
        return st;
    }
    image_std_apply_kernel<<<static_cast<unsigned>(p.batch), kStatThreads, 0, stream>>>(a, hw, false);
    AGINGRT_CUDA_CHECK(cudaGetLastError());

    // Taps farther than (extent - 1) from the centre never touch the image: trim them (keeps shared memory
    // small even for the as-written CUSP kernel of 1731 taps).
    const int64_t r = (p.kernel_size - 1) / 2;
    const int64_t reach = (p.height > p.width ? p.height : p.width) - 1;
    const int64_t r_eff = r < reach ? r : reach;
    const int taps_n = static_cast<int>(2 * r_eff + 1);
    const double* taps = p.taps + (r - r_eff);
    const size_t smem = static_cast<size_t>(taps_n) * sizeof(float);
    if (smem > 48 * 1024) {
        return Status::kUnsupported;  // images wider than ~6000 pixels
    }
    constexpr int kThreads = 256;
    const int grid = grid_for(p.batch * hw, kThreads);
    blur_1d_kernel<<<grid, kThreads, smem, stream>>>(a, rows, p.batch, p.height, p.width, taps, taps_n, true);
    AGINGRT_CUDA_CHECK(cudaGetLastError());
    blur_1d_kernel<<<grid, kThreads, smem, stream>>>(rows, mask, p.batch, p.height, p.width, taps, taps_n, false);
    AGINGRT_CUDA_CHECK(cudaGetLastError());

    image_std_apply_kernel<<<static_cast<unsigned>(p.batch), kStatThreads, 0, stream>>>(mask, hw, true);
    AGINGRT_CUDA_CHECK(cudaGetLastError());
    return Status::kOk;
}

}  // namespace agingrt
