// Launch helpers shared by the CUDA kernels.
#pragma once

#include <cstdint>

namespace agingrt {

// Blocks for a grid-stride loop over n items; capped so huge tensors loop instead of overflowing the grid.
inline int grid_for(int64_t n, int threads) {
    const int64_t blocks = (n + threads - 1) / threads;
    return static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

// True when a pointer allows 16-byte (float4) vector loads and stores.
inline bool aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

}  // namespace agingrt
