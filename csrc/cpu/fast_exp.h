// exp for the softmax kernels: a Cephes-style polynomial in float (about 1 ulp, inlined and
// branch-free, so the loops that call it vectorise); double keeps std::exp. Arguments below
// -87 (and -inf, masked edges) give exactly 0; NaN gives NaN. The kernels call it on scores
// minus their maximum (<= 0); above 88 it is not exp (no overflow to inf).
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
  // 2^n from the bits of n + 1.5 * 2^23 (its low mantissa bits hold n): no float-to-int
  // conversion, which would be undefined for a NaN argument
  const float shifted = n + 12582912.0f;
  uint32_t ni;  // unsigned: wraps (defined) on a NaN's bits
  std::memcpy(&ni, &shifted, sizeof(float));
  const uint32_t bits = (ni - 0x4B400000u + 127u) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return x < -87.0f ? 0.0f : y * scale;
}

}  // namespace graphattn
