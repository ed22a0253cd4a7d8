// cudaStream_t without including cuda_runtime.h, so torch-free kernel headers can name a stream in
// translation units built without the CUDA toolkit. Identical to the typedef in driver_types.h.
#pragma once

struct CUstream_st;
using cudaStream_t = CUstream_st*;
