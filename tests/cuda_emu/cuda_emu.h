// A CPU emulator for the CUDA kernels in csrc/kernels/cuda (tests only). tests/cuda_emu/build.py rewrites each .cu
// (kernel<<<grid, block, smem, stream>>>(args) -> agingrt_emu::launch(grid, block, smem, stream)(kernel, args);
// extern __shared__ arrays -> the block's dynamic shared buffer) and compiles it with the host compiler.
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread; a fiber runs until it reaches
// __syncthreads (or a warp shuffle) or returns, and a barrier opens once every live thread of the block (of the
// warp) waits at it; exited threads count as arrived, as on the GPU. Threads run in index order between barriers,
// so a missing __syncthreads makes a thread read shared memory that a later thread has not written yet (or has
// already overwritten): wrong results, not a lucky race. Shared arrays are function statics (one block at a time);
// the dynamic shared buffer is filled with NaN bytes before every block, so reading an unwritten element poisons
// the result, and a write past the requested size fails the launch. Launch configurations are checked as the driver
// does (threads <= 1024, grid y/z <= 65535, dynamic shared memory <= 48 KB without opt-in); a bad one, or a barrier
// that can never open (some threads wait at __syncthreads while others wait at a warp shuffle), makes
// cudaGetLastError() return an error.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <driver_types.h>  // cudaError_t, cudaStream_t
#include <ucontext.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace agingrt_emu {

enum class FiberState { kReady, kBlockWait, kWarpWait, kDone };

struct Fiber {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;
    FiberState state = FiberState::kReady;
};

inline constexpr size_t kStackBytes = 256 * 1024;
inline constexpr size_t kDynamicSharedLimit = 48 * 1024;
inline constexpr size_t kSharedGuard = 4096;  // bytes after the requested size that must stay untouched
alignas(16) inline unsigned char dynamic_shared[kDynamicSharedLimit + kSharedGuard];
inline uint3 thread_idx;
inline uint3 block_idx;
inline dim3 block_dim;
inline dim3 grid_dim;
inline cudaError_t last_error = cudaSuccess;
inline ucontext_t scheduler;
inline std::vector<Fiber> fibers;
inline size_t current = 0;
inline std::function<void()> body;
inline double warp_slots[1024];  // __shfl_xor_sync exchange, one slot per thread of the block

inline void fiber_entry() {
    body();
    fibers[current].state = FiberState::kDone;  // uc_link returns to the scheduler
}

inline void wait_at(FiberState state) {
    Fiber& f = fibers[current];
    f.state = state;
    swapcontext(&f.ctx, &scheduler);
}

inline void set_thread_index(size_t t) {
    thread_idx = make_uint3(t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (size_t(block_dim.x) * block_dim.y));
}

// True when the block wrote nothing past the dynamic shared memory it asked for.
inline bool shared_guard_intact(size_t smem) {
    for (size_t i = smem; i < smem + kSharedGuard; ++i) {
        if (dynamic_shared[i] != 0xff) {
            return false;
        }
    }
    return true;
}

// Runs one block to completion; false if its threads deadlock on mismatched barriers.
inline bool run_block(size_t threads) {
    std::memset(dynamic_shared, 0xff, sizeof(dynamic_shared));  // NaN floats and doubles
    fibers.resize(threads);
    for (Fiber& f : fibers) {
        if (!f.stack) {
            f.stack.reset(new char[kStackBytes]);
        }
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.get();
        f.ctx.uc_stack.ss_size = kStackBytes;
        f.ctx.uc_link = &scheduler;
        makecontext(&f.ctx, fiber_entry, 0);
        f.state = FiberState::kReady;
    }
    for (;;) {
        for (current = 0; current < threads; ++current) {
            if (fibers[current].state == FiberState::kReady) {
                set_thread_index(current);
                swapcontext(&scheduler, &fibers[current].ctx);
            }
        }
        bool released = false;
        for (size_t w = 0; w < threads; w += 32) {  // a warp whose live lanes all wait at a shuffle goes on
            const size_t end = w + 32 < threads ? w + 32 : threads;
            bool all = true, any = false;
            for (size_t t = w; t < end; ++t) {
                all = all && (fibers[t].state == FiberState::kWarpWait || fibers[t].state == FiberState::kDone);
                any = any || fibers[t].state == FiberState::kWarpWait;
            }
            if (all && any) {
                for (size_t t = w; t < end; ++t) {
                    if (fibers[t].state == FiberState::kWarpWait) {
                        fibers[t].state = FiberState::kReady;
                    }
                }
                released = true;
            }
        }
        if (released) {
            continue;
        }
        bool all = true, any = false;
        for (const Fiber& f : fibers) {
            all = all && (f.state == FiberState::kBlockWait || f.state == FiberState::kDone);
            any = any || f.state == FiberState::kBlockWait;
        }
        if (!any && all) {
            return true;  // every thread returned
        }
        if (!all) {
            return false;  // some wait at __syncthreads, others at a shuffle: never opens
        }
        for (Fiber& f : fibers) {
            if (f.state == FiberState::kBlockWait) {
                f.state = FiberState::kReady;
            }
        }
    }
}

