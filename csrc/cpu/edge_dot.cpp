// Scores of destination queries against per-edge keys over a destination-sorted CSR
// (graphattn.ops.edge_query_dot):
//
//   s[e, h] = sum_c q[i, h, c] * k[e, c]      (e an in-edge of i)
//
// One key row per edge shared by the H queries of its destination (MLANet's geometric keys,
// whose key map is folded into the queries per node). Forward and backward go by destination
// rows, no atomics:
//
//   grad k[e, c]    = sum_h grad s[e, h] q[i, h, c]
//   grad q[i, h, c] = sum_{e in row i} grad s[e, h] k[e, c].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "csr_dots.h"
#include "grain.h"

namespace graphattn {
namespace {

void check_dot_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& ptr) {
  TORCH_CHECK_VALUE(q.dim() == 3, "graphattn: 'q' must have shape [N_dst, H, F], got ", q.sizes());
  check_edge_values(k, "k");
  TORCH_CHECK_TYPE(q.scalar_type() == k.scalar_type(),
                   "graphattn: 'q' must have the dtype of 'k' (", k.scalar_type(), "), got ",
                   q.scalar_type());
  TORCH_CHECK_VALUE(q.device().is_cpu() && k.device().is_cpu(),
                    "graphattn: 'q' and 'k' must be on the CPU");
  TORCH_CHECK_VALUE(q.size(2) == k.size(1), "graphattn: 'q' must have F = ", k.size(1),
                    " (the columns of 'k') in its last dimension, got ", q.sizes());
  TORCH_CHECK_VALUE(ptr.numel() == q.size(0) + 1,
                    "graphattn: 'ptr' must have N_dst + 1 = ", q.size(0) + 1,
                    " entries (one row per query node), got ", ptr.numel());
  check_ptr(ptr, k.size(0), "ptr");
}

template <typename scalar_t>
void dot_forward(const scalar_t* q, const scalar_t* k, const int64_t* p, int64_t N, int64_t H,
                 int64_t F, int64_t E, scalar_t* s) {
  csr_dots<scalar_t>(
      p, N, H, F, E, [&](int64_t i) { return q + i * H * F; },
      [&](int64_t e) { return k + e * F; }, 0, s);
}

// Float rows whose F is a multiple of V's width W: each edge's key chunk is loaded once for
// all heads, grad k[e] is summed over the heads in registers and grad q accumulates in its
// output row (the same additions in the same order as the plain loop below: equal bits).
template <typename V, int W>
void dot_backward_rows(const float* g, const float* q, const float* k, const int64_t* p,
                       int64_t begin, int64_t end, int64_t H, int64_t F, float* gq, float* gk) {
  using simd::loadv;
  using simd::storev;
  for (int64_t i = begin; i < end; ++i) {
    const float* __restrict__ qi = q + i * H * F;
    float* __restrict__ gqi = gq ? gq + i * H * F : nullptr;
    if (gqi) std::fill(gqi, gqi + H * F, 0.f);
    for (int64_t e = p[i]; e < p[i + 1]; ++e) {
      const float* __restrict__ ke = k + e * F;
      const float* __restrict__ ge = g + e * H;
      for (int64_t c = 0; c < F; c += W) {
        if (gk) {
          V acc = {};
          for (int64_t h = 0; h < H; ++h) acc += ge[h] * loadv<V>(qi + h * F + c);
          storev(gk + e * F + c, acc);
        }
        if (gqi) {
          const V kv = loadv<V>(ke + c);
          for (int64_t h = 0; h < H; ++h) {
            float* o = gqi + h * F + c;
            storev(o, loadv<V>(o) + ge[h] * kv);
          }
        }
      }
    }
  }
}

template <typename scalar_t>
void dot_backward(const scalar_t* g, const scalar_t* q, const scalar_t* k, const int64_t* p,
                  int64_t N, int64_t H, int64_t F, int64_t E, scalar_t* gq, scalar_t* gk) {
  using acc_t = typename Acc<scalar_t>::type;
  at::parallel_for(0, N, row_grain(N, E, H * F), [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same<scalar_t, float>::value) {
      if (F % 16 == 0)
        return dot_backward_rows<simd::f16, 16>(g, q, k, p, begin, end, H, F, gq, gk);
      if (F % 8 == 0)
        return dot_backward_rows<simd::f8, 8>(g, q, k, p, begin, end, H, F, gq, gk);
    }
    std::vector<acc_t> gqi(gq ? H * F : 0), gke(F);
    for (int64_t i = begin; i < end; ++i) {
      if (gq) std::fill(gqi.begin(), gqi.end(), acc_t(0));
      for (int64_t e = p[i]; e < p[i + 1]; ++e) {
        const scalar_t* __restrict__ ke = k + e * F;
        if (gk) std::fill(gke.begin(), gke.end(), acc_t(0));
        for (int64_t h = 0; h < H; ++h) {
          const acc_t gs = acc_t(g[e * H + h]);
          if (gk) {
            const scalar_t* __restrict__ qh = q + (i * H + h) * F;
            acc_t* __restrict__ a = gke.data();
#pragma omp simd
            for (int64_t c = 0; c < F; ++c) a[c] += gs * acc_t(qh[c]);
          }
          if (gq) {
            acc_t* __restrict__ a = gqi.data() + h * F;
#pragma omp simd
            for (int64_t c = 0; c < F; ++c) a[c] += gs * acc_t(ke[c]);
          }
        }
        if (gk) {
          scalar_t* __restrict__ o = gk + e * F;
          for (int64_t c = 0; c < F; ++c) o[c] = scalar_t(gke[c]);
        }
      }
      if (gq) {
        scalar_t* __restrict__ o = gq + i * H * F;
        for (int64_t c = 0; c < H * F; ++c) o[c] = scalar_t(gqi[c]);
      }
    }
  });
}

