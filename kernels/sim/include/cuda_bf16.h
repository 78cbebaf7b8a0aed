// cuda_bf16.h for the CPU layer: kernels/cu/common.cuh includes <cuda_bf16.h>;
// with kernels/sim/include first on the include path that is this file, which
// brings in the CPU layer's definitions of the CUDA names (cuda_sim.h).
#pragma once
#include "cuda_sim.h"
