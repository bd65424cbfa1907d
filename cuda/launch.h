// What differs between the GPU build (nvcc) and the CPU emulation of the same kernels: the CUDA
// headers, the launch syntax and the dynamic shared memory declaration. cuda/emulated.cpp
// includes cuda/emulation.h first, which defines FEATGS_EMULATION and its own versions of the
// three macros below; nvcc sees these. The kernel sources use only the macros, never an #ifdef.
#pragma once

#ifndef FEATGS_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// FEATGS_LAUNCH(grid, block, shmem, stream, kernel)(args...) is kernel<<<grid, block, shmem, stream>>>(args...)
// (the kernel last, so that a template's commas pass through the macro).
#define FEATGS_LAUNCH(grid, block, shmem, stream, ...) __VA_ARGS__<<<grid, block, shmem, stream>>>
// The block's dynamic shared memory as an array `name` of `type`.
#define FEATGS_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
// Whether the kernels run on the CPU (the emulation) or on a CUDA device.
#define FEATGS_ON_HOST 0
#endif
