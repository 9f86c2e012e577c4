// Device helpers and input checks shared by the CUDA forward and backward of
// edge_attention (edge_attention.cu, edge_attention_backward.cu).
//
// Work decomposition: one warp per (row, head). Lane l holds the feature entries
// l, l + 32, ..., l + 32 (T - 1) of that head in registers (T = ceil(max(D, Dv) / 32), at
// most 8, so head dims up to 256); a score is a warp reduction of the lanes' partial sums.
// The butterfly (xor) reduction leaves the bit-identical sum in every lane, so control flow
// that depends on a score is uniform across the warp.
#pragma once
#include "common.cuh"

namespace graphattn {
namespace cuda {

constexpr int64_t DOT = 0;
constexpr int64_t ADDITIVE = 1;
constexpr int64_t V2 = 2;
constexpr int64_t kMaxHeadDim = 32 * 8;

template <typename T>
__device__ __forceinline__ T lrelu(T x, T slope) {
  return x > T(0) ? x : x * slope;
}
template <typename T>
__device__ __forceinline__ T dlrelu(T x, T slope) {
  return x > T(0) ? T(1) : slope;
}

// reg[t] = row[lane + 32 t] (0 beyond n)
template <int T, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_row(const scalar_t* __restrict__ row, int64_t n, int lane,
                                         acc_t (&reg)[T]) {
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const int64_t d = lane + kWarp * t;
    reg[t] = d < n ? acc_t(row[d]) : acc_t(0);
  }
}

// Score of one edge for one head from register-resident q and k entries (all kinds but
// 'additive', whose per-head scalars qs, ks every lane holds). Returns the same value in
// every lane.
template <int KIND, int T, typename acc_t>
__device__ __forceinline__ acc_t score_regs(const acc_t (&qr)[T], const acc_t (&kr)[T],
                                            const acc_t (&ar)[T], acc_t qs, acc_t ks,
                                            acc_t scale, acc_t slope, acc_t b) {
  if constexpr (KIND == ADDITIVE) {
    return lrelu<acc_t>(qs + ks + b, slope);
  } else {
    acc_t part = 0;
#pragma unroll
    for (int t = 0; t < T; ++t) {
      if constexpr (KIND == DOT) {
        part += qr[t] * kr[t];
      } else {
        part += ar[t] * lrelu<acc_t>(qr[t] + kr[t], slope);
      }
    }
    const acc_t s = warp_sum(part);
    return KIND == DOT ? s * scale + b : s + b;
  }
}

struct Dims {
  int64_t Nd, Ns, E, H, D, Dv;
};

inline int chunks_for(int64_t n) {
  return n <= 32 ? 1 : n <= 64 ? 2 : n <= 128 ? 4 : 8;
}

inline Dims check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const c10::optional<at::Tensor>& att,
                         const c10::optional<at::Tensor>& bias, const at::Tensor& ptr,
                         const at::Tensor& src, int64_t kind) {
  TORCH_CHECK(kind == DOT || kind == ADDITIVE || kind == V2,
              "graphattn: 'kind' must be 0 (dot), 1 (additive) or 2 (v2), got ", kind);
  TORCH_CHECK(q.dim() == 3, "graphattn: 'q' must have shape [N_dst, H, D], got ", q.sizes());
  TORCH_CHECK(k.dim() == 3, "graphattn: 'k' must have shape [N_src, H, D], got ", k.sizes());
  TORCH_CHECK(v.dim() == 3, "graphattn: 'v' must have shape [N_src, H, Dv], got ", v.sizes());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "graphattn: 'q' must be float32 or float64, got ", q.scalar_type());
  TORCH_CHECK(q.is_cuda(), "graphattn: 'q' must be a CUDA tensor for the CUDA kernel");
  const at::Device dev = q.device();
  check_float(k, "k", q.scalar_type(), dev);
  check_float(v, "v", q.scalar_type(), dev);
  Dims d{};
  d.Nd = ptr.numel() - 1;
  d.Ns = k.size(0);
  d.E = src.numel();
  d.H = q.size(1);
  d.D = q.size(2);
  d.Dv = v.size(2);
  TORCH_CHECK(q.size(0) == d.Nd, "graphattn: 'q' has ", q.size(0),
              " rows but 'ptr' describes ", d.Nd, " destination nodes");
  TORCH_CHECK(v.size(0) == d.Ns, "graphattn: 'v' has ", v.size(0), " rows but 'k' has ", d.Ns);
  TORCH_CHECK(k.size(1) == d.H && v.size(1) == d.H, "graphattn: q, k, v must have the same "
              "number of heads, got ", d.H, ", ", k.size(1), ", ", v.size(1));
  TORCH_CHECK(k.size(2) == d.D, "graphattn: 'k' must have head dim ", d.D, " like 'q', got ",
              k.size(2));
  TORCH_CHECK(d.D <= kMaxHeadDim && d.Dv <= kMaxHeadDim, "graphattn: the CUDA kernel takes head "
              "dims up to ", kMaxHeadDim, ", got D = ", d.D, ", Dv = ", d.Dv,
              " (graphattn.ops.edge_attention routes larger heads to the reference path)");
  if (kind == ADDITIVE) {
    TORCH_CHECK(d.D == 1, "graphattn: kind 'additive' takes per-head scalars q, k of shape "
                "[N, H, 1], got head dim ", d.D);
  }
  if (kind == V2) {
    TORCH_CHECK(att.has_value() && att->defined(), "graphattn: kind 'v2' needs 'att' [H, D]");
    TORCH_CHECK(att->dim() == 2 && att->size(0) == d.H && att->size(1) == d.D,
                "graphattn: 'att' must have shape [", d.H, ", ", d.D, "], got ", att->sizes());
    check_float(*att, "att", q.scalar_type(), dev);
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 2 && bias->size(0) == d.E && bias->size(1) == d.H,
                "graphattn: 'bias' must have shape [E, H] = [", d.E, ", ", d.H, "], got ",
                bias->sizes());
    check_float(*bias, "bias", q.scalar_type(), dev);
  }
  check_ptr(ptr, d.E, "ptr", dev);
  check_range(src, d.Ns, "src", dev);
  return d;
}

// Calls f(std::integral_constant<int, KIND>, std::integral_constant<int, T>).
template <typename F>
void dispatch_kind_chunks(int64_t kind, int chunks, F&& f) {
  auto with_t = [&](auto kind_tag) {
    switch (chunks) {
      case 1: f(kind_tag, std::integral_constant<int, 1>{}); break;
      case 2: f(kind_tag, std::integral_constant<int, 2>{}); break;
      case 4: f(kind_tag, std::integral_constant<int, 4>{}); break;
      default: f(kind_tag, std::integral_constant<int, 8>{}); break;
    }
  };
  if (kind == DOT) with_t(std::integral_constant<int, DOT>{});
  else if (kind == ADDITIVE) with_t(std::integral_constant<int, ADDITIVE>{});
  else with_t(std::integral_constant<int, V2>{});
}

}  // namespace cuda
}  // namespace graphattn
