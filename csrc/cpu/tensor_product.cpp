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
  TORCH_CHECK(meta.scalar_type() == at::kLong && meta.dim() == 2 && meta.size(1) == kMetaCols &&
                  meta.device().is_cpu(),
              "graphattn: 'meta' must be a CPU int64 tensor [P, ", kMetaCols, "], got ",
              meta.scalar_type(), " ", meta.sizes());
  const at::Tensor m = meta.contiguous();
  const int64_t* p = m.data_ptr<int64_t>();
  std::vector<Path> paths;
  int64_t covered = 0;
  for (int64_t r = 0; r < m.size(0); ++r) {
    const int64_t* q = p + r * kMetaCols;
    Path t{q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8]};
    TORCH_CHECK(t.d1 >= 1 && t.d3 >= 1 && t.d1 <= kMaxD && t.d3 <= kMaxD, "graphattn: 'meta' row ",
                r, " has irrep dimensions d1 = ", t.d1, ", d3 = ", t.d3, "; the kernel takes 1 to ",
                kMaxD, " (l <= 7)");
    // each bound is checked before it enters a product or a sum, so nothing can overflow: mul
    // <= W and d2 <= Dy are tensor sizes, d1, d3 <= kMaxD
    const int64_t NC = coupling.numel();
    TORCH_CHECK(t.mul >= 0 && t.mul <= W && t.d2 >= 1 && t.d2 <= Dy && t.x >= 0 && t.x <= Dx &&
                    t.y >= 0 && t.y <= Dy && t.o >= 0 && t.o <= Dout && t.w >= 0 && t.w <= W &&
                    t.c >= 0 && t.c <= NC && t.mul * t.d1 <= Dx - t.x && t.d2 <= Dy - t.y &&
                    t.mul * t.d3 <= Dout - t.o && t.mul <= W - t.w &&
                    t.d1 * t.d2 * t.d3 <= NC - t.c,
                "graphattn: 'meta' row ", r, " addresses outside the inputs (x ", Dx, ", y ", Dy,
                ", out ", Dout, ", w ", W, " columns, ", NC, " coupling entries)");
    TORCH_CHECK(t.o == covered, "graphattn: 'meta' rows must tile the output in order: row ", r,
                " starts at column ", t.o, ", expected ", covered);
    covered += t.mul * t.d3;
    paths.push_back(t);
  }
  TORCH_CHECK(covered == Dout, "graphattn: 'meta' covers ", covered, " output columns, expected ",
              Dout);
  std::vector<char> used(W, 0);  // each weight feeds one channel of one path
  for (const Path& t : paths)
    for (int64_t u = 0; u < t.mul; ++u) {
      TORCH_CHECK(!used[t.w + u], "graphattn: 'meta' rows share weight column ", t.w + u);
      used[t.w + u] = 1;
    }
  return paths;
}

