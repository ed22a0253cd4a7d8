// CUDA group_norm_act (see csrc/kernels/group_norm_act.h for the maths and the three launches).
// Memory-bound: x is read twice (statistics, apply) and y written once; statistics are fp32 Welford partials
// over fixed chunks merged with Chan's formula in a fixed order, so results do not change from run to run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/group_norm_act.h"

#include "common/cuda_convert.cuh"
#include "common/cuda_launch.cuh"

namespace agingrt {
namespace {

constexpr int kThreads = 256;           // 1-D kernels
constexpr int64_t kNchwChunk = 8192;    // NCHW statistics: a group's elements per block (32 per thread)
constexpr int kTileC = 32;              // NHWC statistics: adjacent channels per block (one warp row, coalesced)
constexpr int kLanesP = 8;              // NHWC statistics: pixel lanes per block (kTileC x kLanesP = 256 threads)
constexpr int64_t kNhwcChunk = 256;     // NHWC statistics: pixels per block, before the cap below
constexpr int64_t kMaxPartials = 4096;  // NHWC: cap on partials per group, so the merge stays short
constexpr int64_t kMaxGridY = 65535;    // gridDim.y / gridDim.z limit

// One Welford state. Counts are exact in float up to 2^24 elements per group (a 4096 x 4096 x 1 group).
struct Welford {
    float n;
    float mean;
    float m2;  // sum of squared deviations from mean
};

// The fast division rounds only the increment d / n (2 ulp of it, not of the mean), and keeps the statistics pass
// memory-bound: IEEE division costs ~10 instructions per element, about the budget of a 3 TB/s fp16 read.
__device__ __forceinline__ void welford_add(Welford& w, float v) {
    w.n += 1.0f;
    const float d = v - w.mean;
    w.mean += __fdividef(d, w.n);
    w.m2 += d * (v - w.mean);
}

// Chan, Golub & LeVeque's pairwise update; a and b may be empty.
__device__ __forceinline__ Welford welford_merge(const Welford& a, const Welford& b) {
    if (b.n == 0.0f) {
        return a;
    }
    if (a.n == 0.0f) {
        return b;
    }
    const float n = a.n + b.n;
    const float wb = b.n / n;
    const float delta = b.mean - a.mean;
    return {n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.n * wb};
}

__device__ __forceinline__ Welford shfl_down(const Welford& w, int offset) {
    return {__shfl_down_sync(0xffffffffu, w.n, offset), __shfl_down_sync(0xffffffffu, w.mean, offset),
            __shfl_down_sync(0xffffffffu, w.m2, offset)};
}

// Merge the states of a 1-D block of kThreads threads in a fixed tree order; the result is valid in thread 0.
__device__ Welford block_merge(Welford w) {
    __shared__ Welford warps[kThreads / 32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    for (int offset = 16; offset > 0; offset >>= 1) {
        w = welford_merge(w, shfl_down(w, offset));
    }
    if (lane == 0) {
        warps[warp] = w;
    }
    __syncthreads();
    if (warp == 0) {
        w = lane < kThreads / 32 ? warps[lane] : Welford{0.0f, 0.0f, 0.0f};
        for (int offset = 16; offset > 0; offset >>= 1) {
            w = welford_merge(w, shfl_down(w, offset));
        }
    }
    return w;
}

__device__ __forceinline__ float activate(float v, GroupNormActivation act) {
    if (act == GroupNormActivation::kRelu) {
        return fmaxf(v, 0.0f);
    }
    if (act == GroupNormActivation::kSilu) {
        return v / (1.0f + expf(-v));
    }
    return v;
}

// V elements loaded or stored as one aligned access (V * sizeof(T) = 16 bytes for the vector path).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
    T v[V];
};

template <typename T>
constexpr int vec_width() {
    return static_cast<int>(16 / sizeof(T));
}

// --- 1. partial statistics ----------------------------------------------------------------------------------------
// NCHW: group (n, g) is the contiguous range [ng * L, (ng + 1) * L) with L = (C / G) * P. Block (ng, k) reduces
// chunk k of it. V > 1 needs L and the chunk to be multiples of V and x 16-byte aligned.
template <typename T, int V>
__global__ void stats_nchw_kernel(const T* __restrict__ x, Welford* __restrict__ partials, int64_t group_len,
                                  int64_t chunk) {
    const int64_t ng = blockIdx.x;
    const int64_t k = blockIdx.y;
    const int64_t begin = k * chunk;
    const int64_t end = begin + chunk < group_len ? begin + chunk : group_len;
    const T* g = x + ng * group_len;
    Welford w{0.0f, 0.0f, 0.0f};
    for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * V; i < end; i += static_cast<int64_t>(kThreads) * V) {
        const Pack<T, V> pack = *reinterpret_cast<const Pack<T, V>*>(g + i);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            welford_add(w, to_float(pack.v[j]));
        }
    }
    w = block_merge(w);
    if (threadIdx.x == 0) {
        partials[ng * gridDim.y + k] = w;
    }
}

