// Fused edge attention on the CPU: scores -> softmax over each destination's in-edges ->
// weighted sum of values, without ever materialising an [E, H, C] tensor.
//
// Forward: one destination row per task (at::parallel_for over rows of the dst-sorted
// CSR); scores are computed on the fly, the softmax uses an online max / sum
// (FlashAttention style: the accumulator is rescaled when the running max grows), and the
// weighted values are accumulated in a row-local buffer of H * Dv. Only the per-row
// log-sum-exp [N_dst, H] is saved (plus the [E, H] weights when asked for).
//
// Backward, without atomics and with at most one per-edge buffer of 2H values (below):
//   pass A (by destination rows): recompute p_e = exp(s_e - lse_i), dp_e = dO_i . v_j
//     (+ gw_e when the returned weights receive a gradient), delta_i = sum_e p_e dp_e
//     (= rowsum(dO_i * O_i), so O is not saved), ds_e = p_e (dp_e - delta_i); accumulate
//     grad q_i (and the per-edge grad bias, and grad att for v2).
//   pass B (by source rows, through the CSC view): the same recomputation from the q_i and
//     dO_i rows it gathers anyway; grad v_j = sum_e p_e dO_i and grad k_j from ds_e. Pass A
//     packs lse_i and delta_i into one short record per destination, so pass B's random
//     reads per edge are dO_i, q_i and that record.
//   Where a per-edge record [E, 2H] is no larger than grad_out [N_dst, H, Dv]
//   (use_edge_record: mean in-degree <= Dv / 2), pass A writes (p_e, ds_e) there and pass B
//   reads it in place of the recomputation (its scores, dp_e and exponentials: about a third
//   of its time); the split ops (edge_attention_backward_dst / _src,
//   graphattn.ops.projected_attention) take the record from their caller.
// 'additive' (GAT) scores need no row gather (q_i, k_j are one scalar per head), so its
// backward gathers rows once instead of twice: by source rows first (dO_i gathered: dp_e,
// grad v_j and a per-edge record [E, 2H]), then by destination rows streaming that record
// (delta_i, ds_e, grad q_i), then one short pass by source rows for grad k_j = sum_e ds_e
// (backward_additive).
// Per-edge arithmetic: the per-head dot products (scores, dO_i . v_j) reduce four heads at
// once where the shapes allow (head_sums.h), and the exponentials are taken in one
// vectorised loop per destination row (forward, pass A) or per chunk of kChunk out-edges
// (pass B), not one scalar call per edge and head: both had cost more than the gathers.
// grad_out is read in place when each of its rows is contiguous, whatever the row stride (0
// for the broadcast gradient of out.sum()): no [N, H, Dv] copy of it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "fast_exp.h"
#include "head_sums.h"

namespace graphattn {
namespace {

// Scores of the edge j -> i for every head into sc[0..H): qi, kj point at the rows' H * D
// entries, bias_e at the edge's H biases (or null). 'dot' and 'v2' reduce through head_sums
// (four heads at once where it can); 'additive' has one scalar per head.
template <int KIND, int DC, typename scalar_t, typename acc_t>
inline void edge_scores(const scalar_t* __restrict__ qi, const scalar_t* __restrict__ kj,
                        const scalar_t* __restrict__ att, const scalar_t* __restrict__ bias_e,
                        int64_t H, int64_t D, acc_t scale, acc_t slope,
                        acc_t* __restrict__ sc) {
  if constexpr (KIND == ADDITIVE) {
    for (int64_t h = 0; h < H; ++h)
      sc[h] = lrelu<acc_t>(acc_t(qi[h]) + acc_t(kj[h]) + (bias_e ? acc_t(bias_e[h]) : acc_t(0)),
                           slope);
  } else {
    head_sums<KIND, DC, scalar_t, acc_t>(qi, kj, att, H, D, slope, sc);
    for (int64_t h = 0; h < H; ++h)
      sc[h] = (KIND == DOT ? sc[h] * scale : sc[h]) + (bias_e ? acc_t(bias_e[h]) : acc_t(0));
  }
}

// The softmax exponentials use fast_exp (fast_exp.h); their argument is <= 0 here (scores
// minus their row max, or minus the saved log-sum-exp).

// Calls f(HC, DC, DVC) with the head count H and the head widths D, Dv as compile-time
// constants (std::integral_constant) for the common shapes; 0 for each one read at run time.
// The kernels take them as template arguments (`HC ? HC : dm.H`, ...).
template <typename F>
void dispatch_dims(const Dims& dm, F&& f) {
  using I0 = std::integral_constant<int, 0>;
  using I1 = std::integral_constant<int, 1>;
  using I4 = std::integral_constant<int, 4>;
  using I32 = std::integral_constant<int, 32>;
  using I64 = std::integral_constant<int, 64>;
  if (dm.D == 32 && dm.Dv == 32) return dm.H == 4 ? f(I4{}, I32{}, I32{}) : f(I0{}, I32{}, I32{});
  if (dm.D == 64 && dm.Dv == 64) return f(I0{}, I64{}, I64{});
  if (dm.D == 1 && dm.Dv == 32)  // 'additive' (GAT) with C = 32
    return dm.H == 4 ? f(I4{}, I1{}, I32{}) : f(I0{}, I1{}, I32{});
  return f(I0{}, I0{}, I0{});
}

// software prefetch of a gathered row a few edges ahead: the kernels are bound by the
// latency of random row reads, not by arithmetic.
constexpr int64_t kPrefetch = 10;
template <typename T>
inline void prefetch_row(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 1);
}

// p[t] = exp(x[t]) in place, in one loop that vectorises (fast_exp.h)
template <typename T>
inline void exps(T* __restrict__ x, int64_t n) {
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) x[t] = fast_exp<T>(x[t]);
}

// out-edges per chunk of the backward's pass by source rows: their rows stay in L1 between
// the chunk's scores and its accumulation
constexpr int64_t kChunk = 16;

// Width of the per-destination record the backward packs for its passes by source rows:
// [lse_i (H), delta_i (H)] ('dot', 'v2') or [lse_i (H), q_i (H)] ('additive').
constexpr int64_t stats_width(int64_t H) { return 2 * H; }

// grad_out's rows as (tensor, row stride): read in place when each row's [H, Dv] block is
// contiguous, whatever the stride between rows (0 for a broadcast gradient such as that of
// out.sum()); a broadcast gradient with a non-contiguous row becomes one contiguous row.
struct RowView {
  at::Tensor t;
  int64_t stride;
};
inline RowView row_view(const at::Tensor& g) {
  const int64_t N = g.size(0), H = g.size(1), Dv = g.size(2);
  const bool row_contig = (Dv <= 1 || g.stride(2) == 1) && (H <= 1 || g.stride(1) == Dv);
  if (N > 0 && row_contig) return {g, g.stride(0)};
  if (N > 0 && g.stride(0) == 0) return {g.select(0, 0).contiguous(), 0};
  return {g.contiguous(), H * Dv};
}

