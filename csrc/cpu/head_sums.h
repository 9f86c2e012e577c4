// Per-head reductions of an edge's rows for every head at once:
//   raw[h] = sum_{d < D} f(a[h * D + d], b[h * D + d])
// with f = a * b (dot scores, dO . v) or f = att * LeakyReLU(a + b) ('v2' scores).
//
// The kernels need 2-3 such reductions per edge and head; reduced one head at a time by
// `omp simd reduction`, each ended in a horizontal sum that the compiler emitted as a chain of
// 16 dependent scalar additions, which cost more than the gathers of the rows. Float rows
// with a compile-time D that is a multiple of 16 are reduced here with 16-lane partial sums
// per head, then, four heads at a time, one transposing tree of additions (hsum4; any other
// head count: each head by two vector folds and three scalar additions, hsum). They are
// written with GCC / Clang vector extensions, so they compile for any target (AVX-512
// registers under -march=native on a machine that has them, narrower ones otherwise); hsum4
// needs __builtin_shufflevector (Clang, GCC >= 12), other compilers (or
// -DGRAPHATTN_NO_SHUFFLEVECTOR) take hsum for every head. Everything else takes the plain
// per-head loop. The orders of summation differ in rounding only; forward and backward use
// the same one, so the probabilities a backward recomputes are those of its forward.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../attention_shapes.h"

#if (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)) && \
    !defined(GRAPHATTN_NO_SHUFFLEVECTOR)
#define GRAPHATTN_HSUM4 1
#else
#define GRAPHATTN_HSUM4 0
#endif

namespace graphattn {

// LeakyReLU without a branch, so that the loops around it vectorise (-inf stays -inf, NaN
// stays NaN)
template <typename T>
inline T lrelu(T x, T slope) {
  return std::max(x, T(0)) + slope * std::min(x, T(0));
}

namespace simd {
typedef float f16 __attribute__((vector_size(64)));
typedef float f8 __attribute__((vector_size(32)));
typedef float f4 __attribute__((vector_size(16)));

inline f16 load(const float* p) {
  f16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// a vector of V's width from p (unaligned), and its store
template <typename V>
inline V loadv(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename V>
inline void storev(float* p, V v) {
  std::memcpy(p, &v, sizeof(v));
}

// the sum of a vector's two halves (a memcpy of each half: the compiler emits one extract)
template <typename Half, typename Full>
inline Half fold(Full a) {
  static_assert(sizeof(Full) == 2 * sizeof(Half), "fold halves a vector");
  Half lo, hi;
  std::memcpy(&lo, &a, sizeof(Half));
  std::memcpy(&hi, reinterpret_cast<const char*>(&a) + sizeof(Half), sizeof(Half));
  return lo + hi;
}

// the sum of an 8-lane vector: one vector fold, then a tree of three scalar additions
inline float hsum(f8 a) {
  const f4 s = fold<f4>(a);
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// the sum of a 16-lane vector: two vector folds, then a tree of three scalar additions
inline float hsum(f16 a) { return hsum(fold<f8>(a)); }

#if GRAPHATTN_HSUM4
// pairwise sums of x and y, interleaved by 128-bit halves (x86's hadd):
// [x0+x1, x2+x3, y0+y1, y2+y3, x4+x5, x6+x7, y4+y5, y6+y7]
inline f8 hadd(f8 x, f8 y) {
  return __builtin_shufflevector(x, y, 0, 2, 8, 10, 4, 6, 12, 14) +
         __builtin_shufflevector(x, y, 1, 3, 9, 11, 5, 7, 13, 15);
}

// {sum(a), sum(b), sum(c), sum(d)} of four 8-lane vectors
inline f4 hsum4(f8 a, f8 b, f8 c, f8 d) {
  const f8 s = hadd(hadd(a, b), hadd(c, d));
  // s = [a, b, c, d] summed over lanes 0-3 of each | the same over lanes 4-7
  return fold<f4>(s);
}

// {sum(a), sum(b), sum(c), sum(d)} of four 16-lane vectors
inline f4 hsum4(f16 a, f16 b, f16 c, f16 d) {
  return hsum4(fold<f8>(a), fold<f8>(b), fold<f8>(c), fold<f8>(d));
}
#endif

// 16-lane partial sums of one head's D terms
template <int KIND, int D>
inline f16 head_lanes(const float* a, const float* b, const float* att, float slope) {
  static_assert(D % 16 == 0, "head_lanes needs D to be a multiple of 16");
  const f16 zero = {};
  f16 acc = {};
  for (int d = 0; d < D; d += 16) {
    const f16 x = load(a + d), y = load(b + d);
    if constexpr (KIND == V2) {
      const f16 z = x + y;
      // std::max(z, 0) and std::min(z, 0) lane by lane (a NaN lane stays NaN)
      const f16 pos = z < zero ? zero : z, neg = zero < z ? zero : z;
      acc += load(att + d) * (pos + slope * neg);
    } else {
      acc += x * y;
    }
  }
  return acc;
}
}  // namespace simd

// raw[h] for h < H (see the file header); DC: D at compile time, 0 if known at run time only.
// KIND is DOT for plain dot products (f = a * b) or V2; att is read for V2 only.
template <int KIND, int DC, typename scalar_t, typename acc_t>
inline void head_sums(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                      const scalar_t* __restrict__ att, int64_t H, int64_t D, acc_t slope,
                      acc_t* __restrict__ raw) {
  if constexpr (std::is_same<scalar_t, float>::value && std::is_same<acc_t, float>::value &&
                DC > 0 && DC % 16 == 0) {
    auto lanes = [&](int64_t h) {
      return simd::head_lanes<KIND, DC>(a + h * DC, b + h * DC,
                                        KIND == V2 ? att + h * DC : nullptr, slope);
    };
    int64_t h = 0;
#if GRAPHATTN_HSUM4
    for (; h + 4 <= H; h += 4) {
      const simd::f4 s = simd::hsum4(lanes(h), lanes(h + 1), lanes(h + 2), lanes(h + 3));
      std::memcpy(raw + h, &s, sizeof(s));
    }
#endif
    for (; h < H; ++h) raw[h] = simd::hsum(lanes(h));
    return;
  }
  for (int64_t h = 0; h < H; ++h) {
    const scalar_t* ah = a + h * D;
    const scalar_t* bh = b + h * D;
    acc_t s = 0;
    if constexpr (KIND == V2) {
      const scalar_t* th = att + h * D;
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < D; ++d)
        s += acc_t(th[d]) * lrelu<acc_t>(acc_t(ah[d]) + acc_t(bh[d]), slope);
    } else {
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < D; ++d) s += acc_t(ah[d]) * acc_t(bh[d]);
    }
    raw[h] = s;
  }
}

}  // namespace graphattn
