// Channel-scaled aggregation over a destination-sorted CSR (graphattn.ops.aggregate_scaled):
//
//   out[i, c] = sum_{e in row i} f[e, k(c)] * m[e, c],   f[e, k] = coef[e, k] * a[e, h(k)]
//
// where the F columns of m are cut into blocks (mul_b, d_b): block b holds mul_b channels of
// d_b consecutive columns each (an irreps layout: d = 2l + 1), and channel u of block b takes
// the factor coef[e, K_b + u] (K_b = mul_0 + ... + mul_{b-1}) times the optional per-head
// factor a = head_coef[e, u mod H] (attention weights dealt to the channels round-robin; 1
// without head_coef). The scaled [E, F] messages are never written: forward and backward are
// one pass each over the edges of every destination row (no atomics), the backward giving,
// with the channel dots d[e, k] = sum_{c in channel k} m[e, c] * grad_out[i, c],
//
//   grad m[e, c]         = f[e, k(c)] * grad_out[i, c]
//   grad coef[e, k]      = a[e, h(k)] * d[e, k]
//   grad head_coef[e, h] = sum_{k: h(k) = h} coef[e, k] * d[e, k].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/safe_numerics.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "grain.h"

namespace graphattn {
namespace {

struct Blocks {
  std::vector<int64_t> mul, dim;
  int64_t F = 0, K = 0;
};

Blocks check_blocks(at::IntArrayRef muls, at::IntArrayRef dims) {
  TORCH_CHECK_VALUE(muls.size() == dims.size() && !muls.empty(),
                    "graphattn: 'muls' and 'dims' must be non-empty and of equal length, got ",
                    muls.size(), " and ", dims.size());
  Blocks b;
  for (size_t t = 0; t < muls.size(); ++t) {
    TORCH_CHECK_VALUE(muls[t] >= 0 && dims[t] >= 1, "graphattn: block ", t,
                      " must have mul >= 0 and dim >= 1, got (", muls[t], ", ", dims[t], ")");
    int64_t cols = 0;
    TORCH_CHECK_VALUE(!c10::mul_overflows(muls[t], dims[t], &cols) &&
                          !c10::add_overflows(b.F, cols, &b.F) &&
                          !c10::add_overflows(b.K, muls[t], &b.K),
                      "graphattn: the blocks' sizes overflow int64 at block ", t);
    b.mul.push_back(muls[t]);
    b.dim.push_back(dims[t]);
  }
  return b;
}

void check_inputs(const at::Tensor& m, const at::Tensor& coef, const at::Tensor& ptr,
                  const Blocks& b) {
  check_edge_values(m, "messages");
  check_edge_values(coef, "coef");
  TORCH_CHECK_VALUE(m.device().is_cpu() && coef.device().is_cpu(),
                    "graphattn: 'messages' and 'coef' must be on the CPU");
  TORCH_CHECK_TYPE(coef.scalar_type() == m.scalar_type(),
                   "graphattn: 'coef' must have the dtype of 'messages' (",
                   m.scalar_type(), "), got ", coef.scalar_type());
  TORCH_CHECK_VALUE(m.size(1) == b.F, "graphattn: 'messages' must have ", b.F,
                    " columns (sum of mul * dim over the blocks), got ", m.size(1));
  TORCH_CHECK_VALUE(coef.size(0) == m.size(0) && coef.size(1) == b.K,
                    "graphattn: 'coef' must have shape [E=",
                    m.size(0), ", K=", b.K, "] (K = sum of the muls), got ", coef.sizes());
  check_ptr(ptr, m.size(0), "ptr");
}

// head_coef, when given: [E, H >= 1] of the messages' dtype; returns H (0 without it)
int64_t check_head(const c10::optional<at::Tensor>& head, const at::Tensor& m) {
  if (!head.has_value()) return 0;
  const at::Tensor& a = *head;
  check_edge_values(a, "head_coef");
  TORCH_CHECK_TYPE(a.scalar_type() == m.scalar_type(),
                   "graphattn: 'head_coef' must have the messages' dtype (",
                   m.scalar_type(), "), got ", a.scalar_type());
  TORCH_CHECK_VALUE(a.device().is_cpu(), "graphattn: 'head_coef' must be on the CPU, got ",
                    a.device());
  TORCH_CHECK_VALUE(a.size(0) == m.size(0) && a.size(1) >= 1,
                    "graphattn: 'head_coef' must have shape [E=",
                    m.size(0), ", H >= 1], got ", a.sizes());
  return a.size(1);
}

// The per-head factors dealt to the channels: channel u of every block takes a[u mod H]. Per
// edge they are written once as a period rep[u] = a[u mod H] (u < R, the largest mul), so each
// block's factors are an elementwise product with rep[0, mul): vectorised, no per-channel head
// index to gather through.
int64_t max_mul(const Blocks& b) {
  return b.mul.empty() ? 0 : *std::max_element(b.mul.begin(), b.mul.end());
}

template <typename scalar_t, typename acc_t>
inline void head_period(const scalar_t* __restrict__ ae, int64_t H, int64_t R,
                        acc_t* __restrict__ rep) {
  const int64_t n = std::min(H, R);
  for (int64_t j = 0; j < n; ++j) rep[j] = acc_t(ae[j]);
  for (int64_t j = n; j < R; ++j) rep[j] = rep[j - H];
}

// f[k] = coef_e[k] * a_e[h(k)]: the edge's factor of every channel (K values, in L1)
template <typename scalar_t, typename acc_t>
inline void edge_factors(const Blocks& b, const scalar_t* __restrict__ ce,
                         const acc_t* __restrict__ rep, acc_t* __restrict__ f) {
  int64_t k0 = 0;
  for (const int64_t mul : b.mul) {
#pragma omp simd
    for (int64_t u = 0; u < mul; ++u) f[k0 + u] = acc_t(ce[k0 + u]) * rep[u];
    k0 += mul;
  }
}

// The blocks' work per edge, with the channel width D a compile-time constant for the irreps
// widths 1, 3, 5, 7 (the compiler unrolls the D columns of a channel and vectorises across
// channels) and a run-time one (D = 0) otherwise. fac: the channels' factors (coef itself, or
// the edge's f of edge_factors).
template <int D, typename fac_t, typename scalar_t, typename acc_t>
inline void fwd_block(int64_t mul, int64_t d_rt, const fac_t* __restrict__ fac,
                      const scalar_t* __restrict__ me, acc_t* __restrict__ a) {
  const int64_t d = D > 0 ? D : d_rt;
  for (int64_t u = 0; u < mul; ++u) {
    const acc_t c = acc_t(fac[u]);
    for (int64_t r = 0; r < d; ++r) a[u * d + r] += c * acc_t(me[u * d + r]);
  }
}

// grad m = fac * g (into gm, when given); the channel dots <m_u, g_u> (into dots, when given)
template <int D, typename fac_t, typename dot_t, typename scalar_t, typename acc_t>
inline void bwd_block(int64_t mul, int64_t d_rt, const fac_t* __restrict__ fac,
                      const scalar_t* __restrict__ me, const scalar_t* __restrict__ gb,
                      scalar_t* __restrict__ gm, dot_t* __restrict__ dots) {
  const int64_t d = D > 0 ? D : d_rt;
  if (gm)
    for (int64_t u = 0; u < mul; ++u) {
      const acc_t c = acc_t(fac[u]);
      for (int64_t r = 0; r < d; ++r) gm[u * d + r] = scalar_t(c * acc_t(gb[u * d + r]));
    }
  if (dots)
    for (int64_t u = 0; u < mul; ++u) {
      acc_t s = 0;
      for (int64_t r = 0; r < d; ++r) s += acc_t(me[u * d + r]) * acc_t(gb[u * d + r]);
      dots[u] = dot_t(s);
    }
}

template <typename F>
inline void by_width(int64_t d, F&& f) {
  switch (d) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 5: f(std::integral_constant<int, 5>()); break;
    case 7: f(std::integral_constant<int, 7>()); break;
    default: f(std::integral_constant<int, 0>());
  }
}

// ap: head_coef [E, H] or nullptr
template <typename scalar_t>
void forward_kernel(const Blocks& b, const scalar_t* mp, const scalar_t* cp, const scalar_t* ap,
                    int64_t H, const int64_t* p, int64_t N, int64_t E, scalar_t* o) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t F = b.F, K = b.K, R = max_mul(b);
  const size_t nb = b.mul.size();
  at::parallel_for(0, N, row_grain(N, E, F), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(F), f(ap ? K : 0), rep(ap ? R : 0);
    auto edge = [&](int64_t e, const auto* fac) {
      int64_t c0 = 0, k0 = 0;
      for (size_t t = 0; t < nb; ++t) {
        const int64_t mul = b.mul[t], d = b.dim[t];
        by_width(d, [&](auto w) {
          fwd_block<decltype(w)::value>(mul, d, fac + k0, mp + e * F + c0, acc.data() + c0);
        });
        c0 += mul * d;
        k0 += mul;
      }
    };
    for (int64_t i = begin; i < end; ++i) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t e = p[i]; e < p[i + 1]; ++e) {
        if (ap) {
          head_period(ap + e * H, H, R, rep.data());
          edge_factors(b, cp + e * K, rep.data(), f.data());
          edge(e, f.data());
        } else {
          edge(e, cp + e * K);
        }
      }
      scalar_t* oi = o + i * F;
      for (int64_t c = 0; c < F; ++c) oi[c] = scalar_t(acc[c]);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const Blocks& b, const scalar_t* gp, const scalar_t* mp, const scalar_t* cp,
                     const scalar_t* ap, int64_t H, const int64_t* p, int64_t N, int64_t E,
                     scalar_t* gmp, scalar_t* gcp, scalar_t* gap) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t F = b.F, K = b.K, R = max_mul(b);
  const size_t nb = b.mul.size();
  at::parallel_for(0, N, row_grain(N, E, F), [&](int64_t begin, int64_t end) {
    // rep: the edge's head factors by channel (head_period); gsum[u]: sum over the blocks of
    // coef * dot of channel u, folded by head (u mod H) into grad head_coef
    std::vector<acc_t> f(ap ? K : 0), dk(ap ? K : 0), rep(ap ? R : 0), gsum(ap ? R : 0);
    // the blocks of edge e with factors fac, channel dots into dots (or none)
    auto edge = [&](int64_t e, const scalar_t* gi, const auto* fac, auto* dots) {
      int64_t c0 = 0, k0 = 0;
      for (size_t t = 0; t < nb; ++t) {
        const int64_t mul = b.mul[t], d = b.dim[t];
        by_width(d, [&](auto w) {
          bwd_block<decltype(w)::value, std::remove_cv_t<std::remove_pointer_t<decltype(fac)>>,
                    std::remove_pointer_t<decltype(dots)>, scalar_t, acc_t>(
              mul, d, fac + k0, mp + e * F + c0, gi + c0, gmp ? gmp + e * F + c0 : nullptr,
              dots ? dots + k0 : nullptr);
        });
        c0 += mul * d;
        k0 += mul;
      }
    };
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* gi = gp + i * F;
      for (int64_t e = p[i]; e < p[i + 1]; ++e) {
        if (!ap) {  // the dots are grad coef itself
          edge(e, gi, cp + e * K, gcp ? gcp + e * K : static_cast<scalar_t*>(nullptr));
          continue;
        }
        const scalar_t* __restrict__ ce = cp + e * K;
        head_period(ap + e * H, H, R, rep.data());
        edge_factors(b, ce, rep.data(), f.data());
        const bool dots = gcp || gap;
        edge(e, gi, static_cast<const acc_t*>(f.data()), dots ? dk.data() : nullptr);
        if (!dots) continue;
        const acc_t* __restrict__ d = dk.data();
        const acc_t* __restrict__ r = rep.data();
        acc_t* __restrict__ gs = gsum.data();
        if (gap) std::fill(gsum.begin(), gsum.end(), acc_t(0));
        int64_t k0 = 0;
        for (const int64_t mul : b.mul) {
          if (gcp) {
            scalar_t* __restrict__ o = gcp + e * K + k0;
#pragma omp simd
            for (int64_t u = 0; u < mul; ++u) o[u] = scalar_t(d[k0 + u] * r[u]);
          }
          if (gap) {
#pragma omp simd
            for (int64_t u = 0; u < mul; ++u) gs[u] += acc_t(ce[k0 + u]) * d[k0 + u];
          }
          k0 += mul;
        }
        if (gap) {  // channel u belongs to head u mod H
          scalar_t* __restrict__ o = gap + e * H;
          for (int64_t h = 0; h < H; ++h) {
            acc_t s = 0;
            for (int64_t u = h; u < R; u += H) s += gs[u];
            o[h] = scalar_t(s);
          }
        }
      }
    }
  });
}