Dims check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const c10::optional<at::Tensor>& att, const c10::optional<at::Tensor>& bias,
                  const at::Tensor& ptr, const at::Tensor& src, int64_t kind,
                  bool validated = false) {
  TORCH_CHECK_VALUE(q.device().is_cpu(), "graphattn: 'q' must be on the CPU for the CPU kernel");
  const Dims d = check_attention_shapes(q, k, v, att, bias, ptr.numel() - 1, src.numel(), kind);
  check_ptr(ptr, d.E, "ptr", validated);
  check_range(src, d.Ns, "src", validated);
  return d;
}

template <int KIND, int HC, int DC, int DVC, typename scalar_t>
void forward_kernel(const Dims& dm, const scalar_t* q, const scalar_t* k, const scalar_t* v,
                    const scalar_t* att, const scalar_t* bias, const int64_t* ptr,
                    const int64_t* src, double scale_, double slope_, scalar_t* out,
                    scalar_t* lse, scalar_t* weights) {
  using acc_t = typename Acc<scalar_t>::type;
  // head count and widths fixed at compile time for the common shapes (dispatch_dims): the
  // per-head loops then unroll fully and their reductions need no remainder handling
  const int64_t H = HC ? HC : dm.H, D = DC ? DC : dm.D, Dv = DVC ? DVC : dm.Dv;
  const acc_t scale = acc_t(scale_), slope = acc_t(slope_);
  const acc_t NEG_INF = -std::numeric_limits<acc_t>::infinity();
  const int64_t avg_deg = std::max<int64_t>(1, dm.E / std::max<int64_t>(1, dm.Nd));
  const int64_t grain = std::max<int64_t>(1, 4096 / avg_deg);
  const int64_t E = dm.E;
  at::parallel_for(0, dm.Nd, grain, [&](int64_t begin, int64_t end) {
    // row-local buffers only: the scores of one row (deg x H) and one output row (H x Dv)
    std::vector<acc_t> S, acc(H * Dv), mx(H), sum(H);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t e0 = ptr[i], deg = ptr[i + 1] - e0;
      scalar_t* oi = out + i * H * Dv;
      if (deg == 0) {  // empty neighbourhood: zeros, never NaN
        std::fill(oi, oi + H * Dv, scalar_t(0));
        for (int64_t h = 0; h < H; ++h) lse[i * H + h] = scalar_t(NEG_INF);
        continue;
      }
      if (static_cast<int64_t>(S.size()) < deg * H) S.resize(deg * H);
      const scalar_t* qi = q + i * H * D;
      // pass 1: scores and their running max
      std::fill(mx.begin(), mx.end(), NEG_INF);
      for (int64_t t = 0; t < deg; ++t) {
        const int64_t e = e0 + t;
        if (e + kPrefetch < E) {
          const int64_t jn = src[e + kPrefetch];
          prefetch_row(k + jn * H * D, H * D);
          prefetch_row(v + jn * H * Dv, H * Dv);
        }
        acc_t* st = S.data() + t * H;
        edge_scores<KIND, DC, scalar_t, acc_t>(qi, k + src[e] * H * D, att,
                                               bias ? bias + e * H : nullptr, H, D, scale,
                                               slope, st);
        for (int64_t h = 0; h < H; ++h) mx[h] = st[h] > mx[h] ? st[h] : mx[h];
      }
      // exponentials (a -inf max means every edge of the head is masked)
      for (int64_t h = 0; h < H; ++h) {
        mx[h] = mx[h] > NEG_INF ? mx[h] : acc_t(0);
        sum[h] = 0;
      }
      for (int64_t t = 0; t < deg; ++t)
        for (int64_t h = 0; h < H; ++h) {
          const acc_t p = fast_exp<acc_t>(S[t * H + h] - mx[h]);
          S[t * H + h] = p;
          sum[h] += p;
        }
      // pass 2: weighted sum of the value rows, by chunks of kChunk edges and within a chunk
      // head by head, so that a head's accumulator stays in registers over the chunk (the
      // same order of additions as edge by edge)
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t t0 = 0; t0 < deg; t0 += kChunk) {
        const int64_t t1 = std::min(deg, t0 + kChunk);
        for (int64_t h = 0; h < H; ++h) {
          acc_t* __restrict__ ah = acc.data() + h * Dv;
          for (int64_t t = t0; t < t1; ++t) {
            const acc_t p = S[t * H + h];
            const scalar_t* __restrict__ vjh = v + src[e0 + t] * H * Dv + h * Dv;
#pragma omp simd
            for (int64_t c = 0; c < Dv; ++c) ah[c] += p * acc_t(vjh[c]);
          }
        }
      }
      // sum is 0 only for a fully masked head; a NaN (or +inf) score makes it NaN, and the
      // head's outputs, weights and log-sum-exp NaN, as torch.softmax would (never zeros)
      for (int64_t h = 0; h < H; ++h) {
        if (sum[h] != acc_t(0)) {
          const acc_t inv = acc_t(1) / sum[h];
          for (int64_t c = 0; c < Dv; ++c) oi[h * Dv + c] = scalar_t(acc[h * Dv + c] * inv);
          lse[i * H + h] = scalar_t(mx[h] + std::log(sum[h]));
        } else {  // fully masked neighbourhood
          for (int64_t c = 0; c < Dv; ++c) oi[h * Dv + c] = scalar_t(0);
          lse[i * H + h] = scalar_t(NEG_INF);
        }
      }
      if (weights) {
        for (int64_t t = 0; t < deg; ++t)
          for (int64_t h = 0; h < H; ++h)
            weights[(e0 + t) * H + h] =
                sum[h] != acc_t(0) ? scalar_t(S[t * H + h] / sum[h]) : scalar_t(0);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> edge_attention_cpu(
    const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const c10::optional<at::Tensor>& att_, const c10::optional<at::Tensor>& bias_,
    const at::Tensor& ptr, const at::Tensor& src, const at::Tensor& /*csc_ptr*/,
    const at::Tensor& /*csc_eid*/, const at::Tensor& /*csc_dst*/, int64_t kind, double scale,
    double negative_slope, bool return_weights, bool validated) {
  const Dims dm = check_inputs(q_, k_, v_, att_, bias_, ptr, src, kind, validated);
  const AttentionInputs in = contiguous_inputs(q_, k_, v_, att_, bias_, kind);
  const at::Tensor &q = in.q, &k = in.k, &v = in.v, &att = in.att, &bias = in.bias;
  const bool has_att = in.has_att, has_bias = in.has_bias;
  at::Tensor out, lse, weights;
  std::tie(out, lse, weights) = forward_outputs(dm, q, return_weights);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "graphattn::edge_attention", [&] {
    const scalar_t* attp = has_att ? att.data_ptr<scalar_t>() : nullptr;
    const scalar_t* bp = has_bias ? bias.data_ptr<scalar_t>() : nullptr;
    scalar_t* wp = return_weights ? weights.data_ptr<scalar_t>() : nullptr;
    dispatch_kind(kind, [&](auto kind_tag) {
      dispatch_dims(dm, [&](auto hc, auto dc, auto dvc) {
        forward_kernel<decltype(kind_tag)::value, decltype(hc)::value, decltype(dc)::value,
                       decltype(dvc)::value, scalar_t>(
            dm, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), attp,
            bp, ptr.data_ptr<int64_t>(), src.data_ptr<int64_t>(), scale, negative_slope,
            out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), wp);
      });
    });
  });
  return {out, lse, weights};
}