void check_rows(const at::Tensor& t, int64_t E, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == E, "graphattn: '", name, "' must have shape [E=", E,
              ", *], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype && t.device().is_cpu(), "graphattn: '", name,
              "' must be a CPU tensor of dtype ", dtype, ", got ", t.scalar_type(), " on ",
              t.device());
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
        const scalar_t* xu = xe + t.x;
        scalar_t* ou = oe + t.o;
        const scalar_t* wu_ = we + t.w;
        if (t.d1 == 1) {  // scalar input channels: out[u, k] = w[u] x[u] op[k]
          if (t.d3 == 1) {
            const acc_t o0 = op[0];
#pragma omp simd
            for (int64_t u = 0; u < t.mul; ++u) ou[u] = scalar_t(acc_t(wu_[u]) * acc_t(xu[u]) * o0);
          } else if (t.d3 == 3) {  // l = 1 harmonics, unrolled (forward 0.67 -> 0.42 ms, E = 4694)
            const acc_t o0 = op[0], o1 = op[1], o2 = op[2];
            for (int64_t u = 0; u < t.mul; ++u) {
              const acc_t a = acc_t(wu_[u]) * acc_t(xu[u]);
              ou[3 * u] = scalar_t(a * o0);
              ou[3 * u + 1] = scalar_t(a * o1);
              ou[3 * u + 2] = scalar_t(a * o2);
            }
          } else {
            for (int64_t u = 0; u < t.mul; ++u) {
              const acc_t a = acc_t(wu_[u]) * acc_t(xu[u]);
              for (int64_t k = 0; k < t.d3; ++k) ou[u * t.d3 + k] = scalar_t(a * op[k]);
            }
          }
          continue;
        }
        if (t.d3 == 1) {  // scalar output channels: out[u] = w[u] <x_u, op>
          for (int64_t u = 0; u < t.mul; ++u) {
            acc_t s = 0;
            for (int64_t i = 0; i < t.d1; ++i) s += acc_t(xu[u * t.d1 + i]) * op[i];
            ou[u] = scalar_t(acc_t(wu_[u]) * s);
          }
          continue;
        }
        for (int64_t u = 0; u < t.mul; ++u) {
          const acc_t wu = acc_t(wu_[u]);
          for (int64_t k = 0; k < t.d3; ++k) {
            acc_t s = 0;
            for (int64_t i = 0; i < t.d1; ++i) s += acc_t(xu[u * t.d1 + i]) * op[i * t.d3 + k];
            ou[u * t.d3 + k] = scalar_t(wu * s);
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void tp_backward(const std::vector<Path>& paths, const scalar_t* g, const scalar_t* x,
                 const scalar_t* y, const scalar_t* w,
                 const std::vector<typename Acc<scalar_t>::type>& C, int64_t E, int64_t Dx,
                 int64_t Dy, int64_t W, int64_t Dout, scalar_t* gx, scalar_t* gy, scalar_t* gw) {
  using acc_t = typename Acc<scalar_t>::type;
  at::parallel_for(0, E, 64, [&](int64_t begin, int64_t end) {
    acc_t op[kMaxD * kMaxD], G[kMaxD * kMaxD];
    int64_t max_mul = 0;
    for (const Path& t : paths) max_mul = std::max(max_mul, t.mul);
    std::vector<acc_t> gxe(Dx), gye(Dy), gop(max_mul);
    for (int64_t e = begin; e < end; ++e) {
      const scalar_t* xe = x + e * Dx;
      const scalar_t* ye = y + e * Dy;
      const scalar_t* we = w + e * W;
      const scalar_t* ge = g + e * Dout;
      if (gx) std::fill(gxe.begin(), gxe.end(), acc_t(0));
      if (gy) std::fill(gye.begin(), gye.end(), acc_t(0));
      for (const Path& t : paths) {
        coupled<scalar_t, acc_t>(t, C.data() + t.c, ye, op);
        const scalar_t* xu = xe + t.x;
        const scalar_t* gu = ge + t.o;
        if (gy) std::fill(G, G + t.d1 * t.d3, acc_t(0));
        if (t.d1 == 1) {  // scalar input channels: (x_u op)[k] = x[u] op[k]
          const int64_t d3 = t.d3, mul = t.mul;
          const scalar_t* __restrict__ wv = we + t.w;
          acc_t* __restrict__ go = gop.data();  // go[u] = sum_k g[u, k] op[k]
          if (d3 == 1) {
            const acc_t o0 = op[0];
#pragma omp simd
            for (int64_t u = 0; u < mul; ++u) go[u] = acc_t(gu[u]) * o0;
          } else if (d3 == 3) {
            const acc_t o0 = op[0], o1 = op[1], o2 = op[2];
#pragma omp simd
            for (int64_t u = 0; u < mul; ++u)
              go[u] = acc_t(gu[3 * u]) * o0 + acc_t(gu[3 * u + 1]) * o1 + acc_t(gu[3 * u + 2]) * o2;
          } else {
            for (int64_t u = 0; u < mul; ++u) {
              acc_t s = 0;
              for (int64_t k = 0; k < d3; ++k) s += acc_t(gu[u * d3 + k]) * op[k];
              go[u] = s;
            }
          }
          if (gw) {
            scalar_t* __restrict__ o = gw + e * W + t.w;
#pragma omp simd
            for (int64_t u = 0; u < mul; ++u) o[u] = scalar_t(acc_t(xu[u]) * go[u]);
          }
          if (gx) {
            acc_t* __restrict__ o = gxe.data() + t.x;
#pragma omp simd
            for (int64_t u = 0; u < mul; ++u) o[u] += acc_t(wv[u]) * go[u];
          }
          if (gy)
            for (int64_t u = 0; u < mul; ++u) {
              const acc_t wx = acc_t(wv[u]) * acc_t(xu[u]);
              for (int64_t k = 0; k < d3; ++k) G[k] += wx * acc_t(gu[u * d3 + k]);
            }
        } else if (t.d3 == 1) {  // scalar output channels: out[u] = w[u] <x_u, op>
          const int64_t d1 = t.d1;
          for (int64_t u = 0; u < t.mul; ++u) {
            const acc_t wu = acc_t(we[t.w + u]), gv = acc_t(gu[u]);
            const scalar_t* xv = xu + u * d1;
            if (gw) {
              acc_t s = 0;
              for (int64_t i = 0; i < d1; ++i) s += acc_t(xv[i]) * op[i];
              gw[e * W + t.w + u] = scalar_t(gv * s);
            }
            if (gx)
              for (int64_t i = 0; i < d1; ++i) gxe[t.x + u * d1 + i] += wu * gv * op[i];
            if (gy)
              for (int64_t i = 0; i < d1; ++i) G[i] += wu * gv * acc_t(xv[i]);
          }
        } else {
          for (int64_t u = 0; u < t.mul; ++u) {
            const acc_t wu = acc_t(we[t.w + u]);
            if (gw) {
              acc_t s = 0;
              for (int64_t k = 0; k < t.d3; ++k) {
                acc_t xo = 0;
                for (int64_t i = 0; i < t.d1; ++i) xo += acc_t(xu[u * t.d1 + i]) * op[i * t.d3 + k];
                s += acc_t(gu[u * t.d3 + k]) * xo;
              }
              gw[e * W + t.w + u] = scalar_t(s);
            }
            if (gx) {
              for (int64_t i = 0; i < t.d1; ++i) {
                acc_t s = 0;
                for (int64_t k = 0; k < t.d3; ++k) s += acc_t(gu[u * t.d3 + k]) * op[i * t.d3 + k];
                gxe[t.x + u * t.d1 + i] += wu * s;
              }
            }
            if (gy) {
              for (int64_t i = 0; i < t.d1; ++i) {
                const acc_t wx = wu * acc_t(xu[u * t.d1 + i]);
                for (int64_t k = 0; k < t.d3; ++k) G[i * t.d3 + k] += wx * acc_t(gu[u * t.d3 + k]);
              }
            }
          }
        }
        if (gy) {
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
  TORCH_CHECK(coupling.dim() == 1 && coupling.device().is_cpu() &&
                  (coupling.scalar_type() == at::kFloat || coupling.scalar_type() == at::kDouble),
              "graphattn: 'coupling' must be a 1-D float CPU tensor, got ",
              coupling.scalar_type(), " ", coupling.sizes());
  const at::Tensor c = coupling.to(at::kDouble).contiguous();
  const double* p = c.data_ptr<double>();
  return std::vector<acc_t>(p, p + c.numel());
}

// x, y, weight: [E, *] CPU tensors of one float dtype; returns E
int64_t check_tp_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2, "graphattn: 'x' must have shape [E, dim], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
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