at::Tensor edge_query_dot_cpu(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& ptr) {
  check_dot_inputs(q_, k_, ptr);
  const at::Tensor q = q_.contiguous(), k = k_.contiguous();
  const int64_t N = q.size(0), H = q.size(1), F = q.size(2), E = k.size(0);
  at::Tensor s = at::empty({E, H}, k.options());
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "graphattn::edge_query_dot", [&] {
    dot_forward<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                          ptr.data_ptr<int64_t>(), N, H, F, E, s.data_ptr<scalar_t>());
  });
  return s;
}

std::tuple<at::Tensor, at::Tensor> edge_query_dot_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& ptr,
    bool need_q, bool need_k) {
  check_dot_inputs(q_, k_, ptr);
  const int64_t N = q_.size(0), H = q_.size(1), F = q_.size(2), E = k_.size(0);
  TORCH_CHECK_VALUE(grad_.dim() == 2 && grad_.size(0) == E && grad_.size(1) == H,
                    "graphattn: 'grad_out' must have shape [E=", E, ", H=", H, "], got ",
                    grad_.sizes());
  check_cpu_dtype(grad_, "grad_out", k_.scalar_type());
  const at::Tensor g = grad_.contiguous(), q = q_.contiguous(), k = k_.contiguous();
  // rows of destinations without in-edges get a zero grad q in the loop; every edge is in
  // one row (check_ptr), so every row of grad k is written
  at::Tensor gq = need_q ? at::empty_like(q) : q.new_empty({0, H, F});
  at::Tensor gk = need_k ? at::empty_like(k) : k.new_empty({0, F});
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "graphattn::edge_query_dot_backward", [&] {
    dot_backward<scalar_t>(g.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                           ptr.data_ptr<int64_t>(), N, H, F, E,
                           need_q ? gq.data_ptr<scalar_t>() : nullptr,
                           need_k ? gk.data_ptr<scalar_t>() : nullptr);
  });
  return {gq, gk};
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) {
  m.impl("edge_query_dot", &edge_query_dot_cpu);
  m.impl("edge_query_dot_backward", &edge_query_dot_backward_cpu);
}

}  // namespace graphattn
