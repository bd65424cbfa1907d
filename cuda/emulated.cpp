// The CPU build of cuda/: the CUDA execution model of cuda/emulation.h, then the very kernel
// sources nvcc compiles. Built with the host compiler (C++20) into the `cuda-emulated` backend,
// for tests, not for speed: every CUDA thread is a fiber, barriers and warp collectives are
// real, so the kernels' indexing, synchronisation and reductions run as written.
#include "emulation.h"

#include "topk_raster.cu"

// Checks of the emulation itself (featgs_emulation_selftest, called by the tests via ctypes).
#include "emulation_selftest.cu"
