// Stand-in for the header a CUDA build of torch generates; the CPU wheel lacks it. Used only by the
// CI compile check of the CUDA adapters (AGINGRT_CUDA_COMPILE_CHECK), never by a real build.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
