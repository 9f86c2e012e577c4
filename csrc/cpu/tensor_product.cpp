// Channel-wise ("uvu") tensor product of per-edge features with per-edge harmonics
// (graphattn.nn.equivariant.DepthwiseTensorProduct), one pass per edge forward and backward:
//
//   out[e, o_p + u d3 + k] = w[e, w_p + u] * sum_i x[e, x_p + u d1 + i] * op_p[i, k],
//   op_p[i, k]             = sum_j C_p[i, j, k] * y[e, y_p + j]
//
// for every path p (in output order) with its coupling tensor C_p [d1, d2, d3] (Wigner 3j
// symbols, or the identity patterns of the paths with a scalar input or output; every constant
// is folded into w by the caller). Edges are independent: at::parallel_for over edges, no
// reduction across them, so the backward writes grad x, grad y and grad w row by row:
//
//   grad w[u]     = sum_k g[u, k] (x_u op)[k]
//   grad x[u, i] += w[u] sum_k g[u, k] op[i, k]
//   grad y[j]    += sum_{i, k} C[i, j, k] G[i, k],  G[i, k] = sum_u w[u] g[u, k] x[u, i].
//
// meta [P, 9] int64 per path: x_p, y_p, o_p, w_p, c_p (offset of C_p in coupling), mul, d1,
// d2, d3.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "checks.h"

namespace graphattn {
namespace {

constexpr int64_t kMetaCols = 9;
constexpr int64_t kMaxD = 15;  // 2l + 1 up to l = 7

struct Path {
  int64_t x, y, o, w, c, mul, d1, d2, d3;
};

std::vector<Path> read_meta(const at::Tensor& meta, const at::Tensor& coupling, int64_t Dx,
                            int64_t Dy, int64_t Dout, int64_t W) {
  TORCH_CHECK_TYPE(meta.scalar_type() == at::kLong,
                   "graphattn: 'meta' must be an int64 tensor, got ",
                   meta.scalar_type());
  TORCH_CHECK_VALUE(meta.dim() == 2 && meta.size(1) == kMetaCols && meta.device().is_cpu(),
                    "graphattn: 'meta' must be a CPU tensor [P, ", kMetaCols, "], got ",
                    meta.sizes(), " on ", meta.device());
  const at::Tensor m = meta.contiguous();
  const int64_t* p = m.data_ptr<int64_t>();
  std::vector<Path> paths;
  int64_t covered = 0;
  for (int64_t r = 0; r < m.size(0); ++r) {
    const int64_t* q = p + r * kMetaCols;
    Path t{q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8]};
    TORCH_CHECK_VALUE(t.d1 >= 1 && t.d3 >= 1 && t.d1 <= kMaxD && t.d3 <= kMaxD,
                      "graphattn: 'meta' row ", r, " has irrep dimensions d1 = ", t.d1,
                      ", d3 = ", t.d3, "; the kernel takes 1 to ", kMaxD, " (l <= 7)");
    // each bound is checked before it enters a product or a sum, so nothing can overflow: mul
    // <= W and d2 <= Dy are tensor sizes, d1, d3 <= kMaxD
    const int64_t NC = coupling.numel();
    TORCH_CHECK_VALUE(
        t.mul >= 0 && t.mul <= W && t.d2 >= 1 && t.d2 <= Dy && t.x >= 0 && t.x <= Dx && t.y >= 0 &&
            t.y <= Dy && t.o >= 0 && t.o <= Dout && t.w >= 0 && t.w <= W && t.c >= 0 && t.c <= NC &&
            t.mul * t.d1 <= Dx - t.x && t.d2 <= Dy - t.y && t.mul * t.d3 <= Dout - t.o &&
            t.mul <= W - t.w && t.d1 * t.d2 * t.d3 <= NC - t.c,
        "graphattn: 'meta' row ", r, " addresses outside the inputs (x ", Dx, ", y ", Dy, ", out ",
        Dout, ", w ", W, " columns, ", NC, " coupling entries)");
    TORCH_CHECK_VALUE(t.o == covered, "graphattn: 'meta' rows must tile the output in order: row ",
                      r, " starts at column ", t.o, ", expected ", covered);
    covered += t.mul * t.d3;
    paths.push_back(t);
  }
  TORCH_CHECK_VALUE(covered == Dout, "graphattn: 'meta' covers ", covered,
                    " output columns, expected ", Dout);
  std::vector<char> used(W, 0);  // each weight feeds one channel of one path
  for (const Path& t : paths)
    for (int64_t u = 0; u < t.mul; ++u) {
      TORCH_CHECK_VALUE(!used[t.w + u], "graphattn: 'meta' rows share weight column ", t.w + u);
      used[t.w + u] = 1;
    }
  return paths;
}

void check_rows(const at::Tensor& t, int64_t E, at::ScalarType dtype, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == E, "graphattn: '", name,
                    "' must have shape [E=", E, ", *], got ", t.sizes());
  check_cpu_dtype(t, name, dtype);
}