// d score / d (pre-activation) of the LeakyReLU kinds, branch-free
template <typename acc_t>
inline acc_t dlrelu(acc_t z, acc_t slope) {
  return slope + (acc_t(1) - slope) * acc_t(z > acc_t(0));
}

// Backward of the 'dot' and 'v2' kinds (file header): two passes, each gathering rows.
// passes: kDstPass (A: grad q, grad att, grad bias and the record [lse_i, delta_i] in stats),
// kSrcPass (B: grad k, grad v from that record), or both; the outputs of a pass not run may
// be null.
constexpr int kDstPass = 1, kSrcPass = 2;
template <int KIND, int HC, int DC, int DVC, typename scalar_t>
void backward_kernel(const Dims& dm, const scalar_t* go, int64_t gos, const scalar_t* gw,
                     const scalar_t* q,
                     const scalar_t* k, const scalar_t* v, const scalar_t* att,
                     const scalar_t* bias, const scalar_t* lse,
                     const int64_t* ptr, const int64_t* src, const int64_t* cptr,
                     const int64_t* ceid, const int64_t* cdst, double scale_, double slope_,
                     scalar_t* gq, scalar_t* gk, scalar_t* gv, scalar_t* gatt, scalar_t* gbias,
                     scalar_t* stats, scalar_t* rec, bool kv_shared, int passes,
                     int64_t src_begin, int64_t src_end) {
  using acc_t = typename Acc<scalar_t>::type;
  static_assert(std::is_same<acc_t, scalar_t>::value,
                "the packed row statistics hold accumulator values in scalar_t");
  static_assert(KIND != ADDITIVE, "'additive' has its own backward (backward_additive)");
  // Per destination row, packed so that pass B fetches one short record per edge instead of
  // one cache line per array (stats_width).
  const int64_t S = stats_width(dm.H);
  const int64_t H = HC ? HC : dm.H, D = DC ? DC : dm.D, Dv = DVC ? DVC : dm.Dv, E = dm.E;
  const acc_t scale = acc_t(scale_), slope = acc_t(slope_);
  const acc_t NEG_INF = -std::numeric_limits<acc_t>::infinity();
  const int64_t avg_deg = std::max<int64_t>(1, E / std::max<int64_t>(1, dm.Nd));
  const int64_t grain = std::max<int64_t>(1, 4096 / avg_deg);

  // Both passes recompute p_e = exp(s_e - lse_i), dp_e = dO_i . v_j (+ gw_e) and
  // ds_e = p_e (dp_e - delta_i) from rows they gather anyway (pass A: k_j, v_j; pass B: q_i,
  // dO_i), so nothing of size E is stored between them: only delta [N_dst, H]. Given a
  // per-edge record rec [E, 2H] (the split ops' 'record', or the fused backward's own where
  // use_edge_record allows), pass A writes (p_e, ds_e) there and pass B reads them instead
  // of recomputing (no score, no dp, no exponential: its per-edge arithmetic halves, for
  // E * 2H values of memory).
  // The scores of one edge for every head, as s_e - lse_i (-inf for a fully masked head,
  // NaN for a NaN one), and dp_e (0 for a masked head): the exponentials are taken
  // afterwards by exps() over many edges at once, so that they vectorise.
  auto score_dp = [&](const scalar_t* qi, const scalar_t* kj, const scalar_t* goi,
                      const scalar_t* vj, int64_t e, const scalar_t* l, acc_t* x_out,
                      acc_t* dp_out) {
    edge_scores<KIND, DC, scalar_t, acc_t>(qi, kj, att, bias ? bias + e * H : nullptr, H, D,
                                           scale, slope, x_out);
    head_sums<DOT, DVC, scalar_t, acc_t>(goi, vj, nullptr, H, Dv, slope, dp_out);
    for (int64_t h = 0; h < H; ++h) {
      const acc_t dp = dp_out[h] + (gw ? acc_t(gw[e * H + h]) : acc_t(0));
      const acc_t lh = acc_t(l[h]);
      const bool masked = lh == NEG_INF;  // nothing flows back (a NaN row: NaN)
      x_out[h] = masked ? NEG_INF : x_out[h] - lh;
      dp_out[h] = masked ? acc_t(0) : dp;
    }
  };

  // per-thread partial sums of grad att (v2 only), reduced in thread order afterwards
  const int64_t nthreads = at::get_num_threads();
  std::vector<acc_t> gatt_local(KIND == V2 ? nthreads * H * D : 0, acc_t(0));

  // ---- pass A: destination rows -> delta, grad q, grad bias, grad att ---------------------
  // delta_i = sum_e p_e dp_e, which equals rowsum(dO_i * O_i) (+ sum_e p_e gw_e): it is formed
  // from the dp values this pass needs anyway, so the forward output need not be saved.
  if (passes & kDstPass) at::parallel_for(0, dm.Nd, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gqi(H * D), Pb, DPb;
    acc_t* gatt_t = KIND == V2 ? gatt_local.data() + at::get_thread_num() * H * D : nullptr;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t e0 = ptr[i], deg = ptr[i + 1] - e0;
      const scalar_t* qi = q + i * H * D;
      const scalar_t* goi = go + i * gos;
      const scalar_t* li = lse + i * H;
      scalar_t* st = stats + i * S;
      acc_t* dli = st + H;
      for (int64_t h = 0; h < H; ++h) {
        st[h] = li[h];
        dli[h] = 0;
      }
      if (deg == 0) {  // no in-edge: zero gradient
        std::fill(gq + i * H * D, gq + (i + 1) * H * D, scalar_t(0));
        continue;
      }
      if (static_cast<int64_t>(Pb.size()) < deg * H) {
        Pb.resize(deg * H);
        DPb.resize(deg * H);
      }
      // A1: s_e - lse_i and dp_e of every in-edge (gathers k_j and v_j); then p_e for the
      // whole row in one vectorised loop of exponentials; then delta
      for (int64_t t = 0; t < deg; ++t) {
        const int64_t e = e0 + t;
        if (e + kPrefetch < E) {
          const int64_t jn = src[e + kPrefetch];
          prefetch_row(v + jn * H * Dv, H * Dv);
          prefetch_row(k + jn * H * D, H * D);
        }
        const int64_t j = src[e];
        score_dp(qi, k + j * H * D, goi, v + j * H * Dv, e, li, Pb.data() + t * H,
                 DPb.data() + t * H);
      }
      exps(Pb.data(), deg * H);
      for (int64_t t = 0; t < deg; ++t)
        for (int64_t h = 0; h < H; ++h) dli[h] += Pb[t * H + h] * DPb[t * H + h];
      // A2: ds_e = p_e (dp_e - delta_i) -> grad q_i, grad bias, grad att (k_j rows are hot)
      std::fill(gqi.begin(), gqi.end(), acc_t(0));
      for (int64_t t = 0; t < deg; ++t) {
        const int64_t e = e0 + t;
        const scalar_t* kj = k + src[e] * H * D;
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* qih = qi + h * D;
          const scalar_t* kjh = kj + h * D;
          const acc_t ds = Pb[t * H + h] * (DPb[t * H + h] - dli[h]);
          acc_t* __restrict__ g = gqi.data() + h * D;
          if constexpr (KIND == DOT) {
            const acc_t f = ds * scale;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) g[d] += f * acc_t(kjh[d]);
          } else {
            const scalar_t* ah = att + h * D;
            acc_t* __restrict__ ga = gatt_t + h * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) {
              const acc_t z = acc_t(qih[d]) + acc_t(kjh[d]);
              g[d] += ds * acc_t(ah[d]) * dlrelu<acc_t>(z, slope);
              ga[d] += ds * lrelu<acc_t>(z, slope);
            }
          }
          if (gbias) gbias[e * H + h] = scalar_t(ds);
          if (rec) {  // (p_e, ds_e) for pass B; p_e = -1 marks a fully masked head
            rec[e * 2 * H + h] = li[h] == NEG_INF ? scalar_t(-1) : scalar_t(Pb[t * H + h]);
            rec[e * 2 * H + H + h] = scalar_t(ds);
          }
        }
      }
      scalar_t* gqo = gq + i * H * D;
      for (int64_t t = 0; t < H * D; ++t) gqo[t] = scalar_t(gqi[t]);
    }
  });

  if constexpr (KIND == V2) {
    if (passes & kDstPass) {
      for (int64_t t = 0; t < H * D; ++t) {
        acc_t sum = 0;
        for (int64_t th = 0; th < nthreads; ++th) sum += gatt_local[th * H * D + t];
        gatt[t] = scalar_t(sum);
      }
    }
  }
  if (!(passes & kSrcPass)) return;

  // ---- pass B: source rows via the CSC view -> grad k, grad v ----------------------------
  // (of the rows [src_begin, src_end), written from row 0 of gk and gv)
  const int64_t avg_out = std::max<int64_t>(1, E / std::max<int64_t>(1, dm.Ns));
  const int64_t grain_b = std::max<int64_t>(1, 4096 / avg_out);
  at::parallel_for(src_begin, src_end, grain_b, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gkj(H * D), gvj(H * Dv), X(kChunk * H), DP(kChunk * H);
    for (int64_t j = begin; j < end; ++j) {
      std::fill(gkj.begin(), gkj.end(), acc_t(0));
      std::fill(gvj.begin(), gvj.end(), acc_t(0));
      const scalar_t* kj = k + j * H * D;
      const scalar_t* vj = v + j * H * Dv;
      // one out-edge's terms of grad k_j, grad v_j from its p_e and ds_e (qi, goi: the rows
      // of its destination)
      auto accumulate = [&](const scalar_t* qi, const scalar_t* goi, int64_t h, acc_t p,
                            acc_t ds) {
        const scalar_t* qih = qi + h * D;
        const scalar_t* goih = goi + h * Dv;
        acc_t* __restrict__ gv_h = gvj.data() + h * Dv;
#pragma omp simd
        for (int64_t c = 0; c < Dv; ++c) gv_h[c] += p * acc_t(goih[c]);
        acc_t* __restrict__ gk_h = gkj.data() + h * D;
        if constexpr (KIND == DOT) {
          const acc_t f = ds * scale;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) gk_h[d] += f * acc_t(qih[d]);
        } else {
          const scalar_t* ah = att + h * D;
          const scalar_t* kjh = kj + h * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d)
            gk_h[d] += ds * acc_t(ah[d]) * dlrelu<acc_t>(acc_t(qih[d]) + acc_t(kjh[d]), slope);
        }
      };
      if (rec) {  // pass A left (p_e, ds_e) of every edge: nothing to recompute
        for (int64_t t = cptr[j]; t < cptr[j + 1]; ++t) {
          if (t + kPrefetch < E) {
            const int64_t in = cdst[t + kPrefetch];
            prefetch_row(go + in * gos, H * Dv);
            prefetch_row(q + in * H * D, H * D);
            prefetch_row(rec + ceid[t + kPrefetch] * 2 * H, 2 * H);
          }
          const int64_t i = cdst[t];
          const scalar_t* re = rec + ceid[t] * 2 * H;
          for (int64_t h = 0; h < H; ++h)
            if (!(re[h] < scalar_t(0)))  // p_e = -1: masked, no contribution (NaN flows)
              accumulate(q + i * H * D, go + i * gos, h, acc_t(re[h]), acc_t(re[H + h]));
        }
      } else {
        // without it: the out-edges by chunks, their scores and dp (gathers q_i, dO_i and the
        // destination's stats row), the chunk's exponentials in one vectorised loop, then grad k_j, grad v_j
        // from the rows just gathered (still in L1)
        for (int64_t c0 = cptr[j]; c0 < cptr[j + 1]; c0 += kChunk) {
          const int64_t n = std::min<int64_t>(kChunk, cptr[j + 1] - c0);
          for (int64_t u = 0; u < n; ++u) {
            const int64_t t = c0 + u;
            if (t + kPrefetch < E) {
              const int64_t in = cdst[t + kPrefetch];
              prefetch_row(go + in * gos, H * Dv);
              prefetch_row(q + in * H * D, H * D);
              prefetch_row(stats + in * S, S);
              if (bias) prefetch_row(bias + ceid[t + kPrefetch] * H, H);
            }
            const int64_t i = cdst[t];
            score_dp(q + i * H * D, kj, go + i * gos, vj, ceid[t], stats + i * S,
                     X.data() + u * H, DP.data() + u * H);
          }
          exps(X.data(), n * H);
          for (int64_t u = 0; u < n; ++u) {
            const int64_t i = cdst[c0 + u];
            const scalar_t* st = stats + i * S;
            for (int64_t h = 0; h < H; ++h) {
              if (acc_t(st[h]) == NEG_INF) continue;  // masked: no contribution at all
              const acc_t p = X[u * H + h];
              accumulate(q + i * H * D, go + i * gos, h, p, p * (DP[u * H + h] - st[H + h]));
            }
          }
        }
      }
      scalar_t* gko = gk + (j - src_begin) * H * D;
      if (kv_shared) {  // k is v: one gradient, grad k + grad v
        for (int64_t t = 0; t < H * D; ++t) gko[t] = scalar_t(gkj[t] + gvj[t]);
      } else {
        scalar_t* gvo = gv + (j - src_begin) * H * Dv;
        for (int64_t t = 0; t < H * D; ++t) gko[t] = scalar_t(gkj[t]);
        for (int64_t t = 0; t < H * Dv; ++t) gvo[t] = scalar_t(gvj[t]);
      }
    }
  });
}

