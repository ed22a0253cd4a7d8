// CPU transforms of winograd_conv3x3 (see csrc/kernels/winograd_conv3x3.h): per tile, blocks of 16 channels held
// in fixed-size lane arrays, so the compiler vectorises every step across channels (the NHWC rows are contiguous
// in c). Clones for AVX-512 / AVX2 / baseline without FMA contraction perform the same IEEE operations in the same
// order, so the output does not depend on the CPU (as group_norm_act's CPU kernel).
#include "kernels/winograd_conv3x3.h"

#include "kernels/cpu/cpu_clones.h"

namespace agingrt {
namespace {

constexpr int64_t kLanes = 16;  // channels per block: one AVX-512 / two AVX2 vectors of float

// out[k] = (B^T in)[k] for the 6 points in[k * in_stride + lane], lanes [0, kLanes).
// B^T rows: [4 0 -5 0 1 0], [0 -4 -4 1 1 0], [0 4 -4 -1 1 0], [0 -2 -1 2 1 0], [0 2 -1 -2 1 0], [0 4 0 -5 0 1].
inline void apply_bt(const float* in, int64_t in_stride, float* out, int64_t out_stride) {
    for (int64_t l = 0; l < kLanes; ++l) {
        const float d0 = in[l];
        const float d1 = in[in_stride + l];
        const float d2 = in[2 * in_stride + l];
        const float d3 = in[3 * in_stride + l];
        const float d4 = in[4 * in_stride + l];
        const float d5 = in[5 * in_stride + l];
        out[l] = (4.0f * d0 - 5.0f * d2) + d4;
        out[out_stride + l] = (d3 + d4) - 4.0f * (d1 + d2);
        out[2 * out_stride + l] = (d4 - d3) + 4.0f * (d1 - d2);
        out[3 * out_stride + l] = (d4 - d2) + 2.0f * (d3 - d1);
        out[4 * out_stride + l] = (d4 - d2) - 2.0f * (d3 - d1);
        out[5 * out_stride + l] = (4.0f * d1 - 5.0f * d3) + d5;
    }
}

// out[k] = (A^T in)[k], k < 4, for the 6 points in[k * in_stride + lane].
// A^T rows: [1 1 1 1 1 0], [0 1 -1 2 -2 0], [0 1 1 4 4 0], [0 1 -1 8 -8 1].
inline void apply_at(const float* in, int64_t in_stride, float* out, int64_t out_stride) {
    for (int64_t l = 0; l < kLanes; ++l) {
        const float m0 = in[l];
        const float m1 = in[in_stride + l];
        const float m2 = in[2 * in_stride + l];
        const float m3 = in[3 * in_stride + l];
        const float m4 = in[4 * in_stride + l];
        const float m5 = in[5 * in_stride + l];
        const float sum12 = m1 + m2;
        const float dif12 = m1 - m2;
        const float sum34 = m3 + m4;
        const float dif34 = m3 - m4;
        out[l] = (m0 + sum12) + sum34;
        out[out_stride + l] = dif12 + 2.0f * dif34;
        out[2 * out_stride + l] = sum12 + 4.0f * sum34;
        out[3 * out_stride + l] = (dif12 + 8.0f * dif34) + m5;
    }
}

// dst[0, kLanes) = src[0, lanes), zero beyond; a fixed-size loop (vectorised) for full blocks.
inline void load_lanes(float* dst, const float* src, int64_t lanes) {
    if (lanes == kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) {
            dst[l] = src[l];
        }
        return;
    }
    for (int64_t l = 0; l < kLanes; ++l) {
        dst[l] = l < lanes ? src[l] : 0.0f;
    }
}

inline void store_lanes(float* dst, const float* src, int64_t lanes) {
    if (lanes == kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) {
            dst[l] = src[l];
        }
        return;
    }
    for (int64_t l = 0; l < lanes; ++l) {
        dst[l] = src[l];
    }
}

struct TileOrigin {
    int64_t n;    // image
    int64_t row;  // first output row 4 ty
    int64_t col;  // first output column 4 tx
};

TileOrigin tile_origin(int64_t tile, int64_t height, int64_t width) {
    const int64_t tiles_w = (width + 3) / 4;
    const int64_t per_image = winograd_tiles_per_image(height, width);
    const int64_t n = tile / per_image;
    const int64_t rest = tile - n * per_image;
    return {n, 4 * (rest / tiles_w), 4 * (rest % tiles_w)};
}

