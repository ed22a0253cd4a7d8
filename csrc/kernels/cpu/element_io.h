// Typed element loads and stores for the CPU reference kernels: any DType in, the accumulation type out.
// float16 / bfloat16 go through common/half.h (round to nearest even on store).
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/half.h"

namespace agingrt {

template <typename Acc>
inline Acc load_as(const void* base, DType dtype, int64_t i) {
    switch (dtype) {
        case DType::kFloat16:
            return static_cast<Acc>(half_to_float(static_cast<const uint16_t*>(base)[i]));
        case DType::kBFloat16:
            return static_cast<Acc>(bf16_to_float(static_cast<const uint16_t*>(base)[i]));
        case DType::kFloat32:
            return static_cast<Acc>(static_cast<const float*>(base)[i]);
        case DType::kFloat64:
            return static_cast<Acc>(static_cast<const double*>(base)[i]);
    }
    return Acc(0);
}

template <typename Acc>
inline void store_as(void* base, DType dtype, int64_t i, Acc v) {
    switch (dtype) {
        case DType::kFloat16:
            static_cast<uint16_t*>(base)[i] = float_to_half(static_cast<float>(v));
            return;
        case DType::kBFloat16:
            static_cast<uint16_t*>(base)[i] = float_to_bf16(static_cast<float>(v));
            return;
        case DType::kFloat32:
            static_cast<float*>(base)[i] = static_cast<float>(v);
            return;
        case DType::kFloat64:
            static_cast<double*>(base)[i] = static_cast<double>(v);
            return;
    }
}

// Copy one element without a round trip through Acc, so an identity path is bitwise exact for every dtype.
inline void copy_element(const void* src, void* dst, DType dtype, int64_t i) {
    switch (dtype) {
        case DType::kFloat16:
        case DType::kBFloat16:
            static_cast<uint16_t*>(dst)[i] = static_cast<const uint16_t*>(src)[i];
            return;
        case DType::kFloat32:
            static_cast<float*>(dst)[i] = static_cast<const float*>(src)[i];
            return;
        case DType::kFloat64:
            static_cast<double*>(dst)[i] = static_cast<const double*>(src)[i];
            return;
    }
}

}  // namespace agingrt