// Backward of 'additive' (GAT): s_e = LeakyReLU(z_e), z_e = q_i + k_j + b_e, one scalar per
// head, so no score needs a row gather and the rows are gathered once (file header):
//   B1 (source rows, CSC): p_e from the record [lse_i, q_i], dp_e = dO_i . v_j (+ gw_e);
//      grad v_j = sum_e p_e dO_i; the edge's record in eb: u_e = p_e dp_e and p_e carrying
//      LeakyReLU'(z_e) in its sign (negative: slope, positive: 1).
//   A  (destination rows, CSR, eb streamed in order): delta_i = sum_e u_e,
//      ds_e = LeakyReLU'(z_e) (u_e - p_e delta_i) into eb (in place, and into the bias
//      gradient); grad q_i = sum_e ds_e. No gather and no exponential.
//   B2 (source rows, CSC): grad k_j = sum_e ds_e.
// eb is [E, 2H] (32 bytes per edge at H = 4), the one per-edge buffer of this backward.
// The per-destination record of B1, [lse_i, q_i]: one short random read per edge. A fully
// masked head (lse = -inf) is stored as +inf, so that exp(s - lse) is 0 without a branch and
// the head loops of B1 vectorise.
template <typename scalar_t>
void additive_stats(const Dims& dm, const scalar_t* q, const scalar_t* lse, scalar_t* stats) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t H = dm.H, S = stats_width(H);
  const acc_t NEG_INF = -std::numeric_limits<acc_t>::infinity();
  const acc_t POS_INF = std::numeric_limits<acc_t>::infinity();
  at::parallel_for(0, dm.Nd, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t h = 0; h < H; ++h) {
        const acc_t l = acc_t(lse[i * H + h]);
        stats[i * S + h] = scalar_t(l == NEG_INF ? POS_INF : l);
        stats[i * S + H + h] = q[i * H + h];
      }
  });
}

