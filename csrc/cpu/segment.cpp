// Segment softmax and segment reductions (sum / mean / max with argmax) over a
// destination-sorted CSR: one destination row per task, no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"
#include "fast_exp.h"
#include "grain.h"

namespace graphattn {
namespace {

void check_edge_tensor(const at::Tensor& t, const at::Tensor& ptr, const char* name,
                       bool validated) {
  check_edge_values(t, name);
  TORCH_CHECK_VALUE(t.device().is_cpu(), "graphattn: '", name, "' must be on the CPU");
  check_ptr(ptr, t.size(0), "ptr", validated);
}

// Softmax of the rows begin..end, HC heads as a compile-time constant (0: H at run time), so
// that the head loops unroll and vectorise.
template <int HC, typename scalar_t>
void softmax_rows(const scalar_t* s, scalar_t* o, const int64_t* p, int64_t H_, int64_t begin,
                  int64_t end) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t H = HC ? HC : H_;
  const acc_t NEG_INF = -std::numeric_limits<acc_t>::infinity();
  std::vector<acc_t> mx_v(HC ? 0 : H), sum_v(HC ? 0 : H);
  acc_t mx_a[HC ? HC : 1], sum_a[HC ? HC : 1];
  acc_t* __restrict__ mx = HC ? mx_a : mx_v.data();
  acc_t* __restrict__ sum = HC ? sum_a : sum_v.data();
  for (int64_t i = begin; i < end; ++i) {
    for (int64_t h = 0; h < H; ++h) {
      mx[h] = NEG_INF;
      sum[h] = 0;
    }
    for (int64_t e = p[i]; e < p[i + 1]; ++e)
      for (int64_t h = 0; h < H; ++h) mx[h] = std::max(mx[h], acc_t(s[e * H + h]));
    // a head whose scores are all -inf: shift by 0, so exp(-inf) = 0 without a branch
    for (int64_t h = 0; h < H; ++h) mx[h] = mx[h] > NEG_INF ? mx[h] : acc_t(0);
    for (int64_t e = p[i]; e < p[i + 1]; ++e)
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) {
        const acc_t x = fast_exp<acc_t>(acc_t(s[e * H + h]) - mx[h]);
        sum[h] += x;
        o[e * H + h] = scalar_t(x);
      }
    // no (or only -inf) scores: zeros, never NaN; a NaN score (or +inf, whose shift is
    // inf - inf) makes its whole (row, head) NaN, as torch.softmax does
    for (int64_t h = 0; h < H; ++h) sum[h] = sum[h] != acc_t(0) ? acc_t(1) / sum[h] : acc_t(0);
    for (int64_t e = p[i]; e < p[i + 1]; ++e)
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) o[e * H + h] = scalar_t(acc_t(o[e * H + h]) * sum[h]);
  }
}

at::Tensor segment_softmax_cpu(const at::Tensor& scores_, const at::Tensor& ptr,
                               bool validated) {
  check_edge_tensor(scores_, ptr, "scores", validated);
  const at::Tensor scores = scores_.contiguous();
  const int64_t N = ptr.numel() - 1, E = scores.size(0), H = scores.size(1);
  at::Tensor out = at::empty_like(scores);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "graphattn::segment_softmax", [&] {
    const scalar_t* s = scores.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t* p = ptr.data_ptr<int64_t>();
    at::parallel_for(0, N, row_grain(N, E, H), [&](int64_t begin, int64_t end) {
      if (H == 1) return softmax_rows<1>(s, o, p, H, begin, end);
      if (H == 4) return softmax_rows<4>(s, o, p, H, begin, end);
      if (H == 8) return softmax_rows<8>(s, o, p, H, begin, end);
      softmax_rows<0>(s, o, p, H, begin, end);
    });
  });
  return out;
}

at::Tensor segment_softmax_backward_cpu(const at::Tensor& out_, const at::Tensor& grad_,
                                        const at::Tensor& ptr, bool validated) {
  check_edge_tensor(out_, ptr, "out", validated);
  TORCH_CHECK_VALUE(grad_.sizes() == out_.sizes(), "graphattn: 'grad_out' must have shape ",
                    out_.sizes(), ", got ", grad_.sizes());
  check_float(grad_, "grad_out", out_.scalar_type(), out_.device());
  const at::Tensor out = out_.contiguous(), grad = grad_.contiguous();
  const int64_t N = ptr.numel() - 1, E = out.size(0), H = out.size(1);
  at::Tensor gin = at::empty_like(out);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "graphattn::segment_softmax_backward", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    const scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* gi = gin.data_ptr<scalar_t>();
    const int64_t* p = ptr.data_ptr<int64_t>();
    at::parallel_for(0, N, row_grain(N, E, H), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> dot(H);
      for (int64_t i = begin; i < end; ++i) {
        std::fill(dot.begin(), dot.end(), acc_t(0));
        for (int64_t e = p[i]; e < p[i + 1]; ++e)
          for (int64_t h = 0; h < H; ++h) dot[h] += acc_t(o[e * H + h]) * acc_t(g[e * H + h]);
        for (int64_t e = p[i]; e < p[i + 1]; ++e)
          for (int64_t h = 0; h < H; ++h)
            gi[e * H + h] = scalar_t(acc_t(o[e * H + h]) * (acc_t(g[e * H + h]) - dot[h]));
      }
    });
  });
  return gin;
}

