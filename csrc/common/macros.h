// Shared by the CPU (.cpp) and CUDA (.cu) backends: the same inline math compiles for both, so the CPU
// tests exercise the arithmetic the GPU runs.
#pragma once

#ifdef __CUDACC__
#define HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HOST_DEVICE inline
#endif

#include <ATen/ATen.h>

namespace cbgan_ext {

inline void check_same_device(const char* op, const at::Tensor& a, const char* an, const at::Tensor& b,
                              const char* bn) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", an, " and ", bn, " must be on the same device, got ",
              a.device(), " and ", b.device());
}

inline void check_floating(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

}  // namespace cbgan_ext