// about 4096 edges per task of a pass over `rows` rows
inline int64_t additive_grain(int64_t E, int64_t rows) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, E / std::max<int64_t>(1, rows)));
}

// B1 of the 'additive' backward over the source rows [src_begin, src_end): their out-edges'
// records in eb and grad v, written from row 0 of gv_out (see backward_additive).
template <int HC, int DVC, typename scalar_t>
void additive_values(const Dims& dm, const scalar_t* go, int64_t gos, const scalar_t* gw,
                     const scalar_t* k, const scalar_t* v, const scalar_t* bias,
                     const scalar_t* stats, const int64_t* cptr, const int64_t* ceid,
                     const int64_t* cdst, double slope_, scalar_t* eb, scalar_t* gv_out,
                     int64_t src_begin, int64_t src_end) {
  using acc_t = typename Acc<scalar_t>::type;
  static_assert(std::is_same<acc_t, scalar_t>::value,
                "the packed row statistics hold accumulator values in scalar_t");
  const int64_t H = HC ? HC : dm.H, Dv = DVC ? DVC : dm.Dv, E = dm.E, S = stats_width(H);
  const acc_t slope = acc_t(slope_);
  auto pre = [&](int64_t e, int64_t h, acc_t qi, acc_t kj) -> acc_t {  // z_e before LeakyReLU
    return qi + kj + (bias ? acc_t(bias[e * H + h]) : acc_t(0));
  };
  at::parallel_for(src_begin, src_end, additive_grain(E, dm.Ns), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gvj(H * Dv);
    for (int64_t j = begin; j < end; ++j) {
      std::fill(gvj.begin(), gvj.end(), acc_t(0));
      const scalar_t* kj = k + j * H;
      const scalar_t* vj = v + j * H * Dv;
      for (int64_t t = cptr[j]; t < cptr[j + 1]; ++t) {
        if (t + kPrefetch < E) {
          const int64_t in = cdst[t + kPrefetch], en = ceid[t + kPrefetch];
          prefetch_row(go + in * gos, H * Dv);
          prefetch_row(stats + in * S, S);
          __builtin_prefetch(eb + en * 2 * H, 1, 1);
          if (bias) prefetch_row(bias + en * H, H);
          if (gw) prefetch_row(gw + en * H, H);
        }
        const int64_t e = ceid[t], i = cdst[t];
        const scalar_t* goi = go + i * gos;
        const scalar_t* st = stats + i * S;
        scalar_t* rec = eb + e * 2 * H;
        for (int64_t h = 0; h < H; ++h) {
          // p = 0 on a fully masked head (record holds +inf): then ds = 0
          const acc_t z = pre(e, h, st[H + h], kj[h]);
          const acc_t p = fast_exp<acc_t>(lrelu<acc_t>(z, slope) - acc_t(st[h]));
          const scalar_t* __restrict__ goih = goi + h * Dv;
          const scalar_t* __restrict__ vjh = vj + h * Dv;
          acc_t dp = 0;
#pragma omp simd reduction(+ : dp)
          for (int64_t c = 0; c < Dv; ++c) dp += acc_t(goih[c]) * acc_t(vjh[c]);
          rec[h] = scalar_t(p * (dp + (gw ? acc_t(gw[e * H + h]) : acc_t(0))));
          rec[H + h] = scalar_t(std::copysign(p, z > acc_t(0) ? acc_t(1) : acc_t(-1)));
          acc_t* __restrict__ gv_h = gvj.data() + h * Dv;
#pragma omp simd
          for (int64_t c = 0; c < Dv; ++c) gv_h[c] += p * acc_t(goih[c]);
        }
      }
      scalar_t* gvo = gv_out + (j - src_begin) * H * Dv;
      for (int64_t t = 0; t < H * Dv; ++t) gvo[t] = scalar_t(gvj[t]);
    }
  });
}

// A and B2 of the 'additive' backward, from the complete records of B1 (backward_additive).
// add_to_gk: grad k already holds grad v (k is v) and B2 adds to it.
template <int HC, typename scalar_t>
void additive_scores(const Dims& dm, const int64_t* ptr, const int64_t* cptr,
                     const int64_t* ceid, double slope_, scalar_t* eb, scalar_t* gq,
                     scalar_t* gk, scalar_t* gbias, bool add_to_gk) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t H = HC ? HC : dm.H, E = dm.E;
  const acc_t slope = acc_t(slope_);
  // ---- A: destination rows -> delta, ds (in eb), grad q -----------------------------------
  at::parallel_for(0, dm.Nd, additive_grain(E, dm.Nd), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dl(H), gqi(H);
    acc_t* __restrict__ d = dl.data();
    acc_t* __restrict__ g = gqi.data();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t e0 = ptr[i], e1 = ptr[i + 1];
      std::fill(dl.begin(), dl.end(), acc_t(0));
      std::fill(gqi.begin(), gqi.end(), acc_t(0));
      for (int64_t e = e0; e < e1; ++e) {
        const scalar_t* __restrict__ rec = eb + e * 2 * H;
#pragma omp simd
        for (int64_t h = 0; h < H; ++h) d[h] += acc_t(rec[h]);
      }
      for (int64_t e = e0; e < e1; ++e) {
        scalar_t* __restrict__ rec = eb + e * 2 * H;
#pragma omp simd
        for (int64_t h = 0; h < H; ++h) {
          const acc_t sp = acc_t(rec[H + h]);
          const acc_t f = std::signbit(sp) ? slope : acc_t(1);
          const acc_t ds = f * (acc_t(rec[h]) - std::abs(sp) * d[h]);
          rec[h] = scalar_t(ds);
          g[h] += ds;
        }
        if (gbias)
          for (int64_t h = 0; h < H; ++h) gbias[e * H + h] = rec[h];
      }
      for (int64_t h = 0; h < H; ++h) gq[i * H + h] = scalar_t(g[h]);
    }
  });

  // ---- B2: source rows -> grad k = sum of ds over out-edges ---------------------------------
  at::parallel_for(0, dm.Ns, additive_grain(E, dm.Ns), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gkj(H);
    for (int64_t j = begin; j < end; ++j) {
      std::fill(gkj.begin(), gkj.end(), acc_t(0));
      for (int64_t t = cptr[j]; t < cptr[j + 1]; ++t) {
        if (t + kPrefetch < E) prefetch_row(eb + ceid[t + kPrefetch] * 2 * H, H);
        const scalar_t* ds = eb + ceid[t] * 2 * H;
        for (int64_t h = 0; h < H; ++h) gkj[h] += acc_t(ds[h]);
      }
      for (int64_t h = 0; h < H; ++h)
        gk[j * H + h] = scalar_t((add_to_gk ? acc_t(gk[j * H + h]) : acc_t(0)) + gkj[h]);
    }
  });
}

