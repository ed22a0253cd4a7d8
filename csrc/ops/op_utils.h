// Helpers shared by the torch adapters in csrc/ops: validation messages, dtype mapping, kernel status.
// Adapters validate everything; kernels trust their inputs (docs/conventions.md item 3).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <string>

#include "common/dtype.h"
#include "common/status.h"

#ifdef AGINGRT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace agingrt {

// "ddim_step: eps must have the same shape as x_t [2, 3, 8, 8], got [2, 3, 8]"
#define AGINGRT_CHECK_ARG(cond, op, ...) TORCH_CHECK_VALUE(cond, op, ": ", __VA_ARGS__)

inline std::string shape_str(const at::Tensor& t) {
    return c10::str(t.sizes());
}

inline DType to_kernel_dtype(at::ScalarType t) {
    switch (t) {
        case at::kFloat:
            return DType::kFloat32;
        case at::kHalf:
            return DType::kFloat16;
        case at::kBFloat16:
            return DType::kBFloat16;
        case at::kDouble:
            return DType::kFloat64;
        default:
            TORCH_CHECK_TYPE(false, "pyagingrt kernels take float32, float16, bfloat16 or float64 tensors, got ", t);
    }
    return DType::kFloat32;  // unreachable
}

inline void check_status(Status s, const char* op, const char* where) {
#ifdef AGINGRT_WITH_CUDA
    if (s == Status::kCudaError) {  // name the CUDA error the launcher saw (e.g. an invalid launch configuration)
        const auto err = static_cast<cudaError_t>(last_cuda_error());
        TORCH_CHECK(false, op, ": ", where, " kernel failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
                    ")");
    }
#endif
    TORCH_CHECK(s == Status::kOk, op, ": ", where, " kernel failed: ", status_name(s));
}

// Runs chunk(begin, end) -> Status over ranges of [0, n) on torch's intra-op pool (at::parallel_for: at least
// grain items per task, torch.set_num_threads governs it) and raises, naming the op, if any range failed.
template <typename Chunk>
void parallel_cpu_kernel(int64_t n, int64_t grain, const char* op, const Chunk& chunk) {
    std::atomic<int32_t> status{static_cast<int32_t>(Status::kOk)};
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
        const Status s = chunk(begin, end);
        if (s != Status::kOk) {
            status.store(static_cast<int32_t>(s));
        }
    });
    check_status(static_cast<Status>(status.load()), op, "CPU");
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name,
                              const char* op) {
    AGINGRT_CHECK_ARG(a.device() == b.device(), op, b_name, " must be on the same device as ", a_name, " (", a.device(),
                      "), got ", b.device());
}

inline void check_floating(const at::Tensor& t, const char* name, const char* op) {
    AGINGRT_CHECK_ARG(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf ||
                          t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kDouble,
                      op, name, " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
}

}  // namespace agingrt