// NHWC: block (k, tile, n) holds per-channel states for channels tile * 32 + threadIdx.x over pixel chunk k, each
// warp row reading 32 adjacent channels of one pixel. Partials are per (n, c, k), so group (n, g)'s are the
// contiguous run [((n * C) + g * C/G) * chunks, ... + (C/G) * chunks).
template <typename T>
__global__ void stats_nhwc_kernel(const T* __restrict__ x, Welford* __restrict__ partials, int64_t channels,
                                  int64_t pixels, int64_t chunk) {
    __shared__ Welford lanes[kLanesP][kTileC];
    const int64_t k = blockIdx.x;
    const int64_t c = static_cast<int64_t>(blockIdx.y) * kTileC + threadIdx.x;
    const int64_t n = blockIdx.z;
    const int64_t begin = k * chunk;
    const int64_t end = begin + chunk < pixels ? begin + chunk : pixels;
    Welford w{0.0f, 0.0f, 0.0f};
    if (c < channels) {
        const T* base = x + n * pixels * channels + c;
        for (int64_t q = begin + threadIdx.y; q < end; q += kLanesP) {
            welford_add(w, to_float(base[q * channels]));
        }
    }
    lanes[threadIdx.y][threadIdx.x] = w;
    __syncthreads();
    if (threadIdx.y == 0 && c < channels) {
        for (int r = 1; r < kLanesP; ++r) {
            w = welford_merge(w, lanes[r][threadIdx.x]);
        }
        partials[(n * channels + c) * gridDim.x + k] = w;
    }
}

// --- 2. merge per (n, g) and fold the affine ------------------------------------------------------------------
// coef[n, c] = (mu, scale * rstd, shift, 0), read by the apply pass as one 16-byte load.
__global__ void finalize_kernel(const Welford* __restrict__ partials, int64_t per_group,
                                const float* __restrict__ scale, int64_t scale_stride_b,
                                const float* __restrict__ shift, int64_t shift_stride_b, int64_t channels,
                                int64_t groups, float eps, float4* __restrict__ coef) {
    __shared__ float stats[2];
    const int64_t ng = blockIdx.x;
    const int64_t n = ng / groups;
    const int64_t g = ng % groups;
    Welford w{0.0f, 0.0f, 0.0f};
    for (int64_t i = threadIdx.x; i < per_group; i += kThreads) {
        w = welford_merge(w, partials[ng * per_group + i]);
    }
    w = block_merge(w);
    if (threadIdx.x == 0) {
        const float var = fmaxf(w.m2 / w.n, 0.0f);  // biased, as nn.GroupNorm
        stats[0] = w.mean;
        stats[1] = 1.0f / sqrtf(var + eps);
    }
    __syncthreads();
    const int64_t cg = channels / groups;
    for (int64_t j = threadIdx.x; j < cg; j += kThreads) {
        const int64_t c = g * cg + j;
        coef[n * channels + c] =
            make_float4(stats[0], scale[n * scale_stride_b + c] * stats[1], shift[n * shift_stride_b + c], 0.0f);
    }
}

