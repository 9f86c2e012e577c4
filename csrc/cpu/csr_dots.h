// Per-edge, per-head dot products over a destination-sorted CSR, shared by edge_query_dot
// (one key row per edge, shared by the heads: b_stride 0) and edge_pair_dot (keys gathered
// from source rows, heads D apart: b_stride D):
//   s[e, h] = sum_{c < D} a_row(i)[h * D + c] * b_row(e)[h * b_stride + c]    for e in row i
// a_row and b_row return base pointers; by rows (at::parallel_for), no atomics.
//
// Float rows whose D is a multiple of 8 reduce all heads of an edge at once: 16-lane (or, for
// D = 8, 24, ..., 8-lane) partial sums per head, then four heads at a time one transposing
// tree of additions (head_sums.h's hsum4; other head counts, or without it: hsum per head).
// Reduced one head at a time by `omp simd reduction` (the plain loop below, kept for double and
// other widths), each dot ended in a horizontal sum of dependent scalar additions: MLANet's
// chemical logits (D = 8, H = 4) took ~11 ns per head and edge. The orders of summation differ
// in rounding only.
#pragma once
#include <ATen/Parallel.h>

#include <cstring>
#include <type_traits>

#include "../attention_shapes.h"
#include "grain.h"
#include "head_sums.h"

namespace graphattn {

namespace simd {
// s[h] = sum_c a[h * D + c] * b[h * sb + c] for h < H, D a multiple of V's width W
template <typename V, int W>
inline void head_dots(const float* __restrict__ a, const float* __restrict__ b, int64_t sb,
                      int64_t H, int64_t D, float* __restrict__ s) {
  int64_t h = 0;
#if GRAPHATTN_HSUM4
  for (; h + 4 <= H; h += 4) {
    // the four heads in one loop: four independent chains of additions
    const float* x = a + h * D;
    const float* y = b + h * sb;
    V s0 = {}, s1 = {}, s2 = {}, s3 = {};
    for (int64_t c = 0; c < D; c += W) {
      s0 += loadv<V>(x + c) * loadv<V>(y + c);
      s1 += loadv<V>(x + D + c) * loadv<V>(y + sb + c);
      s2 += loadv<V>(x + 2 * D + c) * loadv<V>(y + 2 * sb + c);
      s3 += loadv<V>(x + 3 * D + c) * loadv<V>(y + 3 * sb + c);
    }
    const f4 r = hsum4(s0, s1, s2, s3);
    std::memcpy(s + h, &r, sizeof(r));
  }
#endif
  for (; h < H; ++h) {
    V acc = {};
    for (int64_t c = 0; c < D; c += W) acc += loadv<V>(a + h * D + c) * loadv<V>(b + h * sb + c);
    s[h] = hsum(acc);
  }
}
}  // namespace simd

template <typename scalar_t, typename ARow, typename BRow>
void csr_dots(const int64_t* p, int64_t N, int64_t H, int64_t D, int64_t E, ARow a_row,
              BRow b_row, int64_t b_stride, scalar_t* s) {
  using acc_t = typename Acc<scalar_t>::type;
  at::parallel_for(0, N, row_grain(N, E, H * D), [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same<scalar_t, float>::value) {
      if (D % 8 == 0) {
        for (int64_t i = begin; i < end; ++i) {
          const float* a = a_row(i);
          for (int64_t e = p[i]; e < p[i + 1]; ++e) {
            if (D % 16 == 0)
              simd::head_dots<simd::f16, 16>(a, b_row(e), b_stride, H, D, s + e * H);
            else
              simd::head_dots<simd::f8, 8>(a, b_row(e), b_stride, H, D, s + e * H);
          }
        }
        return;
      }
    }
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* __restrict__ ai = a_row(i);
      for (int64_t e = p[i]; e < p[i + 1]; ++e) {
        const scalar_t* __restrict__ be = b_row(e);
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* __restrict__ a = ai + h * D;
          const scalar_t* __restrict__ b = be + h * b_stride;
          acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t c = 0; c < D; ++c) acc += acc_t(a[c]) * acc_t(b[c]);
          s[e * H + h] = scalar_t(acc);
        }
      }
    }
  });
}

}  // namespace graphattn
