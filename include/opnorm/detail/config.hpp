#pragma once
// Portability macros shared by every opnorm header.
//
// CCCL 3 (CUDA 13) no longer defines __host__/__device__ for host compilers,
// so kernels that must compile under both g++ and nvcc are annotated with
// OPNORM_HD instead.
#if defined(__CUDACC__)
#define OPNORM_HD __host__ __device__
#else
#define OPNORM_HD
#endif

#include <cstddef>
#include <cstdint>

namespace opnorm {
using index_t = std::int64_t;
}  // namespace opnorm