// --- 3. apply: y = act((x - mu) * a + b) ------------------------------------------------------------------------
// x and y may alias (no __restrict__): each element is read before it is written, by the same thread.
// NCHW vectors stay inside one (n, c) row (P % V == 0); NHWC vectors inside one pixel (C % V == 0).
template <typename T, int V, bool kNhwc>
__global__ void apply_kernel(const T* x, T* y, const float4* __restrict__ coef, int64_t n_vec, int64_t channels,
                             int64_t pixels, GroupNormActivation act) {
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_vec; i += stride) {
        const int64_t e = i * V;
        const Pack<T, V> in = *reinterpret_cast<const Pack<T, V>*>(x + e);
        Pack<T, V> out;
        if (kNhwc) {
            const int64_t row = (e / (pixels * channels)) * channels + e % channels;  // n * C + c
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const float4 k = coef[row + j];
                out.v[j] = from_float<T>(activate(fmaf(to_float(in.v[j]) - k.x, k.y, k.z), act));
            }
        } else {
            const float4 k = coef[e / pixels];
#pragma unroll
            for (int j = 0; j < V; ++j) {
                out.v[j] = from_float<T>(activate(fmaf(to_float(in.v[j]) - k.x, k.y, k.z), act));
            }
        }
        *reinterpret_cast<Pack<T, V>*>(y + e) = out;
    }
}

// --- launch plan (a function of the sizes only, so the workspace size is known before the launch) ---------------
struct Plan {
    int64_t chunk;     // NCHW: elements per statistics block; NHWC: pixels per statistics block
    int64_t chunks;    // statistics blocks per group (NCHW) or per channel (NHWC)
    int64_t partials;  // Welford partials in the workspace
};

int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

Plan make_plan(const GroupNormActParams& p) {
    const int64_t cg = p.channels / p.groups;
    Plan plan{};
    if (p.layout == GroupNormLayout::kNCHW) {
        const int64_t len = cg * p.pixels;
        plan.chunk = kNchwChunk;
        if (ceil_div(len, plan.chunk) > kMaxGridY) {  // huge groups: longer chunks (a multiple of any vector width)
            plan.chunk = ceil_div(ceil_div(len, kMaxGridY), 8) * 8;
        }
        plan.chunks = ceil_div(len, plan.chunk);
        plan.partials = p.batch * p.groups * plan.chunks;
    } else {
        int64_t chunks = ceil_div(p.pixels, kNhwcChunk);
        const int64_t cap = kMaxPartials / cg > 1 ? kMaxPartials / cg : 1;
        chunks = chunks < cap ? chunks : cap;
        plan.chunk = ceil_div(p.pixels, chunks);
        plan.chunks = ceil_div(p.pixels, plan.chunk);
        plan.partials = p.batch * p.channels * plan.chunks;
    }
    return plan;
}

size_t coef_bytes(const GroupNormActParams& p) {
    return static_cast<size_t>(p.batch * p.channels) * sizeof(float4);
}

bool valid(const GroupNormActParams& p) {
    return p.batch >= 0 && p.channels >= 0 && p.pixels >= 0 && p.groups > 0 && p.channels % p.groups == 0 &&
           p.eps >= 0.0 && p.batch <= kMaxGridY && ceil_div(p.channels, kTileC) <= kMaxGridY;
}

