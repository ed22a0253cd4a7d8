// Stands in for the CUDA runtime header when tests/cuda_emu compiles a .cu file on the host.
#pragma once
#include "cuda_emu.h"
