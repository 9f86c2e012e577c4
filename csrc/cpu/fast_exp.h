// exp for the softmax kernels: a Cephes-style polynomial in float (about 1 ulp, inlined and
// branch-free, so the loops that call it vectorise); double keeps std::exp. Arguments below
// -87 (and -inf, masked edges) give exactly 0.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace graphattn {

template <typename T>
inline T fast_exp(T x) {
  return std::exp(x);
}

template <>
inline float fast_exp<float>(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float n = std::nearbyint(xc * 1.44269504088896341f);
  const float f = xc - n * 0.693359375f + n * 2.12194440e-4f;
  const float z = f * f;
  const float y = ((((((1.9875691500e-4f * f + 1.3981999507e-3f) * f + 8.3334519073e-3f) * f +
                      4.1665795894e-2f) * f + 1.6666665459e-1f) * f + 5.0000001201e-1f) * z) +
                  f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return x < -87.0f ? 0.0f : y * scale;
}

}  // namespace graphattn
