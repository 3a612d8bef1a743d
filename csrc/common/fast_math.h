// Branch-free exp for x <= 0 that GCC auto-vectorises at the baseline ISA (SSE2 on x86-64), where
// std::exp stays a scalar libm call. Softmax only ever needs exp(z - max(z)) <= 1.
// Cephes expf polynomial: relative error about 1e-7, below float32 rounding of the softmax itself.
#pragma once

#include <cstdint>
#include <cstring>

namespace cbgan_ext {

inline float exp_nonpositive(float x) {
  const bool underflow = x < -87.0f;  // exp(-87) ~ 1.6e-38: below this return 0 (a denormal in libm)
  x = underflow ? -87.0f : x;
  // n = round(x / ln 2); x <= 0 so rounding is truncation of (0.5 - x·log2 e), negated.
  const int32_t n = -static_cast<int32_t>(0.5f - x * 1.44269504088896341f);
  const float fn = static_cast<float>(n);
  const float r = (x - fn * 0.693359375f) + fn * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflow ? 0.0f : y * scale;
}

}  // namespace cbgan_ext
