// Small device helpers shared by the CUDA kernel files.
#pragma once

namespace cbgan_ext {

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace cbgan_ext