struct Launch {
    dim3 grid, block;
    size_t smem;

    template <typename... P, typename... A>
    void operator()(void (*kernel)(P...), A&&... args) const {
        const uint64_t threads = uint64_t(block.x) * block.y * block.z;
        const bool ok = threads >= 1 && threads <= 1024 && block.z <= 64 && grid.x >= 1 && grid.y >= 1 && grid.z >= 1 &&
                        grid.x <= 0x7fffffffu && grid.y <= 65535 && grid.z <= 65535 && smem <= kDynamicSharedLimit;
        if (!ok) {
            last_error = cudaErrorInvalidConfiguration;
            return;
        }
        const std::tuple<P...> params(static_cast<P>(args)...);  // converted as a real launch converts them
        body = [&] { std::apply(kernel, params); };
        block_dim = block;
        grid_dim = grid;
        for (unsigned bz = 0; bz < grid.z; ++bz) {
            for (unsigned by = 0; by < grid.y; ++by) {
                for (unsigned bx = 0; bx < grid.x; ++bx) {
                    block_idx = make_uint3(bx, by, bz);
                    if (!run_block(threads) || !shared_guard_intact(smem)) {
                        last_error = cudaErrorLaunchFailure;
                        return;
                    }
                }
            }
        }
    }
};

inline Launch launch(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
    return Launch{grid, block, smem};
}

}  // namespace agingrt_emu

#define threadIdx (::agingrt_emu::thread_idx)
#define blockIdx (::agingrt_emu::block_idx)
#define blockDim (::agingrt_emu::block_dim)
#define gridDim (::agingrt_emu::grid_dim)

inline void __syncthreads() {
    agingrt_emu::wait_at(agingrt_emu::FiberState::kBlockWait);
}

inline cudaError_t cudaGetLastError() {
    const cudaError_t e = agingrt_emu::last_error;
    agingrt_emu::last_error = cudaSuccess;
    return e;
}

template <typename T>
inline T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask) {
    const size_t t = agingrt_emu::current;
    agingrt_emu::warp_slots[t] = static_cast<double>(v);
    agingrt_emu::wait_at(agingrt_emu::FiberState::kWarpWait);
    const T r = static_cast<T>(agingrt_emu::warp_slots[t ^ static_cast<size_t>(lane_mask)]);
    agingrt_emu::wait_at(agingrt_emu::FiberState::kWarpWait);  // every lane has read before the slots are reused
    return r;
}

template <typename T>
inline T __shfl_down_sync(unsigned /*mask*/, T v, unsigned delta) {
    const size_t t = agingrt_emu::current;
    agingrt_emu::warp_slots[t] = static_cast<double>(v);
    agingrt_emu::wait_at(agingrt_emu::FiberState::kWarpWait);
    const size_t lane = t % 32;  // a lane past the warp's end reads its own value, as on the GPU
    const T r = lane + delta < 32 ? static_cast<T>(agingrt_emu::warp_slots[t + delta]) : v;
    agingrt_emu::wait_at(agingrt_emu::FiberState::kWarpWait);
    return r;
}

inline float __fdividef(float a, float b) {
    return a / b;
}

inline float rsqrtf(float x) {
    return 1.0f / std::sqrt(x);
}