AGINGRT_CPU_CLONES
void input_transform(const WinogradInputParams& p, int64_t begin, int64_t end) {
    const int64_t C = p.channels;
    alignas(64) float d[36 * kLanes];   // the 6x6 patch, point 6 i + j
    alignas(64) float t1[36 * kLanes];  // B^T d, point 6 a + j
    alignas(64) float v[36 * kLanes];   // B^T d B, point 6 a + b
    for (int64_t t = begin; t < end; ++t) {
        const TileOrigin o = tile_origin(p.first_tile + t, p.height, p.width);
        for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
            const int64_t lanes = C - c0 < kLanes ? C - c0 : kLanes;
            for (int64_t i = 0; i < 6; ++i) {
                const int64_t row = o.row - 1 + i;
                for (int64_t j = 0; j < 6; ++j) {
                    const int64_t col = o.col - 1 + j;
                    float* dst = d + (6 * i + j) * kLanes;
                    if (row >= 0 && row < p.height && col >= 0 && col < p.width) {
                        load_lanes(dst, p.x + ((o.n * p.height + row) * p.width + col) * C + c0, lanes);
                    } else {
                        for (int64_t l = 0; l < kLanes; ++l) {
                            dst[l] = 0.0f;
                        }
                    }
                }
            }
            for (int64_t j = 0; j < 6; ++j) {  // down each column j: over i
                apply_bt(d + j * kLanes, 6 * kLanes, t1 + j * kLanes, 6 * kLanes);
            }
            for (int64_t a = 0; a < 6; ++a) {  // along each row a: over j
                apply_bt(t1 + 6 * a * kLanes, kLanes, v + 6 * a * kLanes, kLanes);
            }
            for (int64_t q = 0; q < 36; ++q) {
                store_lanes(p.v + q * p.point_stride + t * C + c0, v + q * kLanes, lanes);
            }
        }
    }
}

AGINGRT_CPU_CLONES
void output_transform(const WinogradOutputParams& p, int64_t begin, int64_t end) {
    const int64_t O = p.channels;
    alignas(64) float m[36 * kLanes];   // M, point 6 a + b
    alignas(64) float t1[24 * kLanes];  // A^T M, point 6 r + b
    alignas(64) float y[16 * kLanes];   // A^T M A, pixel 4 r + s
    for (int64_t t = begin; t < end; ++t) {
        const TileOrigin o = tile_origin(p.first_tile + t, p.height, p.width);
        for (int64_t o0 = 0; o0 < O; o0 += kLanes) {
            const int64_t lanes = O - o0 < kLanes ? O - o0 : kLanes;
            for (int64_t q = 0; q < 36; ++q) {
                load_lanes(m + q * kLanes, p.m + q * p.point_stride + t * O + o0, lanes);
            }
            for (int64_t b = 0; b < 6; ++b) {  // down each column b: over a
                apply_at(m + b * kLanes, 6 * kLanes, t1 + b * kLanes, 6 * kLanes);
            }
            for (int64_t r = 0; r < 4; ++r) {  // along each row r: over b
                apply_at(t1 + 6 * r * kLanes, kLanes, y + 4 * r * kLanes, kLanes);
            }
            if (p.bias) {
                alignas(64) float b[kLanes];
                load_lanes(b, p.bias + o0, lanes);
                for (int64_t q = 0; q < 16; ++q) {
                    for (int64_t l = 0; l < kLanes; ++l) {
                        y[q * kLanes + l] += b[l];
                    }
                }
            }
            for (int64_t r = 0; r < 4 && o.row + r < p.height; ++r) {
                for (int64_t s = 0; s < 4 && o.col + s < p.width; ++s) {
                    float* dst = p.y + ((o.n * p.height + o.row + r) * p.width + o.col + s) * O + o0;
                    store_lanes(dst, y + (4 * r + s) * kLanes, lanes);
                }
            }
        }
    }
}

// Checks a work range of either transform (both params structs share these fields), then runs it.
template <typename Params, typename Transform>
Status run_range(const Params& p, const void* in, const void* out, int64_t begin, int64_t end, Transform transform) {
    const int64_t tiles = p.batch * winograd_tiles_per_image(p.height, p.width);
    const bool valid = p.batch >= 0 && p.height >= 0 && p.width >= 0 && p.channels > 0 && begin >= 0 && begin <= end &&
                       p.first_tile >= 0 && p.first_tile + end <= tiles && p.point_stride >= end * p.channels;
    if (!valid) {
        return Status::kInvalidArgument;
    }
    if (begin == end) {
        return Status::kOk;
    }
    if (!in || !out) {
        return Status::kInvalidArgument;
    }
    transform(p, begin, end);
    return Status::kOk;
}

}  // namespace

Status winograd_input_transform_cpu(const WinogradInputParams& p, int64_t begin, int64_t end) {
    return run_range(p, p.x, p.v, begin, end, input_transform);
}

Status winograd_output_transform_cpu(const WinogradOutputParams& p, int64_t begin, int64_t end) {
    return run_range(p, p.m, p.y, begin, end, output_transform);
}

}  // namespace agingrt
