// Shape, dtype and device checks of the core's inputs (and their contiguous copies), shared
// by the CPU (cpu/) and CUDA (cuda/) kernels; each backend adds the checks of its index contents (ptr non-decreasing,
// indices in range), which read the indices where they live. Every message names the
// argument, the expected shape or dtype and what came in.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <type_traits>

namespace graphattn {

// score kinds of edge_attention (the `kind` argument of the schema)
constexpr int64_t DOT = 0;       // q_i . k_j * scale + b
constexpr int64_t ADDITIVE = 1;  // LeakyReLU(q_i + k_j + b), per-head scalars
constexpr int64_t V2 = 2;        // att . LeakyReLU(q_i + k_j) + b

struct Dims {
  int64_t Nd, Ns, E, H, D, Dv;
};

// accumulation type: at least float32, double for double.
template <typename scalar_t>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// CUDA kernels hold a head in registers, at most 8 chunks of 32 lanes (csrc/cuda/); exposed
// to Python as graphattn._C.cuda_max_head_dim(), whose ops route wider heads elsewhere.
constexpr int64_t kCudaMaxHeadDim = 32 * 8;

// An index tensor's dtype, rank, layout and device (its contents are checked by each backend
// where the index lives: cpu/checks.h, cuda/common.cuh).
inline void check_index(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "graphattn: '", name,
                   "' must be an int64 tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1, "graphattn: '", name, "' must be 1-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), "graphattn: '", name, "' must be contiguous");
  TORCH_CHECK_VALUE(t.device() == device, "graphattn: '", name, "' must be on ", device,
                    " (like the features), got ",
                    t.device());
}

inline void check_float(const at::Tensor& t, const char* name, at::ScalarType dtype,
                        const at::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "graphattn: '", name, "' must have dtype ", dtype,
                   " (same as q), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == device, "graphattn: '", name, "' must be on ", device,
                    " (like the features), got ", t.device());
}

// Everything about q, k, v, att and bias that does not read the index tensors.
inline Dims check_attention_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const c10::optional<at::Tensor>& att,
                                   const c10::optional<at::Tensor>& bias, int64_t num_dst,
                                   int64_t num_edges, int64_t kind) {
  TORCH_CHECK_VALUE(kind == DOT || kind == ADDITIVE || kind == V2,
                    "graphattn: 'kind' must be 0 (dot), 1 (additive) or 2 (v2), got ", kind);
  TORCH_CHECK_VALUE(q.dim() == 3, "graphattn: 'q' must have shape [N_dst, H, D], got ", q.sizes());
  TORCH_CHECK_VALUE(k.dim() == 3, "graphattn: 'k' must have shape [N_src, H, D], got ", k.sizes());
  TORCH_CHECK_VALUE(v.dim() == 3, "graphattn: 'v' must have shape [N_src, H, Dv], got ", v.sizes());
  TORCH_CHECK_TYPE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
                   "graphattn: 'q' must be float32 or float64, got ", q.scalar_type());
  check_float(k, "k", q.scalar_type(), q.device());
  check_float(v, "v", q.scalar_type(), q.device());
  Dims d{};
  d.Nd = num_dst;
  d.Ns = k.size(0);
  d.E = num_edges;
  d.H = q.size(1);
  d.D = q.size(2);
  d.Dv = v.size(2);
  TORCH_CHECK_VALUE(q.size(0) == d.Nd, "graphattn: 'q' has ", q.size(0),
                    " rows but 'ptr' describes ", d.Nd, " destination nodes");
  TORCH_CHECK_VALUE(v.size(0) == d.Ns, "graphattn: 'v' has ", v.size(0), " rows but 'k' has ",
                    d.Ns);
  TORCH_CHECK_VALUE(k.size(1) == d.H && v.size(1) == d.H,
                    "graphattn: q, k, v must have the same number of heads, got ",
                    d.H, ", ", k.size(1), ", ", v.size(1));
  TORCH_CHECK_VALUE(k.size(2) == d.D, "graphattn: 'k' must have head dim ", d.D, " like 'q', got ",
                    k.size(2));
  if (kind == ADDITIVE) {
    TORCH_CHECK_VALUE(d.D == 1,
                      "graphattn: kind 'additive' takes per-head scalars q, k of shape "
                      "[N, H, 1], got head dim ",
                      d.D);
  }
  if (kind == V2) {
    TORCH_CHECK_VALUE(att.has_value() && att->defined(), "graphattn: kind 'v2' needs 'att' [H, D]");
    TORCH_CHECK_VALUE(att->dim() == 2 && att->size(0) == d.H && att->size(1) == d.D,
                      "graphattn: 'att' must have shape [", d.H, ", ", d.D, "], got ",
                      att->sizes());
    check_float(*att, "att", q.scalar_type(), q.device());
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 2 && bias->size(0) == d.E && bias->size(1) == d.H,
                      "graphattn: 'bias' must have shape [E, H] = [", d.E, ", ", d.H, "], got ",
                      bias->sizes());
    check_float(*bias, "bias", q.scalar_type(), q.device());
  }
  return d;
}

// The backward's extra inputs (shapes only); returns whether grad_weights takes part.
// grad_out [N_dst, H, Dv] and the optional grad_weights [E, H]; returns whether the latter
// is given.
inline bool check_grad_shapes(const Dims& dm, const at::Tensor& q, const at::Tensor& grad_out,
                              const c10::optional<at::Tensor>& grad_weights) {
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({dm.Nd, dm.H, dm.Dv}),
                    "graphattn: 'grad_out' must have shape [N_dst, H, Dv], got ", grad_out.sizes());
  check_float(grad_out, "grad_out", q.scalar_type(), q.device());
  const bool has_gw =
      grad_weights.has_value() && grad_weights->defined() && grad_weights->numel() > 0;
  if (has_gw) {
    TORCH_CHECK_VALUE(grad_weights->sizes() == at::IntArrayRef({dm.E, dm.H}),
                      "graphattn: 'grad_weights' must have shape [E, H], got ",
                      grad_weights->sizes());
    check_float(*grad_weights, "grad_weights", q.scalar_type(), q.device());
  }
  return has_gw;
}