// Backward of 'additive' (GAT): s_e = LeakyReLU(z_e), z_e = q_i + k_j + b_e, one scalar per
// head, so no score needs a row gather and the rows are gathered once (file header):
//   B1 (source rows, CSC): p_e from the record [lse_i, q_i], dp_e = dO_i . v_j (+ gw_e);
//      grad v_j = sum_e p_e dO_i; the edge's record in eb: u_e = p_e dp_e and p_e carrying
//      LeakyReLU'(z_e) in its sign (negative: slope, positive: 1).
//   A  (destination rows, CSR, eb streamed in order): delta_i = sum_e u_e,
//      ds_e = LeakyReLU'(z_e) (u_e - p_e delta_i) into eb (in place, and into the bias
//      gradient); grad q_i = sum_e ds_e. No gather and no exponential.
//   B2 (source rows, CSC): grad k_j = sum_e ds_e.
// eb is [E, 2H] (32 bytes per edge at H = 4), the one per-edge buffer of this backward. The
// ops edge_attention_backward_additive_values / _scores run B1 (by blocks of source rows) and
// A + B2 apart, so that a caller consumes grad v block by block (ops.projected_attention).
template <int HC, int DVC, typename scalar_t>
void backward_additive(const Dims& dm, const scalar_t* go, int64_t gos, const scalar_t* gw,
                       const scalar_t* q, const scalar_t* k, const scalar_t* v,
                       const scalar_t* bias, const scalar_t* lse, const int64_t* ptr,
                       const int64_t* src, const int64_t* cptr, const int64_t* ceid,
                       const int64_t* cdst, double slope_, scalar_t* gq, scalar_t* gk,
                       scalar_t* gv, scalar_t* gbias, scalar_t* eb, scalar_t* stats,
                       bool kv_shared) {
  (void)src;
  additive_stats(dm, q, lse, stats);
  // k is v: B1 writes grad v into grad k, B2 adds grad k
  additive_values<HC, DVC, scalar_t>(dm, go, gos, gw, k, v, bias, stats, cptr, ceid, cdst,
                                     slope_, eb, kv_shared ? gk : gv, 0, dm.Ns);
  additive_scores<HC, scalar_t>(dm, ptr, cptr, ceid, slope_, eb, gq, gk, gbias, kv_shared);
}

// Whether the backward of 'dot' / 'v2' keeps each edge's (p_e, ds_e) between its passes: when
// that [E, 2H] record is no larger than grad_out [N_dst, H, Dv], so the backward's memory
// grows by at most the size of the gradient it was given (graphattn.ops.projected applies the
// same rule to the record it passes to the split ops).
inline bool use_edge_record(const Dims& dm) { return 2 * dm.E <= dm.Nd * dm.Dv; }

struct BackwardOut {
  at::Tensor gq, gk, gv, gatt, gbias, stats;
};

