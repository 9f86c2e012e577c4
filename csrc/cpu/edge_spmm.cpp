// The bilinear pieces of edge attention, for its derivatives of second and higher order
// (graphattn/ops/_native.py, _ea_backward_differentiable): over the edges e = (j -> i) of a
// destination-sorted CSR, per head h,
//
//   edge_pair_dot:  s[e, h] = sum_c a[i, h, c] * b[j, h, c]                      -> [E, H]
//   edge_spmm:      out[r, h, c] = sum_{t in row r} w[eid(t), h] * x[col[t], h, c]  -> [R, H, D]
//
// edge_spmm runs over any row-sorted view: the CSR (rows = destinations, col = src, eid(t) = t:
// out_i = sum_e w_e x_j) or the CSC (rows = sources, col = csc_dst, eid = csc_eid:
// out_j = sum_e w_e y_i). The derivatives of each are the others (the family is closed), so
// every order stays on these kernels and no [E, H, D] tensor is formed:
//   d pair_dot / d a = spmm over the CSR of (g, b);   d / d b = spmm over the CSC of (g, a);
//   d spmm / d w = pair_dot of (grad, x) in the view's orientation; d / d x = spmm over the
//   other view.
// Both go by rows (at::parallel_for), no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "csr_dots.h"
#include "grain.h"

namespace graphattn {
namespace {

void check_nodes(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 3, "graphattn: '", name, "' must have shape [N, H, D], got ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "graphattn: '",
                   name, "' must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), "graphattn: '", name, "' must be on the CPU, got ",
                    t.device());
}

template <typename scalar_t>
void pair_dot_kernel(const scalar_t* ap, const scalar_t* bp, const int64_t* p, const int64_t* sp,
                     int64_t N, int64_t H, int64_t D, int64_t E, scalar_t* out) {
  csr_dots<scalar_t>(
      p, N, H, D, E, [&](int64_t i) { return ap + i * H * D; },
      [&](int64_t e) { return bp + sp[e] * H * D; }, D, out);
}

// eid: the edge (row of w) of each position t, null for t itself
template <typename scalar_t>
void spmm_kernel(const scalar_t* wp, const scalar_t* xp, const int64_t* p, const int64_t* cp,
                 const int64_t* ep, int64_t R, int64_t H, int64_t D, int64_t E, scalar_t* op) {
  using acc_t = typename Acc<scalar_t>::type;
  at::parallel_for(0, R, row_grain(R, E, H * D), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(H * D);
    for (int64_t r = begin; r < end; ++r) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t t = p[r]; t < p[r + 1]; ++t) {
        const scalar_t* __restrict__ we = wp + (ep ? ep[t] : t) * H;
        const scalar_t* __restrict__ xr = xp + cp[t] * H * D;
        for (int64_t h = 0; h < H; ++h) {
          const acc_t f = acc_t(we[h]);
          acc_t* __restrict__ ah = acc.data() + h * D;
          const scalar_t* __restrict__ xh = xr + h * D;
#pragma omp simd
          for (int64_t c = 0; c < D; ++c) ah[c] += f * acc_t(xh[c]);
        }
      }
      scalar_t* __restrict__ o = op + r * H * D;
      for (int64_t c = 0; c < H * D; ++c) o[c] = scalar_t(acc[c]);
    }
  });
}

at::Tensor edge_pair_dot_cpu(const at::Tensor& a_, const at::Tensor& b_, const at::Tensor& ptr,
                             const at::Tensor& src, bool validated) {
  check_nodes(a_, "a");
  check_nodes(b_, "b");
  TORCH_CHECK_TYPE(a_.scalar_type() == b_.scalar_type(),
                   "graphattn: 'b' must have the dtype of 'a' (", a_.scalar_type(), "), got ",
                   b_.scalar_type());
  TORCH_CHECK_VALUE(a_.size(1) == b_.size(1) && a_.size(2) == b_.size(2),
                    "graphattn: 'a' and 'b' must have the same heads and width [*, H, D], got ",
                    a_.sizes(), " and ", b_.sizes());
  TORCH_CHECK_VALUE(ptr.numel() == a_.size(0) + 1,
                    "graphattn: 'ptr' must have N_dst + 1 = ", a_.size(0) + 1,
                    " entries (one row per node of 'a'), got ", ptr.numel());
  check_ptr(ptr, src.numel(), "ptr", validated);
  check_range(src, b_.size(0), "src", validated);
  const at::Tensor a = a_.contiguous(), b = b_.contiguous();
  const int64_t N = a.size(0), H = a.size(1), D = a.size(2), E = src.numel();
  at::Tensor s = at::empty({E, H}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "graphattn::edge_pair_dot", [&] {
    pair_dot_kernel<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                              ptr.data_ptr<int64_t>(), src.data_ptr<int64_t>(), N, H, D, E,
                              s.data_ptr<scalar_t>());
  });
  return s;
}

at::Tensor edge_spmm_cpu(const at::Tensor& w_, const at::Tensor& x_, const at::Tensor& ptr,
                         const at::Tensor& col, const c10::optional<at::Tensor>& eid,
                         bool validated) {
  check_edge_values(w_, "w");
  check_nodes(x_, "x");
  TORCH_CHECK_TYPE(w_.scalar_type() == x_.scalar_type(),
                   "graphattn: 'w' must have the dtype of 'x' (",
                   x_.scalar_type(), "), got ", w_.scalar_type());
  TORCH_CHECK_VALUE(w_.device().is_cpu(), "graphattn: 'w' must be on the CPU, got ", w_.device());
  const int64_t E = col.numel();
  TORCH_CHECK_VALUE(w_.size(0) == E && w_.size(1) == x_.size(1),
                    "graphattn: 'w' must have shape [E=", E, ", H=", x_.size(1), "], got ",
                    w_.sizes());
  check_ptr(ptr, E, "ptr", validated);
  check_range(col, x_.size(0), "col", validated);
  if (eid.has_value()) {
    TORCH_CHECK_VALUE(eid->numel() == E, "graphattn: 'eid' must have E = ", E, " entries, got ",
                      eid->numel());
    check_range(*eid, E, "eid", validated);
  }
  const at::Tensor w = w_.contiguous(), x = x_.contiguous();
  const int64_t R = ptr.numel() - 1, H = x.size(1), D = x.size(2);
  at::Tensor out = at::empty({R, H, D}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "graphattn::edge_spmm", [&] {
    spmm_kernel<scalar_t>(w.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), ptr.data_ptr<int64_t>(),
                          col.data_ptr<int64_t>(),
                          eid.has_value() ? eid->data_ptr<int64_t>() : nullptr, R, H, D, E,
                          out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) {
  m.impl("edge_pair_dot", &edge_pair_dot_cpu);
  m.impl("edge_spmm", &edge_spmm_cpu);
}

}  // namespace graphattn