template <typename T>
Status launch(const GroupNormActParams& p, void* workspace, cudaStream_t stream) {
    const Plan plan = make_plan(p);
    float4* coef = static_cast<float4*>(workspace);
    Welford* partials = reinterpret_cast<Welford*>(static_cast<char*>(workspace) + coef_bytes(p));
    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    constexpr int V = vec_width<T>();
    const bool nhwc = p.layout == GroupNormLayout::kNHWC;
    const int64_t cg = p.channels / p.groups;

    if (!nhwc) {
        const int64_t len = cg * p.pixels;
        const dim3 grid(static_cast<unsigned>(p.batch * p.groups), static_cast<unsigned>(plan.chunks));
        if (aligned16(x) && len % V == 0 && plan.chunk % V == 0) {
            stats_nchw_kernel<T, V><<<grid, kThreads, 0, stream>>>(x, partials, len, plan.chunk);
        } else {
            stats_nchw_kernel<T, 1><<<grid, kThreads, 0, stream>>>(x, partials, len, plan.chunk);
        }
    } else {
        const dim3 grid(static_cast<unsigned>(plan.chunks), static_cast<unsigned>(ceil_div(p.channels, kTileC)),
                        static_cast<unsigned>(p.batch));
        stats_nhwc_kernel<T><<<grid, dim3(kTileC, kLanesP), 0, stream>>>(x, partials, p.channels, p.pixels, plan.chunk);
    }
    AGINGRT_CUDA_CHECK(cudaGetLastError());

    const int64_t per_group = nhwc ? cg * plan.chunks : plan.chunks;
    finalize_kernel<<<static_cast<unsigned>(p.batch * p.groups), kThreads, 0, stream>>>(
        partials, per_group, static_cast<const float*>(p.scale), p.scale_stride_b, static_cast<const float*>(p.shift),
        p.shift_stride_b, p.channels, p.groups, static_cast<float>(p.eps), coef);
    AGINGRT_CUDA_CHECK(cudaGetLastError());

    const int64_t numel = p.batch * p.channels * p.pixels;
    const bool vec = aligned16(x) && aligned16(y) && (nhwc ? p.channels % V == 0 : p.pixels % V == 0);
    if (vec) {
        const int64_t n_vec = numel / V;
        if (nhwc) {
            apply_kernel<T, V, true>
                <<<grid_for(n_vec, kThreads), kThreads, 0, stream>>>(x, y, coef, n_vec, p.channels, p.pixels, p.act);
        } else {
            apply_kernel<T, V, false>
                <<<grid_for(n_vec, kThreads), kThreads, 0, stream>>>(x, y, coef, n_vec, p.channels, p.pixels, p.act);
        }
    } else if (nhwc) {
        apply_kernel<T, 1, true>
            <<<grid_for(numel, kThreads), kThreads, 0, stream>>>(x, y, coef, numel, p.channels, p.pixels, p.act);
    } else {
        apply_kernel<T, 1, false>
            <<<grid_for(numel, kThreads), kThreads, 0, stream>>>(x, y, coef, numel, p.channels, p.pixels, p.act);
    }
    AGINGRT_CUDA_CHECK(cudaGetLastError());
    return Status::kOk;
}

}  // namespace

size_t group_norm_act_cuda_workspace_bytes(const GroupNormActParams& p) {
    if (!valid(p) || p.batch * p.channels * p.pixels == 0) {
        return 0;
    }
    return coef_bytes(p) + static_cast<size_t>(make_plan(p).partials) * sizeof(Welford);
}

Status group_norm_act_cuda(const GroupNormActParams& p, void* workspace, cudaStream_t stream) {
    if (!valid(p)) {
        return Status::kInvalidArgument;
    }
    if (p.coef_dtype != DType::kFloat32) {
        return Status::kUnsupported;
    }
    if (p.batch * p.channels * p.pixels == 0) {
        return Status::kOk;
    }
    if (!p.x || !p.y || !p.scale || !p.shift || !workspace || !aligned16(workspace)) {
        return Status::kInvalidArgument;
    }
    switch (p.x_dtype) {
        case DType::kFloat32:
            return launch<float>(p, workspace, stream);
        case DType::kFloat16:
            return launch<__half>(p, workspace, stream);
        case DType::kBFloat16:
            return launch<__nv_bfloat16>(p, workspace, stream);
        default:
            return Status::kUnsupported;
    }
}

}  // namespace agingrt