// The backward's host side for every entry point: checks, contiguous inputs, outputs, kernel.
// passes = kDstPass | kSrcPass is the whole backward; kDstPass alone returns grad q, grad att,
// grad bias and stats (row_stats = lse); kSrcPass alone returns grad k, grad v (row_stats =
// the stats of the first). The CSC view is used (and checked) by kSrcPass only.
BackwardOut backward_cpu(const at::Tensor& grad_out_,
                         const c10::optional<at::Tensor>& grad_weights_, const at::Tensor& q_,
                         const at::Tensor& k_, const at::Tensor& v_,
                         const c10::optional<at::Tensor>& att_,
                         const c10::optional<at::Tensor>& bias_, const at::Tensor& row_stats,
                         const at::Tensor& ptr, const at::Tensor& src, const at::Tensor* csc_ptr,
                         const at::Tensor* csc_eid, const at::Tensor* csc_dst, int64_t kind,
                         double scale, double negative_slope, bool kv_shared, int passes,
                         bool validated, int64_t src_begin = 0,
                         c10::optional<int64_t> src_end_ = c10::nullopt,
                         const c10::optional<at::Tensor>& record = c10::nullopt) {
  const Dims dm = check_inputs(q_, k_, v_, att_, bias_, ptr, src, kind, validated);
  check_kv_shared(k_, v_, kv_shared);
  const bool has_gw = check_grad_shapes(dm, q_, grad_out_, grad_weights_);
  const bool dst_pass = passes & kDstPass, src_pass = passes & kSrcPass;
  const int64_t H = dm.H, S = stats_width(H);
  // the source rows of pass B: [src_begin, src_end) (all by default)
  const int64_t src_end = src_end_.value_or(dm.Ns);
  TORCH_CHECK_VALUE(0 <= src_begin && src_begin <= src_end && src_end <= dm.Ns,
                    "graphattn: the "
                    "source rows [row_begin, row_end) must satisfy 0 <= row_begin <= row_end <= "
                    "N_src = ",
                    dm.Ns, ", got [", src_begin, ", ", src_end, ")");
  const int64_t src_rows = src_end - src_begin;
  if (dst_pass) {  // row_stats is lse [N_dst, H]
    TORCH_CHECK_VALUE(row_stats.sizes() == at::IntArrayRef({dm.Nd, H}),
                      "graphattn: 'lse' must have shape [N_dst, H], got ", row_stats.sizes());
    check_float(row_stats, "lse", q_.scalar_type(), q_.device());
  } else {  // row_stats is the [N_dst, 2H] record of edge_attention_backward_dst
    TORCH_CHECK_VALUE(row_stats.sizes() == at::IntArrayRef({dm.Nd, S}),
                      "graphattn: 'stats' must have shape [N_dst, 2 * H] (from "
                      "edge_attention_backward_dst), got ",
                      row_stats.sizes());
    check_float(row_stats, "stats", q_.scalar_type(), q_.device());
  }
  // the caller's per-edge record (p_e, ds_e), given to the split passes only: written in place
  // by pass A, read by pass B (so it must be contiguous: a view of the caller's tensor is
  // written through)
  const bool has_rec = record.has_value() && record->defined();
  if (has_rec) {
    check_float(*record, "record", q_.scalar_type(), q_.device());
    TORCH_CHECK_VALUE(record->sizes() == at::IntArrayRef({dm.E, 2 * H}) && record->is_contiguous(),
                      "graphattn: 'record' must be a contiguous [E, 2 * H] = [", dm.E, ", ", 2 * H,
                      "] tensor, got ", record->sizes(),
                      record->is_contiguous() ? "" : " (not contiguous)");
  }
  if (src_pass) {
    check_csc_shapes(dm, *csc_ptr, *csc_eid, *csc_dst);
    check_ptr(*csc_ptr, dm.E, "csc_ptr", validated);
    check_range(*csc_eid, dm.E, "csc_eid", validated);
    check_range(*csc_dst, dm.Nd, "csc_dst", validated);
  }
  const AttentionInputs in = contiguous_inputs(q_, k_, v_, att_, bias_, kind);
  const at::Tensor &q = in.q, &k = in.k, &v = in.v, &att = in.att, &bias = in.bias;
  const bool has_att = in.has_att, has_bias = in.has_bias;
  const RowView go = row_view(grad_out_);
  const at::Tensor rs = row_stats.contiguous();
  const at::Tensor gw = has_gw ? grad_weights_->contiguous() : at::Tensor();
  const auto none = q.options();

  BackwardOut o;
  o.gq = dst_pass ? at::empty_like(q) : at::empty({0}, none);
  o.gk = src_pass ? at::empty({src_rows, H, dm.D}, none) : at::empty({0}, none);
  o.gv = src_pass && !kv_shared ? at::empty({src_rows, H, dm.Dv}, none) : at::empty({0}, none);
  o.gatt = dst_pass && has_att ? at::empty_like(att) : at::empty({0}, none);
  o.gbias = dst_pass && has_bias ? at::empty_like(bias) : at::empty({0}, none);
  // the accumulator type is scalar_t itself (float, double): the record shares q's dtype
  o.stats = dst_pass ? at::empty({dm.Nd, S}, none) : rs;
  // 'additive': the [E, 2H] per-edge record of its backward (backward_additive); 'dot' and
  // 'v2' with both passes in this call: the (p_e, ds_e) record where use_edge_record allows
  at::Tensor eb;
  if (kind == ADDITIVE ||
      (dst_pass && src_pass && !has_rec && use_edge_record(dm)))
    eb = at::empty({dm.E, 2 * H}, none);

  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "graphattn::edge_attention_backward", [&] {
    auto ptr_or_null = [](const at::Tensor& t) -> scalar_t* {
      return t.numel() ? t.data_ptr<scalar_t>() : nullptr;
    };
    auto idx = [](const at::Tensor* t) -> const int64_t* {
      return t ? t->data_ptr<int64_t>() : nullptr;
    };
    const scalar_t* attp = has_att ? att.data_ptr<scalar_t>() : nullptr;
    const scalar_t* bp = has_bias ? bias.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gwp = has_gw ? gw.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gop = go.t.data_ptr<scalar_t>();
    const scalar_t* lsep = dst_pass ? rs.data_ptr<scalar_t>() : nullptr;
    scalar_t* gqp = dst_pass ? o.gq.data_ptr<scalar_t>() : nullptr;
    scalar_t* gkp = src_pass ? o.gk.data_ptr<scalar_t>() : nullptr;
    scalar_t* gvp = src_pass && !kv_shared ? o.gv.data_ptr<scalar_t>() : nullptr;
    scalar_t* gattp = dst_pass && has_att ? o.gatt.data_ptr<scalar_t>() : nullptr;
    scalar_t* gbp = dst_pass && has_bias ? o.gbias.data_ptr<scalar_t>() : nullptr;
    // a record given by the caller is only read (pass B)
    scalar_t* statsp = const_cast<scalar_t*>(o.stats.data_ptr<scalar_t>());
    scalar_t* recp = has_rec ? record->data_ptr<scalar_t>()
                             : eb.defined() ? ptr_or_null(eb) : nullptr;
    dispatch_kind(kind, [&](auto kind_tag) {
      constexpr int K = decltype(kind_tag)::value;
      if constexpr (K == ADDITIVE) {  // the entry points give it both passes
        dispatch_dims(dm, [&](auto hc, auto, auto dvc) {
          backward_additive<decltype(hc)::value, decltype(dvc)::value, scalar_t>(
              dm, gop, go.stride, gwp, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
              v.data_ptr<scalar_t>(), bp, lsep, ptr.data_ptr<int64_t>(),
              src.data_ptr<int64_t>(), idx(csc_ptr), idx(csc_eid), idx(csc_dst),
              negative_slope, gqp, gkp, gvp, gbp, ptr_or_null(eb), statsp, kv_shared);
        });
      } else {
        dispatch_dims(dm, [&](auto hc, auto dc, auto dvc) {
          backward_kernel<K, decltype(hc)::value, decltype(dc)::value, decltype(dvc)::value,
                          scalar_t>(
              dm, gop, go.stride, gwp, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
              v.data_ptr<scalar_t>(), attp, bp, lsep, ptr.data_ptr<int64_t>(),
              src.data_ptr<int64_t>(), idx(csc_ptr), idx(csc_eid), idx(csc_dst), scale,
              negative_slope, gqp, gkp, gvp, gattp, gbp, statsp, recp, kv_shared, passes,
              src_begin, src_end);
        });
      }
    });
  });
  return o;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> edge_attention_backward_cpu(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_weights,
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& att, const c10::optional<at::Tensor>& bias,
    const at::Tensor& lse, const at::Tensor& ptr, const at::Tensor& src,
    const at::Tensor& csc_ptr, const at::Tensor& csc_eid, const at::Tensor& csc_dst, int64_t kind,
    double scale, double negative_slope, bool kv_shared, bool validated) {
  const BackwardOut o = backward_cpu(grad_out, grad_weights, q, k, v, att, bias, lse, ptr, src,
                                     &csc_ptr, &csc_eid, &csc_dst, kind, scale, negative_slope,
                                     kv_shared, kDstPass | kSrcPass, validated);
  return {o.gq, o.gk, o.gv, o.gatt, o.gbias};
}