at::Tensor scaled_aggregate_cpu(const at::Tensor& m_, const at::Tensor& coef_,
                                const at::Tensor& ptr, at::IntArrayRef muls,
                                at::IntArrayRef dims, const c10::optional<at::Tensor>& head_) {
  const Blocks b = check_blocks(muls, dims);
  check_inputs(m_, coef_, ptr, b);
  const int64_t H = check_head(head_, m_);
  const at::Tensor m = m_.contiguous(), coef = coef_.contiguous();
  const at::Tensor head = H ? head_->contiguous() : at::Tensor();
  const int64_t N = ptr.numel() - 1, E = m.size(0);
  at::Tensor out = at::empty({N, b.F}, m.options());
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "graphattn::scaled_aggregate", [&] {
    forward_kernel<scalar_t>(b, m.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>(),
                             H ? head.data_ptr<scalar_t>() : nullptr, H,
                             ptr.data_ptr<int64_t>(), N, E, out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scaled_aggregate_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& m_, const at::Tensor& coef_,
    const at::Tensor& ptr, at::IntArrayRef muls, at::IntArrayRef dims, bool need_messages,
    bool need_coef, const c10::optional<at::Tensor>& head_, bool need_head) {
  const Blocks b = check_blocks(muls, dims);
  check_inputs(m_, coef_, ptr, b);
  const int64_t H = check_head(head_, m_);
  TORCH_CHECK_VALUE(H > 0 || !need_head, "graphattn: 'need_head' without a 'head_coef'");
  const int64_t N = ptr.numel() - 1, E = m_.size(0), F = b.F, K = b.K;
  TORCH_CHECK_VALUE(grad_.dim() == 2 && grad_.size(0) == N && grad_.size(1) == F,
                    "graphattn: 'grad_out' must have shape [N=", N, ", F=", F, "], got ",
                    grad_.sizes());
  check_cpu_dtype(grad_, "grad_out", m_.scalar_type());
  const at::Tensor g = grad_.contiguous(), m = m_.contiguous(), coef = coef_.contiguous();
  const at::Tensor head = H ? head_->contiguous() : at::Tensor();
  // every edge lies in one row (check_ptr), so every row of the gradients is written
  at::Tensor gm = need_messages ? at::empty({E, F}, m.options()) : m.new_empty({0, F});
  at::Tensor gc = need_coef ? at::empty({E, K}, m.options()) : m.new_empty({0, K});
  at::Tensor ga = need_head ? at::empty({E, H}, m.options()) : m.new_empty({0, std::max<int64_t>(H, 1)});
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "graphattn::scaled_aggregate_backward", [&] {
    backward_kernel<scalar_t>(b, g.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                              coef.data_ptr<scalar_t>(), H ? head.data_ptr<scalar_t>() : nullptr,
                              H, ptr.data_ptr<int64_t>(), N, E,
                              need_messages ? gm.data_ptr<scalar_t>() : nullptr,
                              need_coef ? gc.data_ptr<scalar_t>() : nullptr,
                              need_head ? ga.data_ptr<scalar_t>() : nullptr);
  });
  return {gm, gc, ga};
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) {
  m.impl("scaled_aggregate", &scaled_aggregate_cpu);
  m.impl("scaled_aggregate_backward", &scaled_aggregate_backward_cpu);
}

}  // namespace graphattn