// op[i, k] = sum_j C[i, j, k] y[j]  (d1 x d3, row-major)
template <typename scalar_t, typename acc_t>
inline void coupled(const Path& t, const acc_t* C, const scalar_t* y, acc_t* op) {
  for (int64_t i = 0; i < t.d1; ++i)
    for (int64_t k = 0; k < t.d3; ++k) {
      acc_t s = 0;
      for (int64_t j = 0; j < t.d2; ++j) s += C[(i * t.d2 + j) * t.d3 + k] * acc_t(y[t.y + j]);
      op[i * t.d3 + k] = s;
    }
}

// Calls f with the irrep widths (d1, d3) of a path as compile-time constants for l <= 2 (widths
// 1, 3, 5: the compiler unrolls a channel's d1 x d3 products and keeps them in registers), and
// with 0 (the run-time widths) otherwise.
template <typename F>
inline void by_widths(const Path& t, F&& f) {
  auto second = [&](auto D1) {
    switch (t.d3) {
      case 1: f(D1, std::integral_constant<int, 1>()); break;
      case 3: f(D1, std::integral_constant<int, 3>()); break;
      case 5: f(D1, std::integral_constant<int, 5>()); break;
      default: f(D1, std::integral_constant<int, 0>());
    }
  };
  switch (t.d1) {
    case 1: second(std::integral_constant<int, 1>()); break;
    case 3: second(std::integral_constant<int, 3>()); break;
    case 5: second(std::integral_constant<int, 5>()); break;
    default: second(std::integral_constant<int, 0>());
  }
}

// out[u, k] = w[u] sum_i x[u, i] op[i, k] for the mul channels of one path
template <int D1, int D3, typename scalar_t, typename acc_t>
inline void path_forward(const Path& t, const acc_t* __restrict__ op,
                         const scalar_t* __restrict__ xu, const scalar_t* __restrict__ wu,
                         scalar_t* __restrict__ ou) {
  const int64_t d1 = D1 > 0 ? D1 : t.d1, d3 = D3 > 0 ? D3 : t.d3, mul = t.mul;
  for (int64_t u = 0; u < mul; ++u) {
    const acc_t w = acc_t(wu[u]);
    for (int64_t k = 0; k < d3; ++k) {
      acc_t s = 0;
      for (int64_t i = 0; i < d1; ++i) s += acc_t(xu[u * d1 + i]) * op[i * d3 + k];
      ou[u * d3 + k] = scalar_t(w * s);
    }
  }
}

template <typename scalar_t>
void tp_forward(const std::vector<Path>& paths, const scalar_t* x, const scalar_t* y,
                const scalar_t* w, const std::vector<typename Acc<scalar_t>::type>& C,
                int64_t E, int64_t Dx, int64_t Dy, int64_t W, int64_t Dout, scalar_t* out) {
  using acc_t = typename Acc<scalar_t>::type;
  at::parallel_for(0, E, 64, [&](int64_t begin, int64_t end) {
    acc_t op[kMaxD * kMaxD];
    for (int64_t e = begin; e < end; ++e) {
      const scalar_t* xe = x + e * Dx;
      const scalar_t* ye = y + e * Dy;
      const scalar_t* we = w + e * W;
      scalar_t* oe = out + e * Dout;
      for (const Path& t : paths) {
        coupled<scalar_t, acc_t>(t, C.data() + t.c, ye, op);
        by_widths(t, [&](auto D1, auto D3) {
          path_forward<decltype(D1)::value, decltype(D3)::value, scalar_t, acc_t>(
              t, op, xe + t.x, we + t.w, oe + t.o);
        });
      }
    }
  });
}

