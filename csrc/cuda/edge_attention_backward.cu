// Backward of the fused edge attention on the GPU, deterministic (no atomics) and without
// any [E, H, C] buffer. Two kernels, each one warp per (row, head):
//
//   pass A (destination rows): walk 1 recomputes p_e = exp(s_e - lse_i) and
//     dp_e = dO_i . v_j (+ gw_e) and sums delta_i = sum_e p_e dp_e (= rowsum(dO_i * O_i),
//     so the output need not be saved); walk 2 forms ds_e = p_e (dp_e - delta_i) and
//     accumulates grad q_i in registers, writes grad bias_e, and (v2) the row's share of
//     grad att (summed over rows afterwards, in a fixed order);
//   pass B (source rows, through the CSC view): the same recomputation from the q_i and dO_i
//     rows it gathers; grad v_j = sum_e p_e dO_i and grad k_j from ds_e, in registers.
#include <torch/library.h>

#include "edge_attention.cuh"

namespace graphattn {
namespace cuda {
namespace {

// p_e and dp_e of one edge, the same value in every lane
template <int KIND, int T, typename acc_t, typename scalar_t>
__device__ __forceinline__ void prob_dp(const acc_t (&qr)[T], const acc_t (&kr)[T],
                                        const acc_t (&ar)[T], acc_t qs, acc_t ks,
                                        const acc_t (&gor)[T], const acc_t (&vr)[T], acc_t scale,
                                        acc_t slope, acc_t b, acc_t l,
                                        const scalar_t* __restrict__ gw, int64_t ge, acc_t& p,
                                        acc_t& dp) {
  const acc_t s = score_regs<KIND, T, acc_t>(qr, kr, ar, qs, ks, scale, slope, b);
  acc_t part = 0;
#pragma unroll
  for (int t = 0; t < T; ++t) part += gor[t] * vr[t];
  dp = warp_sum(part) + (gw ? acc_t(gw[ge]) : acc_t(0));
  p = dev_exp<acc_t>(s - l);
}

template <int KIND, int T, typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    backward_dst_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ gw,
                        const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                        const scalar_t* __restrict__ v, const scalar_t* __restrict__ att,
                        const scalar_t* __restrict__ bias, const scalar_t* __restrict__ lse,
                        const int64_t* __restrict__ ptr, const int64_t* __restrict__ src,
                        Dims dm, double scale_, double slope_, scalar_t* __restrict__ gq,
                        scalar_t* __restrict__ gbias,
                        typename Acc<scalar_t>::type* __restrict__ gatt_rows,
                        typename Acc<scalar_t>::type* __restrict__ delta) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t H = dm.H, D = dm.D, Dv = dm.Dv;
  int64_t i, h;
  int lane;
  if (!warp_task(dm.Nd, H, i, h, lane)) return;
  const acc_t scale = acc_t(scale_), slope = acc_t(slope_);
  const acc_t l = acc_t(lse[i * H + h]);
  const int64_t e0 = ptr[i], e1 = ptr[i + 1];

