// Torch-free element types for kernel parameter structs.
#pragma once

#include <cstdint>

namespace agingrt {

enum class DType : int32_t {
    kFloat32 = 0,
    kFloat16 = 1,
    kBFloat16 = 2,
    kFloat64 = 3,  // CPU reference kernels only
};

}  // namespace agingrt
