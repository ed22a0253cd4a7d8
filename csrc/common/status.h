// Torch-free status codes and checks shared by every kernel in csrc/kernels.
// Kernels return a Status instead of throwing, so the same code can sit behind a torch op, a TensorRT
// plugin's enqueue() (which must not throw) or a plain test.
#pragma once

#include <cstdint>

namespace agingrt {

enum class Status : int32_t {
    kOk = 0,
    kInvalidArgument = 1,  // a size, stride or parameter the kernel cannot handle
    kUnsupported = 2,      // valid, but not implemented for this dtype / architecture
    kCudaError = 3,        // a CUDA runtime call or launch failed; see last_cuda_error()
};

inline const char* status_name(Status s) {
    switch (s) {
        case Status::kOk:
            return "ok";
        case Status::kInvalidArgument:
            return "invalid argument";
        case Status::kUnsupported:
            return "unsupported";
        case Status::kCudaError:
            return "CUDA error";
    }
    return "unknown status";
}

// The cudaError_t (as an int, 0 = none) behind the last kCudaError a kernel launcher returned on this thread;
// launchers clear it with cudaGetLastError(), so this is the only place the adapters can still read it from.
inline int32_t& last_cuda_error() {
    thread_local int32_t code = 0;
    return code;
}

}  // namespace agingrt

// Return early from a kernel launcher on any CUDA error (only usable in CUDA translation units).
#define AGINGRT_CUDA_CHECK(expr)                                               \
    do {                                                                       \
        cudaError_t agingrt_err_ = (expr);                                     \
        if (agingrt_err_ != cudaSuccess) {                                     \
            ::agingrt::last_cuda_error() = static_cast<int32_t>(agingrt_err_); \
            return ::agingrt::Status::kCudaError;                              \
        }                                                                      \
    } while (0)