// the CSC view's sizes (its values are range-checked by each backend)
inline void check_csc_shapes(const Dims& dm, const at::Tensor& csc_ptr, const at::Tensor& csc_eid,
                             const at::Tensor& csc_dst) {
  TORCH_CHECK_VALUE(csc_ptr.numel() == dm.Ns + 1,
                    "graphattn: 'csc_ptr' must have N_src + 1 = ", dm.Ns + 1, " entries, got ",
                    csc_ptr.numel());
  TORCH_CHECK_VALUE(csc_eid.numel() == dm.E && csc_dst.numel() == dm.E,
                    "graphattn: 'csc_eid' and 'csc_dst' must have E = ", dm.E, " entries");
}

inline void check_kv_shared(const at::Tensor& k, const at::Tensor& v, bool kv_shared) {
  TORCH_CHECK_VALUE(!kv_shared || k.sizes() == v.sizes(),
                    "graphattn: 'kv_shared' needs 'k' and 'v' of the same shape, got ",
                    k.sizes(), " and ", v.sizes());
}

inline bool check_backward_shapes(const Dims& dm, const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& v, const at::Tensor& grad_out,
                                  const c10::optional<at::Tensor>& grad_weights,
                                  const at::Tensor& lse, const at::Tensor& csc_ptr,
                                  const at::Tensor& csc_eid, const at::Tensor& csc_dst,
                                  bool kv_shared) {
  check_kv_shared(k, v, kv_shared);
  const bool has_gw = check_grad_shapes(dm, q, grad_out, grad_weights);
  TORCH_CHECK_VALUE(lse.sizes() == at::IntArrayRef({dm.Nd, dm.H}),
                    "graphattn: 'lse' must have shape [N_dst, H], got ", lse.sizes());
  check_float(lse, "lse", q.scalar_type(), q.device());
  check_csc_shapes(dm, csc_ptr, csc_eid, csc_dst);
  return has_gw;
}

// Calls f(std::integral_constant<int, KIND>{}) for the score kind (checked beforehand).
template <typename F>
void dispatch_kind(int64_t kind, F&& f) {
  if (kind == DOT) f(std::integral_constant<int, DOT>{});
  else if (kind == ADDITIVE) f(std::integral_constant<int, ADDITIVE>{});
  else f(std::integral_constant<int, V2>{});
}

// q, k, v (and att for 'v2', bias when given) made contiguous for a kernel.
struct AttentionInputs {
  at::Tensor q, k, v, att, bias;
  bool has_att, has_bias;
};
inline AttentionInputs contiguous_inputs(const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v,
                                         const c10::optional<at::Tensor>& att,
                                         const c10::optional<at::Tensor>& bias, int64_t kind) {
  AttentionInputs in;
  in.q = q.contiguous();
  in.k = k.contiguous();
  in.v = v.contiguous();
  in.has_att = att.has_value() && att->defined() && kind == V2;
  in.has_bias = bias.has_value() && bias->defined();
  if (in.has_att) in.att = att->contiguous();
  if (in.has_bias) in.bias = bias->contiguous();
  return in;
}

// The forward's outputs: out [N_dst, H, Dv], lse [N_dst, H], weights [E (or 0), H].
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_outputs(const Dims& dm,
                                                                      const at::Tensor& q,
                                                                      bool return_weights) {
  return {at::empty({dm.Nd, dm.H, dm.Dv}, q.options()), at::empty({dm.Nd, dm.H}, q.options()),
          at::empty({return_weights ? dm.E : 0, dm.H}, q.options())};
}

// Per-edge values of the segment ops: [E, F], float32 or float64.
inline void check_edge_values(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2, "graphattn: '", name, "' must have shape [E, F], got ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "graphattn: '",
                   name, "' must be float32 or float64, got ", t.scalar_type());
}

// grad_out [N, F] of segment_reduce (N = ptr.numel() - 1) and, for 'max', its argmax.
inline void check_reduce_backward_shapes(const at::Tensor& grad, const at::Tensor& ptr,
                                         const at::Tensor& arg, int code) {
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == ptr.numel() - 1,
                    "graphattn: 'grad_out' must have shape [N, F] with N = ", ptr.numel() - 1,
                    ", got ", grad.sizes());
  if (code == 2) {
    TORCH_CHECK_TYPE(arg.scalar_type() == at::kLong,
                     "graphattn: 'arg' must be an int64 tensor, got ",
                     arg.scalar_type());
    TORCH_CHECK_VALUE(arg.sizes() == grad.sizes() && arg.device() == grad.device(),
                      "graphattn: 'arg' must have shape ", grad.sizes(), " on ", grad.device(),
                      ", got ", arg.sizes(), " on ", arg.device());
  }
}

// segment reductions: 0 sum, 1 mean, 2 max
inline int reduce_code(const std::string& reduce) {
  if (reduce == "sum") return 0;
  if (reduce == "mean") return 1;
  if (reduce == "max") return 2;
  TORCH_CHECK_VALUE(false, "graphattn: 'reduce' must be 'sum', 'mean' or 'max', got '", reduce,
                    "'");
  return -1;
}

}  // namespace graphattn