  acc_t qr[T], kr[T], ar[T], vr[T], gor[T], g[T], ga[T];
  acc_t qs = 0, ks = 0;
#pragma unroll
  for (int t = 0; t < T; ++t) g[t] = ga[t] = 0;
  acc_t dl = 0;
  if (l != neg_inf<acc_t>()) {  // else a fully masked (or empty) row: nothing flows back
                                 // (a NaN row, lse = NaN, gives NaN gradients)
    load_head<KIND, T>(q, i, H, h, D, lane, qr, qs);
    if constexpr (KIND == V2) load_row<T>(att + h * D, D, lane, ar);
    load_row<T>(go + (i * H + h) * Dv, Dv, lane, gor);
    // p_e, dp_e and the bias of in-edge e; leaves k_j (kr or ks) and v_j (vr) in registers
    auto edge_terms = [&](int64_t e, acc_t& b, acc_t& p, acc_t& dp) {
      const int64_t j = src[e];
      load_head<KIND, T>(k, j, H, h, D, lane, kr, ks);
      load_row<T>(v + (j * H + h) * Dv, Dv, lane, vr);
      b = bias ? acc_t(bias[e * H + h]) : acc_t(0);
      prob_dp<KIND, T>(qr, kr, ar, qs, ks, gor, vr, scale, slope, b, l, gw, e * H + h, p, dp);
    };
    // walk 1: delta_i
    for (int64_t e = e0; e < e1; ++e) {
      acc_t b, p, dp;
      edge_terms(e, b, p, dp);
      dl += p * dp;
    }
    // walk 2: ds_e -> grad q_i, grad bias_e, grad att
    for (int64_t e = e0; e < e1; ++e) {
      acc_t b, p, dp;
      edge_terms(e, b, p, dp);
      acc_t ds = p * (dp - dl);
      if constexpr (KIND == ADDITIVE) {
        ds *= dlrelu<acc_t>(qs + ks + b, slope);
        g[0] += ds;
      } else if constexpr (KIND == DOT) {
#pragma unroll
        for (int t = 0; t < T; ++t) g[t] += ds * scale * kr[t];
      } else {
#pragma unroll
        for (int t = 0; t < T; ++t) {
          const acc_t z = qr[t] + kr[t];
          g[t] += ds * ar[t] * dlrelu<acc_t>(z, slope);
          ga[t] += ds * lrelu<acc_t>(z, slope);
        }
      }
      if (gbias && lane == 0) gbias[e * H + h] = scalar_t(ds);
    }
  }
  store_head<KIND, T>(gq, i, H, h, D, lane, g);
  if constexpr (KIND == V2) store_row<T>(gatt_rows + (i * H + h) * D, D, lane, ga);
  if (lane == 0) delta[i * H + h] = dl;
}

template <int KIND, int T, typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    backward_src_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ gw,
                        const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                        const scalar_t* __restrict__ v, const scalar_t* __restrict__ att,
                        const scalar_t* __restrict__ bias, const scalar_t* __restrict__ lse,
                        const typename Acc<scalar_t>::type* __restrict__ delta,
                        const int64_t* __restrict__ cptr, const int64_t* __restrict__ ceid,
                        const int64_t* __restrict__ cdst, Dims dm, double scale_,
                        double slope_, scalar_t* __restrict__ gk, scalar_t* __restrict__ gv,
                        bool kv_shared) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t H = dm.H, D = dm.D, Dv = dm.Dv;
  int64_t j, h;
  int lane;
  if (!warp_task(dm.Ns, H, j, h, lane)) return;
  const acc_t scale = acc_t(scale_), slope = acc_t(slope_);

  acc_t qr[T], kr[T], ar[T], vr[T], gor[T], gkr[T], gvr[T];
  acc_t qs = 0, ks = 0;
  load_head<KIND, T>(k, j, H, h, D, lane, kr, ks);
  if constexpr (KIND == V2) load_row<T>(att + h * D, D, lane, ar);
  load_row<T>(v + (j * H + h) * Dv, Dv, lane, vr);