// The two passes of the 'dot' / 'v2' backward as separate ops, so that a caller can consume
// grad q before grad k and grad v exist (graphattn.ops.projected_attention).
void check_split_kind(int64_t kind, const char* op) {
  TORCH_CHECK_VALUE(kind == DOT || kind == V2, "graphattn: ", op,
                    " takes the kinds 0 (dot) and 2 (v2), got ", kind,
                    " ('additive' has a one-gather backward: edge_attention_backward)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> edge_attention_backward_dst_cpu(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_weights,
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& att, const c10::optional<at::Tensor>& bias,
    const at::Tensor& lse, const at::Tensor& ptr, const at::Tensor& src, int64_t kind,
    double scale, double negative_slope, bool validated,
    const c10::optional<at::Tensor>& record) {
  check_split_kind(kind, "edge_attention_backward_dst");
  const BackwardOut o = backward_cpu(grad_out, grad_weights, q, k, v, att, bias, lse, ptr, src,
                                     nullptr, nullptr, nullptr, kind, scale, negative_slope,
                                     false, kDstPass, validated, 0, c10::nullopt, record);
  return {o.gq, o.gatt, o.gbias, o.stats};
}

std::tuple<at::Tensor, at::Tensor> edge_attention_backward_src_cpu(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_weights,
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& att, const c10::optional<at::Tensor>& bias,
    const at::Tensor& stats, const at::Tensor& ptr, const at::Tensor& src,
    const at::Tensor& csc_ptr, const at::Tensor& csc_eid, const at::Tensor& csc_dst, int64_t kind,
    double scale, double negative_slope, bool kv_shared, bool validated, int64_t row_begin,
    c10::optional<int64_t> row_end, const c10::optional<at::Tensor>& record) {
  check_split_kind(kind, "edge_attention_backward_src");
  const BackwardOut o =
      backward_cpu(grad_out, grad_weights, q, k, v, att, bias, stats, ptr, src, &csc_ptr,
                   &csc_eid, &csc_dst, kind, scale, negative_slope, kv_shared, kSrcPass,
                   validated, row_begin, row_end, record);
  return {o.gk, o.gv};
}

// 'additive' (GAT) backward in two ops (backward_additive): _values runs B1 over the source
// rows [row_begin, row_end), filling their out-edges' records in `record` [E, 2H] and
// returning their grad v; once every source row has run, _scores runs A and B2 on the records
// and returns (grad q, grad k, grad bias). `stats` is the [N_dst, 2H] record [lse_i (+inf for
// -inf), q_i] (graphattn.ops.projected builds it).
at::Tensor edge_attention_backward_additive_values_cpu(
    const at::Tensor& grad_out_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const c10::optional<at::Tensor>& bias_, const at::Tensor& stats_, const at::Tensor& csc_ptr,
    const at::Tensor& csc_eid, const at::Tensor& csc_dst, double negative_slope,
    at::Tensor& record, bool validated, int64_t row_begin, c10::optional<int64_t> row_end_) {
  TORCH_CHECK_VALUE(q_.device().is_cpu(), "graphattn: 'q' must be on the CPU for the CPU kernel");
  const Dims dm = check_attention_shapes(q_, k_, v_, c10::nullopt, bias_, q_.size(0),
                                         csc_eid.numel(), ADDITIVE);
  check_grad_shapes(dm, q_, grad_out_, c10::nullopt);
  check_csc_shapes(dm, csc_ptr, csc_eid, csc_dst);
  check_ptr(csc_ptr, dm.E, "csc_ptr", validated);
  check_range(csc_eid, dm.E, "csc_eid", validated);
  check_range(csc_dst, dm.Nd, "csc_dst", validated);
  const int64_t H = dm.H, row_end = row_end_.value_or(dm.Ns);
  TORCH_CHECK_VALUE(0 <= row_begin && row_begin <= row_end && row_end <= dm.Ns,
                    "graphattn: the "
                    "source rows [row_begin, row_end) must satisfy 0 <= row_begin <= row_end <= "
                    "N_src = ",
                    dm.Ns, ", got [", row_begin, ", ", row_end, ")");
  TORCH_CHECK_VALUE(stats_.sizes() == at::IntArrayRef({dm.Nd, 2 * H}),
                    "graphattn: 'stats' must have shape [N_dst, 2 * H] = [", dm.Nd, ", ", 2 * H,
                    "], got ", stats_.sizes());
  check_float(stats_, "stats", q_.scalar_type(), q_.device());
  TORCH_CHECK_VALUE(record.sizes() == at::IntArrayRef({dm.E, 2 * H}) && record.is_contiguous(),
                    "graphattn: 'record' must be a contiguous [E, 2 * H] = [", dm.E, ", ", 2 * H,
                    "] tensor, got ", record.sizes());
  check_float(record, "record", q_.scalar_type(), q_.device());
  const AttentionInputs in = contiguous_inputs(q_, k_, v_, c10::nullopt, bias_, ADDITIVE);
  const RowView go = row_view(grad_out_);
  const at::Tensor stats = stats_.contiguous();
  at::Tensor gv = at::empty({row_end - row_begin, H, dm.Dv}, in.q.options());
  AT_DISPATCH_FLOATING_TYPES(in.q.scalar_type(), "graphattn::edge_attention_backward_additive",
                             [&] {
    dispatch_dims(dm, [&](auto hc, auto, auto dvc) {
      additive_values<decltype(hc)::value, decltype(dvc)::value, scalar_t>(
          dm, go.t.data_ptr<scalar_t>(), go.stride, nullptr, in.k.data_ptr<scalar_t>(),
          in.v.data_ptr<scalar_t>(), in.has_bias ? in.bias.data_ptr<scalar_t>() : nullptr,
          stats.data_ptr<scalar_t>(), csc_ptr.data_ptr<int64_t>(), csc_eid.data_ptr<int64_t>(),
          csc_dst.data_ptr<int64_t>(), negative_slope, record.data_ptr<scalar_t>(),
          gv.data_ptr<scalar_t>(), row_begin, row_end);
    });
  });
  return gv;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> edge_attention_backward_additive_scores_cpu(
    at::Tensor& record, const at::Tensor& ptr, const at::Tensor& csc_ptr,
    const at::Tensor& csc_eid, double negative_slope, bool bias_grad, bool validated) {
  TORCH_CHECK_VALUE(record.device().is_cpu(),
                    "graphattn: 'record' must be on the CPU for the CPU kernel");
  TORCH_CHECK_VALUE(
      record.dim() == 2 && record.size(1) % 2 == 0 && record.size(1) > 0 && record.is_contiguous(),
      "graphattn: 'record' must be a contiguous [E, 2 * H] tensor, got ", record.sizes());
  TORCH_CHECK_TYPE(record.scalar_type() == at::kFloat || record.scalar_type() == at::kDouble,
                   "graphattn: 'record' must be float32 or float64, got ", record.scalar_type());
  const int64_t E = record.size(0), H = record.size(1) / 2;
  check_ptr(ptr, E, "ptr", validated);
  check_ptr(csc_ptr, E, "csc_ptr", validated);
  TORCH_CHECK_VALUE(csc_eid.numel() == E, "graphattn: 'csc_eid' must have E = ", E,
                    " entries (the rows of 'record'), got ", csc_eid.numel());
  check_range(csc_eid, E, "csc_eid", validated);
  const Dims dm{ptr.numel() - 1, csc_ptr.numel() - 1, E, H, 1, 1};
  const auto opt = record.options();
  at::Tensor gq = at::empty({dm.Nd, H, 1}, opt), gk = at::empty({dm.Ns, H, 1}, opt);
  at::Tensor gbias = bias_grad ? at::empty({E, H}, opt) : at::empty({0}, opt);
  AT_DISPATCH_FLOATING_TYPES(record.scalar_type(), "graphattn::edge_attention_backward_additive",
                             [&] {
    auto run = [&](auto hc) {
      additive_scores<decltype(hc)::value, scalar_t>(
          dm, ptr.data_ptr<int64_t>(), csc_ptr.data_ptr<int64_t>(), csc_eid.data_ptr<int64_t>(),
          negative_slope, record.data_ptr<scalar_t>(), gq.data_ptr<scalar_t>(),
          gk.data_ptr<scalar_t>(), bias_grad ? gbias.data_ptr<scalar_t>() : nullptr, false);
    };
    if (H == 4) run(std::integral_constant<int, 4>{});
    else run(std::integral_constant<int, 0>{});
  });
  return {gq, gk, gbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) {
  m.impl("edge_attention", &edge_attention_cpu);
  m.impl("edge_attention_backward", &edge_attention_backward_cpu);
  m.impl("edge_attention_backward_dst", &edge_attention_backward_dst_cpu);
  m.impl("edge_attention_backward_src", &edge_attention_backward_src_cpu);
  m.impl("edge_attention_backward_additive_values", &edge_attention_backward_additive_values_cpu);
  m.impl("edge_attention_backward_additive_scores", &edge_attention_backward_additive_scores_cpu);
}

}  // namespace graphattn