// One path's channels in the backward, with G[i, k] = sum_u w[u] g[u, k] x[u, i] accumulated
// for grad y (when gy):
//   grad w[u]     = sum_k g[u, k] (x_u op)[k]
//   grad x[u, i] += w[u] sum_k g[u, k] op[i, k]
template <int D1, int D3, typename scalar_t, typename acc_t>
inline void path_backward(const Path& t, const acc_t* __restrict__ op,
                          const scalar_t* __restrict__ xu, const scalar_t* __restrict__ wu,
                          const scalar_t* __restrict__ gu, scalar_t* __restrict__ gw,
                          acc_t* __restrict__ gx, acc_t* __restrict__ G) {
  const int64_t d1 = D1 > 0 ? D1 : t.d1, d3 = D3 > 0 ? D3 : t.d3, mul = t.mul;
  if (gw)
    for (int64_t u = 0; u < mul; ++u) {
      acc_t s = 0;
      for (int64_t k = 0; k < d3; ++k) {
        acc_t xo = 0;
        for (int64_t i = 0; i < d1; ++i) xo += acc_t(xu[u * d1 + i]) * op[i * d3 + k];
        s += acc_t(gu[u * d3 + k]) * xo;
      }
      gw[u] = scalar_t(s);
    }
  if (gx)
    for (int64_t u = 0; u < mul; ++u) {
      const acc_t w = acc_t(wu[u]);
      for (int64_t i = 0; i < d1; ++i) {
        acc_t s = 0;
        for (int64_t k = 0; k < d3; ++k) s += acc_t(gu[u * d3 + k]) * op[i * d3 + k];
        gx[u * d1 + i] += w * s;
      }
    }
  if (G) {
    if constexpr (D1 > 0 && D3 > 0) {  // the d1 x d3 sums in registers
      acc_t acc[D1 * D3] = {};
      for (int64_t u = 0; u < mul; ++u) {
        const acc_t w = acc_t(wu[u]);
        for (int i = 0; i < D1; ++i) {
          const acc_t wx = w * acc_t(xu[u * D1 + i]);
          for (int k = 0; k < D3; ++k) acc[i * D3 + k] += wx * acc_t(gu[u * D3 + k]);
        }
      }
      for (int c = 0; c < D1 * D3; ++c) G[c] += acc[c];
    } else {
      for (int64_t u = 0; u < mul; ++u) {
        const acc_t w = acc_t(wu[u]);
        for (int64_t i = 0; i < d1; ++i) {
          const acc_t wx = w * acc_t(xu[u * d1 + i]);
          for (int64_t k = 0; k < d3; ++k) G[i * d3 + k] += wx * acc_t(gu[u * d3 + k]);
        }
      }
    }
  }
}

template <typename scalar_t>
void tp_backward(const std::vector<Path>& paths, const scalar_t* g, const scalar_t* x,
                 const scalar_t* y, const scalar_t* w,
                 const std::vector<typename Acc<scalar_t>::type>& C, int64_t E, int64_t Dx,
                 int64_t Dy, int64_t W, int64_t Dout, scalar_t* gx, scalar_t* gy, scalar_t* gw) {
  using acc_t = typename Acc<scalar_t>::type;
  at::parallel_for(0, E, 64, [&](int64_t begin, int64_t end) {
    acc_t op[kMaxD * kMaxD], G[kMaxD * kMaxD];
    std::vector<acc_t> gxe(Dx), gye(Dy);
    for (int64_t e = begin; e < end; ++e) {
      const scalar_t* xe = x + e * Dx;
      const scalar_t* ye = y + e * Dy;
      const scalar_t* we = w + e * W;
      const scalar_t* ge = g + e * Dout;
      if (gx) std::fill(gxe.begin(), gxe.end(), acc_t(0));
      if (gy) std::fill(gye.begin(), gye.end(), acc_t(0));
      for (const Path& t : paths) {
        coupled<scalar_t, acc_t>(t, C.data() + t.c, ye, op);
        if (gy) std::fill(G, G + t.d1 * t.d3, acc_t(0));
        by_widths(t, [&](auto D1, auto D3) {
          path_backward<decltype(D1)::value, decltype(D3)::value, scalar_t, acc_t>(
              t, op, xe + t.x, we + t.w, ge + t.o, gw ? gw + e * W + t.w : nullptr,
              gx ? gxe.data() + t.x : nullptr, gy ? G : nullptr);
        });
        if (gy) {  // grad y[j] += sum_{i, k} C[i, j, k] G[i, k]
          const acc_t* Cp = C.data() + t.c;
          for (int64_t j = 0; j < t.d2; ++j) {
            acc_t s = 0;
            for (int64_t i = 0; i < t.d1; ++i)
              for (int64_t k = 0; k < t.d3; ++k) s += Cp[(i * t.d2 + j) * t.d3 + k] * G[i * t.d3 + k];
            gye[t.y + j] += s;
          }
        }
      }
      if (gx)
        for (int64_t c = 0; c < Dx; ++c) gx[e * Dx + c] = scalar_t(gxe[c]);
      if (gy)
        for (int64_t c = 0; c < Dy; ++c) gy[e * Dy + c] = scalar_t(gye[c]);
    }
  });
}

