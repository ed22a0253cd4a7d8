// CUDA masked_gaussian_blur (see csrc/kernels/masked_gaussian_blur.h for the maths and the flags).
//
// One fused kernel: a block owns one (b, c) plane tile of TILE x TILE output pixels. It reads F once into shared
// memory with a (K - 1) halo (zero outside the image), runs the horizontal pass of both blurs over the halo rows
// into two shared buffers, then each thread does the vertical passes and the blend for its pixels and writes
// the output once. Memory traffic is one read of F, one read of M per channel (cached in L2) and one write;
// the halo re-read is (TILE + K - 1)^2 / TILE^2 of F from L2 (about 3.8x at TILE = 32, K = 31). Taps and
// accumulation are float32; float16 / bfloat16 only round on load and store.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/masked_gaussian_blur.h"

#include "common/cuda_convert.cuh"

namespace agingrt {
namespace {

constexpr int kThreads = 256;

struct PlaneGeometry {
    int64_t channels;
    int height;
    int width;
    int kernel_size;
    int tiles_x;
    int tiles_per_plane;
};

// Shared floats for one block: the halo tile, two horizontal-pass buffers, two tap rows.
__host__ __device__ inline int shared_floats(int tile, int k) {
    const int side = tile + k - 1;
    return side * side + 2 * side * tile + 2 * k;
}

template <typename T, typename MaskT, int TILE>
__global__ void __launch_bounds__(kThreads)
    masked_gaussian_blur_kernel(const T* __restrict__ features, const MaskT* __restrict__ mask,
                                const float* __restrict__ taps, const int32_t* __restrict__ flags, T* __restrict__ out,
                                PlaneGeometry g) {
    constexpr int kRowStep = kThreads / TILE;  // blockDim = (TILE, kRowStep)
    extern __shared__ float smem[];
    const int k = g.kernel_size;
    const int r = (k - 1) / 2;
    const int side = TILE + k - 1;
    float* tile = smem;                 // [side][side]  F with halo
    float* h_m = tile + side * side;    // [side][TILE]  horizontal pass with k_m
    float* h_g = h_m + side * TILE;     // [side][TILE]  horizontal pass with k_g
    float* taps_m = h_g + side * TILE;  // [K]
    float* taps_g = taps_m + k;         // [K]

    const int64_t plane_index = blockIdx.x / g.tiles_per_plane;  // b * C + c
    const int tile_index = static_cast<int>(blockIdx.x % g.tiles_per_plane);
    const int64_t b = plane_index / g.channels;
    const int y0 = (tile_index / g.tiles_x) * TILE;
    const int x0 = (tile_index % g.tiles_x) * TILE;
    const int64_t plane = static_cast<int64_t>(g.height) * g.width;
    const T* f = features + plane_index * plane;
    T* o = out + plane_index * plane;
    const MaskT* m = mask + b * plane;
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int tid = ty * TILE + tx;

    const int32_t fl = flags[b];  // uniform per block
    const bool m_identity = fl & kBlurMIdentity;
    const bool g_identity = fl & kBlurGIdentity;
    const bool same = fl & kBlurSame;
    if (same && g_identity) {  // sigma_m = sigma_g = 0: a bitwise copy
        for (int yy = ty; yy < TILE; yy += kRowStep) {
            const int gy = y0 + yy;
            const int gx = x0 + tx;
            if (gy < g.height && gx < g.width) {
                o[static_cast<int64_t>(gy) * g.width + gx] = f[static_cast<int64_t>(gy) * g.width + gx];
            }
        }
        return;
    }
    const bool blur_m = !same && !m_identity;

    for (int i = tid; i < k; i += kThreads) {
        taps_m[i] = taps[b * 2 * k + i];
        taps_g[i] = taps[b * 2 * k + k + i];
    }
    for (int i = tid; i < side * side; i += kThreads) {
        const int gy = y0 - r + i / side;
        const int gx = x0 - r + i % side;
        const bool inside = gy >= 0 && gy < g.height && gx >= 0 && gx < g.width;
        tile[i] = inside ? to_float(f[static_cast<int64_t>(gy) * g.width + gx]) : 0.0f;  // zero padding
    }
    __syncthreads();

    // Horizontal passes over every halo row, for the TILE output columns.
    for (int i = tid; i < side * TILE; i += kThreads) {
        const float* row = tile + (i / TILE) * side + (i % TILE);
        if (!g_identity) {
            float acc = 0.0f;
            for (int j = 0; j < k; ++j) {
                acc = fmaf(taps_g[j], row[j], acc);
            }
            h_g[i] = acc;
        }
        if (blur_m) {
            float acc = 0.0f;
            for (int j = 0; j < k; ++j) {
                acc = fmaf(taps_m[j], row[j], acc);
            }
            h_m[i] = acc;
        }
    }
    __syncthreads();

    // Vertical passes and the blend, one output pixel per (thread, row step).
    for (int yy = ty; yy < TILE; yy += kRowStep) {
        const int gy = y0 + yy;
        const int gx = x0 + tx;
        if (gy >= g.height || gx >= g.width) {
            continue;
        }
        const float center = tile[(yy + r) * side + tx + r];
        float blurred_g = center;
        if (!g_identity) {
            float acc = 0.0f;
            for (int i = 0; i < k; ++i) {
                acc = fmaf(taps_g[i], h_g[(yy + i) * TILE + tx], acc);
            }
            blurred_g = acc;
        }
        const int64_t idx = static_cast<int64_t>(gy) * g.width + gx;
        if (same) {
            o[idx] = from_float<T>(blurred_g);
            continue;
        }
        float blurred_m = center;
        if (blur_m) {
            float acc = 0.0f;
            for (int i = 0; i < k; ++i) {
                acc = fmaf(taps_m[i], h_m[(yy + i) * TILE + tx], acc);
            }
            blurred_m = acc;
        }
        const float mv = to_float(m[idx]);
        o[idx] = from_float<T>(mv * blurred_m + (1.0f - mv) * blurred_g);  // Eq. (2)
    }
}

template <typename T, typename MaskT, int TILE>
Status launch(const MaskedGaussianBlurParams& p, cudaStream_t stream) {
    const int64_t tiles_x = (p.width + TILE - 1) / TILE;
    const int64_t tiles_y = (p.height + TILE - 1) / TILE;
    const int64_t blocks = tiles_x * tiles_y * p.batch * p.channels;
    if (blocks > 0x7fffffff || p.height > 0x7fffffff || p.width > 0x7fffffff) {
        return Status::kInvalidArgument;
    }
    PlaneGeometry g{};
    g.channels = p.channels;
    g.height = static_cast<int>(p.height);
    g.width = static_cast<int>(p.width);
    g.kernel_size = p.kernel_size;
    g.tiles_x = static_cast<int>(tiles_x);
    g.tiles_per_plane = static_cast<int>(tiles_x * tiles_y);
    // At most 34.8 KB (TILE 16, K 63): under the 48 KB every architecture gives without opting in.
    const size_t shared_bytes = sizeof(float) * static_cast<size_t>(shared_floats(TILE, p.kernel_size));
    masked_gaussian_blur_kernel<T, MaskT, TILE>
        <<<static_cast<unsigned>(blocks), dim3(TILE, kThreads / TILE), shared_bytes, stream>>>(
            static_cast<const T*>(p.features), static_cast<const MaskT*>(p.mask), static_cast<const float*>(p.taps),
            p.flags, static_cast<T*>(p.out), g);
    AGINGRT_CUDA_CHECK(cudaGetLastError());
    return Status::kOk;
}

// TILE 32 up to K = 31 (31.5 KB of shared memory); a 16 x 16 tile for longer kernels keeps the halo in 48 KB.
template <typename T, typename MaskT>
Status dispatch_tile(const MaskedGaussianBlurParams& p, cudaStream_t stream) {
    return p.kernel_size <= 31 ? launch<T, MaskT, 32>(p, stream) : launch<T, MaskT, 16>(p, stream);
}

template <typename T>
Status dispatch_mask(const MaskedGaussianBlurParams& p, cudaStream_t stream) {
    if (p.mask_dtype == p.dtype) {
        return dispatch_tile<T, T>(p, stream);
    }
    if (p.mask_dtype == DType::kFloat32) {
        return dispatch_tile<T, float>(p, stream);
    }
    return Status::kUnsupported;
}

}  // namespace

Status masked_gaussian_blur_cuda(const MaskedGaussianBlurParams& p, cudaStream_t stream) {
    if (p.batch < 0 || p.channels < 0 || p.height < 0 || p.width < 0 || p.kernel_size < 1 || p.kernel_size % 2 == 0 ||
        p.kernel_size > kMaskedBlurCudaMaxKernel) {
        return Status::kInvalidArgument;
    }
    if (p.batch * p.channels * p.height * p.width == 0) {
        return Status::kOk;
    }
    if (!p.features || !p.mask || !p.taps || !p.flags || !p.out) {
        return Status::kInvalidArgument;
    }
    switch (p.dtype) {
        case DType::kFloat32:
            return dispatch_mask<float>(p, stream);
        case DType::kFloat16:
            return dispatch_mask<__half>(p, stream);
        case DType::kBFloat16:
            return dispatch_mask<__nv_bfloat16>(p, stream);
        default:
            return Status::kUnsupported;
    }
}

}  // namespace agingrt