#pragma unroll
  for (int t = 0; t < T; ++t) gkr[t] = gvr[t] = 0;
  for (int64_t c = cptr[j]; c < cptr[j + 1]; ++c) {
    const int64_t e = ceid[c], i = cdst[c];
    const acc_t l = acc_t(lse[i * H + h]);
    if (l == neg_inf<acc_t>()) continue;  // masked row; a NaN one propagates NaN
    load_head<KIND, T>(q, i, H, h, D, lane, qr, qs);
    load_row<T>(go + (i * H + h) * Dv, Dv, lane, gor);
    const acc_t b = bias ? acc_t(bias[e * H + h]) : acc_t(0);
    acc_t p, dp;
    prob_dp<KIND, T>(qr, kr, ar, qs, ks, gor, vr, scale, slope, b, l, gw, e * H + h, p, dp);
    acc_t ds = p * (dp - delta[i * H + h]);
#pragma unroll
    for (int t = 0; t < T; ++t) gvr[t] += p * gor[t];
    if constexpr (KIND == ADDITIVE) {
      gkr[0] += ds * dlrelu<acc_t>(qs + ks + b, slope);
    } else if constexpr (KIND == DOT) {
#pragma unroll
      for (int t = 0; t < T; ++t) gkr[t] += ds * scale * qr[t];
    } else {
#pragma unroll
      for (int t = 0; t < T; ++t) gkr[t] += ds * ar[t] * dlrelu<acc_t>(qr[t] + kr[t], slope);
    }
  }
  if (kv_shared) {  // k is v (same shape, so D == Dv): one gradient, grad k + grad v
#pragma unroll
    for (int t = 0; t < T; ++t) gkr[t] += gvr[t];
  } else {
    store_row<T>(gv + (j * H + h) * Dv, Dv, lane, gvr);
  }
  store_head<KIND, T>(gk, j, H, h, D, lane, gkr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
edge_attention_backward_cuda(const at::Tensor& grad_out_,
                             const c10::optional<at::Tensor>& grad_weights_, const at::Tensor& q_,
                             const at::Tensor& k_, const at::Tensor& v_,
                             const c10::optional<at::Tensor>& att_,
                             const c10::optional<at::Tensor>& bias_, const at::Tensor& lse_,
                             const at::Tensor& ptr, const at::Tensor& src,
                             const at::Tensor& csc_ptr, const at::Tensor& csc_eid,
                             const at::Tensor& csc_dst, int64_t kind, double scale,
                             double negative_slope, bool kv_shared, bool validated) {
  const c10::cuda::CUDAGuard guard(q_.device());
  const Dims dm = check_inputs(q_, k_, v_, att_, bias_, ptr, src, kind, validated);
  const at::Device dev = q_.device();
  const bool has_gw = check_backward_shapes(dm, q_, k_, v_, grad_out_, grad_weights_, lse_,
                                            csc_ptr, csc_eid, csc_dst, kv_shared);
  check_ptr(csc_ptr, dm.E, "csc_ptr", dev, validated);
  check_range(csc_eid, dm.E, "csc_eid", dev, validated);
  check_range(csc_dst, dm.Nd, "csc_dst", dev, validated);
  const AttentionInputs in = contiguous_inputs(q_, k_, v_, att_, bias_, kind);
  const at::Tensor &q = in.q, &k = in.k, &v = in.v, &att = in.att, &bias = in.bias;
  const bool has_att = in.has_att, has_bias = in.has_bias;
  const at::Tensor go = grad_out_.contiguous(), lse = lse_.contiguous();
  const at::Tensor gw = has_gw ? grad_weights_->contiguous() : at::Tensor();

  const auto acc_dtype = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor gq = at::empty_like(q), gk = at::empty_like(k);
  at::Tensor gv = kv_shared ? at::empty({0}, v.options()) : at::empty_like(v);
  at::Tensor gbias = has_bias ? at::zeros_like(bias) : at::empty({0}, q.options());
  at::Tensor delta = at::empty({dm.Nd, dm.H}, q.options().dtype(acc_dtype));
  at::Tensor gatt_rows =
      has_att ? at::empty({dm.Nd, dm.H, dm.D}, q.options().dtype(acc_dtype)) : at::Tensor();
  const int64_t warps_a = dm.Nd * dm.H, warps_b = dm.Ns * dm.H;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "graphattn::edge_attention_backward_cuda", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    const scalar_t* attp = has_att ? att.data_ptr<scalar_t>() : nullptr;
    const scalar_t* bp = has_bias ? bias.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gwp = has_gw ? gw.data_ptr<scalar_t>() : nullptr;
    dispatch_kind_chunks(kind, chunks_for(std::max(dm.D, dm.Dv)), [&](auto kind_tag, auto t_tag) {
      constexpr int KIND = decltype(kind_tag)::value, T = decltype(t_tag)::value;
      if (warps_a > 0) {
        backward_dst_kernel<KIND, T, scalar_t><<<blocks_for(warps_a * kWarp), kBlock, 0, stream>>>(
            go.data_ptr<scalar_t>(), gwp, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
            v.data_ptr<scalar_t>(), attp, bp, lse.data_ptr<scalar_t>(), ptr.data_ptr<int64_t>(),
            src.data_ptr<int64_t>(), dm, scale, negative_slope, gq.data_ptr<scalar_t>(),
            has_bias ? gbias.data_ptr<scalar_t>() : nullptr,
            has_att ? gatt_rows.data_ptr<acc_t>() : nullptr, delta.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (warps_b > 0) {
        backward_src_kernel<KIND, T, scalar_t><<<blocks_for(warps_b * kWarp), kBlock, 0, stream>>>(
            go.data_ptr<scalar_t>(), gwp, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
            v.data_ptr<scalar_t>(), attp, bp, lse.data_ptr<scalar_t>(), delta.data_ptr<acc_t>(),
            csc_ptr.data_ptr<int64_t>(), csc_eid.data_ptr<int64_t>(),
            csc_dst.data_ptr<int64_t>(), dm, scale, negative_slope, gk.data_ptr<scalar_t>(),
            kv_shared ? nullptr : gv.data_ptr<scalar_t>(), kv_shared);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  // grad att: the rows' shares summed in a fixed order (deterministic)
  at::Tensor gatt = has_att ? gatt_rows.sum(0).to(q.scalar_type()) : at::empty({0}, q.options());
  return {gq, gk, gv, gatt, gbias};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(graphattn, CUDA, m) {
  m.impl("edge_attention_backward", &cuda::edge_attention_backward_cuda);
}

}  // namespace graphattn