std::tuple<at::Tensor, at::Tensor> segment_reduce_cpu(const at::Tensor& src_,
                                                      const at::Tensor& ptr,
                                                      c10::string_view reduce_,
                                                      bool validated) {
  const std::string reduce(reduce_);
  const int code = reduce_code(reduce);
  check_edge_tensor(src_, ptr, "src", validated);
  const at::Tensor src = src_.contiguous();
  const int64_t N = ptr.numel() - 1, E = src.size(0), F = src.size(1);
  at::Tensor out = at::empty({N, F}, src.options());
  at::Tensor arg = at::empty({code == 2 ? N : 0, F}, ptr.options());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "graphattn::segment_reduce", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    int64_t* a = code == 2 ? arg.data_ptr<int64_t>() : nullptr;
    const int64_t* p = ptr.data_ptr<int64_t>();
    at::parallel_for(0, N, row_grain(N, E, F), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(F);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t deg = p[i + 1] - p[i];
        if (code == 2) {
          for (int64_t f = 0; f < F; ++f) {
            a[i * F + f] = -1;
            acc[f] = -std::numeric_limits<acc_t>::infinity();
          }
          for (int64_t e = p[i]; e < p[i + 1]; ++e)
            for (int64_t f = 0; f < F; ++f) {
              const acc_t x = acc_t(s[e * F + f]);
              // the first NaN wins and stays (torch's max propagates NaN; a plain > skips it)
              const bool nan_first = x != x && acc[f] == acc[f];
              if (x > acc[f] || nan_first || a[i * F + f] < 0) {
                acc[f] = x;
                a[i * F + f] = e;
              }
            }
          for (int64_t f = 0; f < F; ++f) o[i * F + f] = deg > 0 ? scalar_t(acc[f]) : scalar_t(0);
        } else {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t e = p[i]; e < p[i + 1]; ++e)
            for (int64_t f = 0; f < F; ++f) acc[f] += acc_t(s[e * F + f]);
          const acc_t scale = (code == 1 && deg > 0) ? acc_t(1) / acc_t(deg) : acc_t(1);
          for (int64_t f = 0; f < F; ++f) o[i * F + f] = scalar_t(acc[f] * scale);
        }
      }
    });
  });
  return {out, arg};
}

at::Tensor segment_reduce_backward_cpu(const at::Tensor& grad_, const at::Tensor& ptr,
                                       const at::Tensor& arg, c10::string_view reduce_,
                                       int64_t num_edges, bool validated) {
  const std::string reduce(reduce_);
  const int code = reduce_code(reduce);
  check_ptr(ptr, num_edges, "ptr", validated);
  check_reduce_backward_shapes(grad_, ptr, arg, code);
  const at::Tensor grad = grad_.contiguous();
  const int64_t N = ptr.numel() - 1, F = grad.size(1);
  // ptr covers every edge exactly once (check_ptr), so each row of gin is written below: no
  // zero fill beforehand (for max, each segment zeroes its own rows, in the same pass)
  at::Tensor gin = at::empty({num_edges, F}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "graphattn::segment_reduce_backward", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* gi = gin.data_ptr<scalar_t>();
    const int64_t* p = ptr.data_ptr<int64_t>();
    const at::Tensor argc = code == 2 ? arg.contiguous() : arg;
    const int64_t* a = code == 2 ? argc.data_ptr<int64_t>() : nullptr;
    at::parallel_for(0, N, row_grain(N, num_edges, F), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t deg = p[i + 1] - p[i];
        if (deg == 0) continue;
        if (code == 2) {
          std::fill(gi + p[i] * F, gi + p[i + 1] * F, scalar_t(0));
          for (int64_t f = 0; f < F; ++f) {
            const int64_t e = a[i * F + f];
            TORCH_CHECK_VALUE(e >= p[i] && e < p[i + 1], "graphattn: 'arg' holds ", e,
                              " outside segment ", i);
            gi[e * F + f] = g[i * F + f];
          }
        } else {
          const scalar_t scale = code == 1 ? scalar_t(1) / scalar_t(deg) : scalar_t(1);
          for (int64_t e = p[i]; e < p[i + 1]; ++e)
            for (int64_t f = 0; f < F; ++f) gi[e * F + f] = g[i * F + f] * scale;
        }
      }
    });
  });
  return gin;
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) {
  m.impl("segment_softmax", &segment_softmax_cpu);
  m.impl("segment_softmax_backward", &segment_softmax_backward_cpu);
  m.impl("segment_reduce", &segment_reduce_cpu);
  m.impl("segment_reduce_backward", &segment_reduce_backward_cpu);
}

}  // namespace graphattn
