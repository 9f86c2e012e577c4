// Per-edge, per-head dot products over a destination-sorted CSR, shared by edge_query_dot
// (keys per edge) and edge_pair_dot (keys gathered from source rows):
//   s[e, h] = sum_{c < D} a_row(i, h)[c] * b_row(e, h)[c]    for e in row i
// a_row and b_row return the D values' base pointers; by rows (at::parallel_for), no atomics.
#pragma once
#include <ATen/Parallel.h>

#include "../attention_shapes.h"
#include "grain.h"

namespace graphattn {

template <typename scalar_t, typename ARow, typename BRow>
void csr_dots(const int64_t* p, int64_t N, int64_t H, int64_t D, int64_t E, ARow a_row,
              BRow b_row, scalar_t* s) {
  using acc_t = typename Acc<scalar_t>::type;
  at::parallel_for(0, N, row_grain(N, E, H * D), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t e = p[i]; e < p[i + 1]; ++e)
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* __restrict__ a = a_row(i, h);
          const scalar_t* __restrict__ b = b_row(e, h);
          acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t c = 0; c < D; ++c) acc += acc_t(a[c]) * acc_t(b[c]);
          s[e * H + h] = scalar_t(acc);
        }
  });
}

}  // namespace graphattn
