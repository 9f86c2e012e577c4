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

template <typename T>
__device__ __forceinline__ T lrelu(T x, T slope) {
  return x > T(0) ? x : x * slope;
}
template <typename T>
__device__ __forceinline__ T dlrelu(T x, T slope) {
  return x > T(0) ? T(1) : slope;
}

// The (row, head) of this thread's warp and its lane; false for the warps past the end.
__device__ __forceinline__ bool warp_task(int64_t rows, int64_t H, int64_t& row, int64_t& h,
                                          int& lane) {
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  lane = threadIdx.x % kWarp;
  if (w >= rows * H) return false;  // uniform across the warp
  row = w / H;
  h = w % H;
  return true;
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

// row[lane + 32 t] = reg[t] (for the entries below n)
template <int T, typename out_t, typename acc_t>
__device__ __forceinline__ void store_row(out_t* __restrict__ row, int64_t n, int lane,
                                          const acc_t (&reg)[T]) {
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const int64_t d = lane + kWarp * t;
    if (d < n) row[d] = out_t(reg[t]);
  }
}

// Head h of row r of x [rows, H, D] into registers: the per-head scalar (in every lane) for
// 'additive', the lane-strided entries otherwise.
template <int KIND, int T, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_head(const scalar_t* __restrict__ x, int64_t r, int64_t H,
                                          int64_t h, int64_t D, int lane, acc_t (&reg)[T],
                                          acc_t& scalar) {
  if constexpr (KIND == ADDITIVE) {
    scalar = acc_t(x[r * H + h]);
  } else {
    load_row<T>(x + (r * H + h) * D, D, lane, reg);
  }
}

// The inverse of load_head: the per-head scalar is reg[0] (written by lane 0) for 'additive'.
template <int KIND, int T, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_head(scalar_t* __restrict__ x, int64_t r, int64_t H,
                                           int64_t h, int64_t D, int lane,
                                           const acc_t (&reg)[T]) {
  if constexpr (KIND == ADDITIVE) {
    if (lane == 0) x[r * H + h] = scalar_t(reg[0]);
  } else {
    store_row<T>(x + (r * H + h) * D, D, lane, reg);
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

inline int chunks_for(int64_t n) {
  return n <= 32 ? 1 : n <= 64 ? 2 : n <= 128 ? 4 : 8;
}

inline Dims check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const c10::optional<at::Tensor>& att,
                         const c10::optional<at::Tensor>& bias, const at::Tensor& ptr,
                         const at::Tensor& src, int64_t kind, bool validated) {
  TORCH_CHECK_VALUE(q.is_cuda(), "graphattn: 'q' must be a CUDA tensor for the CUDA kernel");
  const Dims d = check_attention_shapes(q, k, v, att, bias, ptr.numel() - 1, src.numel(), kind);
  TORCH_CHECK_VALUE(d.D <= kCudaMaxHeadDim && d.Dv <= kCudaMaxHeadDim,
                    "graphattn: the CUDA kernel takes head dims up to ",
                    kCudaMaxHeadDim, ", got D = ", d.D, ", Dv = ", d.Dv,
                    " (graphattn.ops.edge_attention routes larger heads to the reference path)");
  check_ptr(ptr, d.E, "ptr", q.device(), validated);
  check_range(src, d.Ns, "src", q.device(), validated);
  return d;
}

// Calls f(std::integral_constant<int, KIND>, std::integral_constant<int, T>).
template <typename F>
void dispatch_kind_chunks(int64_t kind, int chunks, F&& f) {
  dispatch_kind(kind, [&](auto kind_tag) {
    switch (chunks) {
      case 1: f(kind_tag, std::integral_constant<int, 1>{}); break;
      case 2: f(kind_tag, std::integral_constant<int, 2>{}); break;
      case 4: f(kind_tag, std::integral_constant<int, 4>{}); break;
      default: f(kind_tag, std::integral_constant<int, 8>{}); break;
    }
  });
}

}  // namespace cuda
}  // namespace graphattn
