// CUDA ddim_step (see csrc/kernels/ddim_step.h). Memory-bound: one read of x_t and eps, one write.
// Vectorised by 4 when the pointers allow it; x_t and the arithmetic stay float32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/ddim_step.h"

#include "common/cuda_convert.cuh"
#include "common/cuda_launch.cuh"

namespace agingrt {
namespace {

struct DdimCoefs {
    float a, b, c, e;
    bool clip;
};

__device__ __forceinline__ float ddim_update(float x, float eps, const DdimCoefs& k) {
    const float ax = k.a * x;
    float x0 = ax - k.b * eps;  // Eq. (3)
    float eps_r = eps;
    if (k.clip) {
        x0 = fminf(fmaxf(x0, -1.0f), 1.0f);
        eps_r = (ax - x0) / k.b;  // re-derived from the clipped x0, as DiffAE does
    }
    return k.c * x0 + k.e * eps_r;  // Eq. (1)
}

template <typename EpsT>
__global__ void ddim_step_kernel(const float* __restrict__ x_t, const EpsT* __restrict__ eps,
                                 float* __restrict__ x_prev, int64_t n, DdimCoefs k) {
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        x_prev[i] = ddim_update(x_t[i], to_float(eps[i]), k);
    }
}

// float32 eps, 16-byte aligned pointers: float4 loads and stores.
__global__ void ddim_step_kernel_vec4(const float4* __restrict__ x_t, const float4* __restrict__ eps,
                                      float4* __restrict__ x_prev, int64_t n4, DdimCoefs k) {
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n4; i += stride) {
        const float4 x = x_t[i];
        const float4 e = eps[i];
        x_prev[i] = make_float4(ddim_update(x.x, e.x, k), ddim_update(x.y, e.y, k), ddim_update(x.z, e.z, k),
                                ddim_update(x.w, e.w, k));
    }
}

}  // namespace

Status ddim_step_cuda(const DdimStepParams& p, cudaStream_t stream) {
    if (p.n < 0 || !(p.coef_b > 0.0)) {
        return Status::kInvalidArgument;
    }
    if (p.x_dtype != DType::kFloat32) {
        return Status::kUnsupported;
    }
    if (p.n == 0) {
        return Status::kOk;
    }
    const DdimCoefs k{static_cast<float>(p.coef_a), static_cast<float>(p.coef_b), static_cast<float>(p.coef_c),
                      static_cast<float>(p.coef_e), p.clip};
    constexpr int kThreads = 256;
    const float* x = static_cast<const float*>(p.x_t);
    float* out = static_cast<float*>(p.x_prev);
    switch (p.eps_dtype) {
        case DType::kFloat32: {
            const float* e = static_cast<const float*>(p.eps);
            const int64_t n4 = (aligned16(x) && aligned16(e) && aligned16(out)) ? p.n / 4 : 0;
            if (n4 > 0) {
                ddim_step_kernel_vec4<<<grid_for(n4, kThreads), kThreads, 0, stream>>>(
                    reinterpret_cast<const float4*>(x), reinterpret_cast<const float4*>(e),
                    reinterpret_cast<float4*>(out), n4, k);
                AGINGRT_CUDA_CHECK(cudaGetLastError());
            }
            const int64_t rest = p.n - 4 * n4;
            if (rest > 0) {
                ddim_step_kernel<float>
                    <<<grid_for(rest, kThreads), kThreads, 0, stream>>>(x + 4 * n4, e + 4 * n4, out + 4 * n4, rest, k);
                AGINGRT_CUDA_CHECK(cudaGetLastError());
            }
            return Status::kOk;
        }
        case DType::kFloat16:
            ddim_step_kernel<__half>
                <<<grid_for(p.n, kThreads), kThreads, 0, stream>>>(x, static_cast<const __half*>(p.eps), out, p.n, k);
            break;
        case DType::kBFloat16:
            ddim_step_kernel<__nv_bfloat16><<<grid_for(p.n, kThreads), kThreads, 0, stream>>>(
                x, static_cast<const __nv_bfloat16*>(p.eps), out, p.n, k);
            break;
        default:
            return Status::kUnsupported;
    }
    AGINGRT_CUDA_CHECK(cudaGetLastError());
    return Status::kOk;
}

}  // namespace agingrt