template <typename acc_t>
std::vector<acc_t> coupling_values(const at::Tensor& coupling) {
  TORCH_CHECK_TYPE(coupling.scalar_type() == at::kFloat || coupling.scalar_type() == at::kDouble,
                   "graphattn: 'coupling' must be float32 or float64, got ",
                   coupling.scalar_type());
  TORCH_CHECK_VALUE(coupling.dim() == 1 && coupling.device().is_cpu(),
                    "graphattn: 'coupling' must be a 1-D CPU tensor, got ",
                    coupling.sizes(), " on ", coupling.device());
  const at::Tensor c = coupling.to(at::kDouble).contiguous();
  const double* p = c.data_ptr<double>();
  return std::vector<acc_t>(p, p + c.numel());
}

// x, y, weight: [E, *] CPU tensors of one float dtype; returns E
int64_t check_tp_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w) {
  TORCH_CHECK_VALUE(x.dim() == 2, "graphattn: 'x' must have shape [E, dim], got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "graphattn: 'x' must be float32 or float64, got ", x.scalar_type());
  const int64_t E = x.size(0);
  check_rows(x, E, x.scalar_type(), "x");
  check_rows(y, E, x.scalar_type(), "y");
  check_rows(w, E, x.scalar_type(), "weight");
  return E;
}

at::Tensor depthwise_tp_cpu(const at::Tensor& x_, const at::Tensor& y_, const at::Tensor& w_,
                            const at::Tensor& coupling, const at::Tensor& meta, int64_t out_dim) {
  const int64_t E = check_tp_inputs(x_, y_, w_);
  const at::Tensor x = x_.contiguous(), y = y_.contiguous(), w = w_.contiguous();
  const int64_t Dx = x.size(1), Dy = y.size(1), W = w.size(1);
  const std::vector<Path> paths = read_meta(meta, coupling, Dx, Dy, out_dim, W);
  at::Tensor out = at::empty({E, out_dim}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "graphattn::depthwise_tp", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    const std::vector<acc_t> C = coupling_values<acc_t>(coupling);
    tp_forward<scalar_t>(paths, x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                         w.data_ptr<scalar_t>(), C, E, Dx, Dy, W, out_dim,
                         out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_tp_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& y_, const at::Tensor& w_,
    const at::Tensor& coupling, const at::Tensor& meta, bool need_x, bool need_y, bool need_w) {
  const int64_t E = check_tp_inputs(x_, y_, w_);
  check_rows(grad_, E, x_.scalar_type(), "grad_out");
  const at::Tensor g = grad_.contiguous(), x = x_.contiguous(), y = y_.contiguous(),
                   w = w_.contiguous();
  const int64_t Dx = x.size(1), Dy = y.size(1), W = w.size(1), Dout = g.size(1);
  const std::vector<Path> paths = read_meta(meta, coupling, Dx, Dy, Dout, W);
  // every row of each gradient is written by its edge's task
  at::Tensor gx = need_x ? at::empty_like(x) : x.new_empty({0, Dx});
  at::Tensor gy = need_y ? at::empty_like(y) : y.new_empty({0, Dy});
  at::Tensor gw = need_w ? at::empty_like(w) : w.new_empty({0, W});
  int64_t weights_read = 0;
  for (const Path& t : paths) weights_read += t.mul;
  if (need_w && weights_read < W) gw.zero_();  // weights no path reads: zero gradient
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "graphattn::depthwise_tp_backward", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    const std::vector<acc_t> C = coupling_values<acc_t>(coupling);
    tp_backward<scalar_t>(paths, g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                          y.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), C, E, Dx, Dy, W, Dout,
                          need_x ? gx.data_ptr<scalar_t>() : nullptr,
                          need_y ? gy.data_ptr<scalar_t>() : nullptr,
                          need_w ? gw.data_ptr<scalar_t>() : nullptr);
  });
  return {gx, gy, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) {
  m.impl("depthwise_tp", &depthwise_tp_cpu);
  m.impl("depthwise_tp_backward", &depthwise_tp_backward_cpu);
}

}  // namespace graphattn
