// Fused edge attention forward on the GPU: scores -> softmax over each destination's
// in-edges -> weighted sum of values, without ever materialising an [E, H, C] tensor.
//
// One warp per (destination row, head) walks the row's in-edges of the dst-sorted CSR once:
// the score is a warp reduction over the head's entries, the softmax is online (the
// register accumulator of the weighted values is rescaled whenever the running max grows),
// and the value rows are read coalesced (32 lanes over a head's channels). Only the per-row
// log-sum-exp [N_dst, H] is saved (plus the [E, H] weights when asked for, recomputed from
// it in a second walk over the row).
#include <torch/library.h>

#include "edge_attention.cuh"

namespace graphattn {
namespace cuda {
namespace {

template <int KIND, int T, typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                   const scalar_t* __restrict__ v, const scalar_t* __restrict__ att,
                   const scalar_t* __restrict__ bias, const int64_t* __restrict__ ptr,
                   const int64_t* __restrict__ src, Dims dm, double scale_, double slope_,
                   scalar_t* __restrict__ out, scalar_t* __restrict__ lse,
                   scalar_t* __restrict__ weights) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t H = dm.H, D = dm.D, Dv = dm.Dv;
  int64_t i, h;
  int lane;
  if (!warp_task(dm.Nd, H, i, h, lane)) return;
  const acc_t scale = acc_t(scale_), slope = acc_t(slope_);

  acc_t qr[T], kr[T], ar[T], vr[T], acc[T];
  acc_t qs = 0;
  load_head<KIND, T>(q, i, H, h, D, lane, qr, qs);
  if constexpr (KIND == V2) load_row<T>(att + h * D, D, lane, ar);
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = 0;

  // the score of in-edge e (source j); leaves k_j's head in kr
  auto score_of = [&](int64_t e, int64_t j) -> acc_t {
    acc_t ks = 0;
    load_head<KIND, T>(k, j, H, h, D, lane, kr, ks);
    const acc_t b = bias ? acc_t(bias[e * H + h]) : acc_t(0);
    return score_regs<KIND, T, acc_t>(qr, kr, ar, qs, ks, scale, slope, b);
  };
  const int64_t e0 = ptr[i], e1 = ptr[i + 1];
  acc_t m = neg_inf<acc_t>(), l = 0;
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t j = src[e];
    const acc_t s = score_of(e, j);
    // a masked edge (-inf) adds nothing; a NaN score is not skipped: it makes l and acc NaN
    // (and +inf: exp(inf - inf)), so the (row, head) comes out NaN, as torch.softmax gives
    if (s == neg_inf<acc_t>()) continue;
    const acc_t m_new = s > m ? s : m;
    const acc_t corr = dev_exp<acc_t>(m - m_new);  // 0 for the first live edge (m = -inf)
    const acc_t p = dev_exp<acc_t>(s - m_new);
    l = l * corr + p;
    load_row<T>(v + (j * H + h) * Dv, Dv, lane, vr);
#pragma unroll
    for (int t = 0; t < T; ++t) acc[t] = acc[t] * corr + p * vr[t];
    m = m_new;
  }
  // l is 0 only for an empty or fully masked neighbourhood: zeros and lse = -inf, never NaN
  const bool live = l != acc_t(0);
  const acc_t inv = live ? acc_t(1) / l : acc_t(0);
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] *= inv;
  store_row<T>(out + (i * H + h) * Dv, Dv, lane, acc);
  const acc_t lsei = live ? m + log(l) : neg_inf<acc_t>();
  if (lane == 0) lse[i * H + h] = scalar_t(lsei);
  if (weights) {
    for (int64_t e = e0; e < e1; ++e) {
      const acc_t s = score_of(e, src[e]);
      // from the row's max and sum in registers, not the rounded lse: exp(s - lse) would
      // carry the rounding of lse (an ulp of the max, 1e-3 at scores of 1e4 in float32)
      if (lane == 0) weights[e * H + h] = live ? scalar_t(dev_exp<acc_t>(s - m) * inv) : scalar_t(0);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> edge_attention_cuda(
    const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const c10::optional<at::Tensor>& att_, const c10::optional<at::Tensor>& bias_,
    const at::Tensor& ptr, const at::Tensor& src, const at::Tensor& /*csc_ptr*/,
    const at::Tensor& /*csc_eid*/, const at::Tensor& /*csc_dst*/, int64_t kind, double scale,
    double negative_slope, bool return_weights, bool validated) {
  const c10::cuda::CUDAGuard guard(q_.device());
  const Dims dm = check_inputs(q_, k_, v_, att_, bias_, ptr, src, kind, validated);
  const AttentionInputs in = contiguous_inputs(q_, k_, v_, att_, bias_, kind);
  const at::Tensor &q = in.q, &k = in.k, &v = in.v, &att = in.att, &bias = in.bias;
  const bool has_att = in.has_att, has_bias = in.has_bias;
  at::Tensor out, lse, weights;
  std::tie(out, lse, weights) = forward_outputs(dm, q, return_weights);
  const int64_t warps = dm.Nd * dm.H;
  if (warps == 0) return {out, lse, weights};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "graphattn::edge_attention_cuda", [&] {
    dispatch_kind_chunks(kind, chunks_for(std::max(dm.D, dm.Dv)), [&](auto kind_tag, auto t_tag) {
      forward_kernel<decltype(kind_tag)::value, decltype(t_tag)::value, scalar_t>
          <<<blocks_for(warps * kWarp), kBlock, 0, stream>>>(
              q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
              has_att ? att.data_ptr<scalar_t>() : nullptr,
              has_bias ? bias.data_ptr<scalar_t>() : nullptr, ptr.data_ptr<int64_t>(),
              src.data_ptr<int64_t>(), dm, scale, negative_slope, out.data_ptr<scalar_t>(),
              lse.data_ptr<scalar_t>(), return_weights ? weights.data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, lse, weights};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(graphattn, CUDA, m) {
  m.impl("edge_attention", &cuda::edge_attention_cuda);
}

}  // namespace graphattn
