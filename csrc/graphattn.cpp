// graphattn._C: every operator schema lives here, in one place.
//
// Conventions shared by all ops (see graphattn/index.py):
//   * edges are given in destination-sorted CSR order: ``ptr[N_dst + 1]`` (int64) and
//     ``src[E]`` (int64), so the in-edges of destination ``i`` are
//     ``ptr[i] .. ptr[i + 1] - 1``;
//   * the backward of the attention op also takes the transposed (CSC) view:
//     ``csc_ptr[N_src + 1]``, ``csc_eid[E]`` (position of the edge in CSR order) and
//     ``csc_dst[E]`` (its destination), so that gradients for sources are reduced by
//     source rows without atomics;
//   * per-edge tensors (bias, weights, scores) are in CSR order.
#include <torch/extension.h>
#include <torch/library.h>

#include "attention_shapes.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef WITH_CUDA
#include <cuda.h>  // CUDA_VERSION
#endif

TORCH_LIBRARY(graphattn, m) {
  //   * validated (the last argument of the segment and attention ops): the caller vouches
  //     that ptr / src / csc_* are a valid CSR (CSC) of the edges, as graphattn's EdgeGraph
  //     built from a checked edge_index is; the kernels then skip the scans of the index
  //     contents (on the GPU: their host syncs) and check dtypes, devices and sizes only.
  //     False (the default, for any other caller): every index is read and range-checked.
  //     For segment_reduce_backward it also vouches for arg (the forward's, on the same ptr).
  // CSR by destination and CSC by source of an edge list (CPU, graphattn.index.build_graph):
  // (ptr, perm, src, csc_ptr, csc_eid, csc_dst, kept); self_loops drops the loops and appends
  // one per node n < min(num_src, num_dst), kept then holding the ids of the remaining edges.
  m.def(
      "edge_csr(Tensor edge_index, int num_src, int num_dst, bool self_loops=False) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // All pairs (s, i) of one graph with |src_s - tgt_i| < r (CPU, cell lists; graph g holds the
  // sources [src_ptr[g], src_ptr[g + 1]) and the targets [tgt_ptr[g], tgt_ptr[g + 1])): [2, E]
  // (sources, targets) sorted by target then source, without the pairs s == i + exclude_offset
  // (exclude_offset -1: none); max_num_neighbors >= 0 keeps each target's closest sources (ties
  // to the lower id), -1 all.
  m.def(
      "radius(Tensor src, Tensor tgt, float r, Tensor src_ptr, Tensor tgt_ptr, "
      "int exclude_offset=-1, int max_num_neighbors=-1) -> Tensor");
  // Each target's k nearest sources of its own graph (CPU, cell lists; graphs as for radius):
  // [2, E] (sources, targets) sorted by target then source, ties in distance to the lower id,
  // without the pairs s == i + exclude_offset (-1: none).
  m.def(
      "knn(Tensor src, Tensor tgt, Tensor src_ptr, Tensor tgt_ptr, int k, "
      "int exclude_offset=-1) -> Tensor");
  // The bilinear pieces of edge attention (CPU; its derivatives of second and higher order):
  // edge_pair_dot s[e, h] = a[dst_e, h] . b[src_e, h] over the CSR (ptr, src), [E, H];
  // edge_spmm out[r, h] = sum_{t in row r} w[eid[t] (t without eid), h] x[col[t], h] over a
  // row-sorted view (the CSR, or the CSC with col = csc_dst, eid = csc_eid), [R, H, D].
  m.def(
      "edge_pair_dot(Tensor a, Tensor b, Tensor ptr, Tensor src, bool validated=False) -> Tensor");
  m.def(
      "edge_spmm(Tensor w, Tensor x, Tensor ptr, Tensor col, Tensor? eid=None, "
      "bool validated=False) -> Tensor");
  m.def("segment_softmax(Tensor scores, Tensor ptr, bool validated=False) -> Tensor");
  m.def(
      "segment_softmax_backward(Tensor out, Tensor grad_out, Tensor ptr, "
      "bool validated=False) -> Tensor");
  m.def(
      "segment_reduce(Tensor src, Tensor ptr, str reduce, bool validated=False) "
      "-> (Tensor, Tensor)");
  m.def(
      "segment_reduce_backward(Tensor grad_out, Tensor ptr, Tensor arg, str reduce, "
      "SymInt num_edges, bool validated=False) -> Tensor");
  // Channel-scaled sum over each destination's in-edges (csrc/cpu/scaled_aggregate.cpp):
  // out[i, c] = sum_e coef[e, k(c)] head_coef[e, h(c)] messages[e, c], channels cut by the
  // blocks (muls, dims); channel u of each block belongs to head h = u mod H (no head_coef: 1).
  m.def(
      "scaled_aggregate(Tensor messages, Tensor coef, Tensor ptr, int[] muls, int[] dims, "
      "Tensor? head_coef=None) -> Tensor");
  m.def(
      "scaled_aggregate_backward(Tensor grad_out, Tensor messages, Tensor coef, Tensor ptr, "
      "int[] muls, int[] dims, bool need_messages, bool need_coef, Tensor? head_coef=None, "
      "bool need_head=False) -> (Tensor, Tensor, Tensor)");
  // Channel-wise tensor product of per-edge features x with harmonics y and per-edge weights
  // (csrc/cpu/tensor_product.cpp); meta [P, 9] and coupling describe the paths.
  m.def(
      "depthwise_tp(Tensor x, Tensor y, Tensor weight, Tensor coupling, Tensor meta, "
      "SymInt out_dim) -> Tensor");
  m.def(
      "depthwise_tp_backward(Tensor grad_out, Tensor x, Tensor y, Tensor weight, "
      "Tensor coupling, Tensor meta, bool need_x, bool need_y, bool need_weight) "
      "-> (Tensor, Tensor, Tensor)");
  // Scores of destination queries q [N_dst, H, F] against per-edge keys k [E, F]
  // (csrc/cpu/edge_dot.cpp): s[e, h] = q[dst(e), h] . k[e].
  m.def("edge_query_dot(Tensor q, Tensor k, Tensor ptr) -> Tensor");
  m.def(
      "edge_query_dot_backward(Tensor grad_out, Tensor q, Tensor k, Tensor ptr, bool need_q, "
      "bool need_k) -> (Tensor, Tensor)");
  // The forward of edge_attention takes the CSC view only so that its autograd formula
  // (registered from Python) can hand it to the backward; the forward kernel ignores it.
  // kv_shared (backward): k and v are the same tensor (GATv2, self-attention on one
  // projection); grad k then holds grad k + grad v and grad v is empty, so the backward
  // allocates one [N_src, H, D] gradient instead of two.
  // kind: 0 = dot (q_i . k_j * scale + bias), 1 = additive (LeakyReLU(q_i + k_j + bias)),
  //       2 = v2 (att . LeakyReLU(q_i + k_j) + bias).
  m.def(
      "edge_attention(Tensor q, Tensor k, Tensor v, Tensor? att, Tensor? bias, Tensor ptr, "
      "Tensor src, Tensor csc_ptr, Tensor csc_eid, Tensor csc_dst, int kind, float scale, "
      "float negative_slope, bool return_weights, bool validated=False) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "edge_attention_backward(Tensor grad_out, Tensor? grad_weights, Tensor q, Tensor k, "
      "Tensor v, Tensor? att, Tensor? bias, Tensor lse, Tensor ptr, Tensor src, "
      "Tensor csc_ptr, Tensor csc_eid, Tensor csc_dst, int kind, float scale, "
      "float negative_slope, bool kv_shared=False, bool validated=False) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The two passes of edge_attention_backward for the kinds dot and v2 (CPU): _dst returns
  // (grad q, grad att, grad bias, stats [N_dst, 2H]), _src takes that stats record and returns
  // (grad k, grad v) of the source rows [row_begin, row_end) (all by default); together they
  // equal edge_attention_backward. Apart, a caller consumes grad q before grad k and grad v are
  // allocated, and grad k, grad v block by block (graphattn.ops.projected_attention). With a
  // `record` [E, 2H], _dst writes each edge's (p_e, ds_e) into it (p_e = -1 for a fully
  // masked head) and _src reads them instead of recomputing the scores.
  m.def(
      "edge_attention_backward_dst(Tensor grad_out, Tensor? grad_weights, Tensor q, Tensor k, "
      "Tensor v, Tensor? att, Tensor? bias, Tensor lse, Tensor ptr, Tensor src, int kind, "
      "float scale, float negative_slope, bool validated=False, Tensor(a!)? record=None) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "edge_attention_backward_src(Tensor grad_out, Tensor? grad_weights, Tensor q, Tensor k, "
      "Tensor v, Tensor? att, Tensor? bias, Tensor stats, Tensor ptr, Tensor src, "
      "Tensor csc_ptr, Tensor csc_eid, Tensor csc_dst, int kind, float scale, "
      "float negative_slope, bool kv_shared=False, bool validated=False, int row_begin=0, "
      "int? row_end=None, Tensor? record=None) -> (Tensor, Tensor)");
  // The 'additive' (GAT) backward in two ops (CPU): _values fills the per-edge records of the
  // out-edges of the source rows [row_begin, row_end) in `record` [E, 2H] and returns their
  // grad v, from `stats` = [lse (+inf for -inf), q] [N_dst, 2H]; once every source row has run,
  // _scores returns (grad q, grad k, grad bias or an empty tensor) from the records. Together
  // they equal edge_attention_backward of kind 1; apart, a caller consumes grad v block by
  // block (graphattn.ops.projected_attention).
  m.def(
      "edge_attention_backward_additive_values(Tensor grad_out, Tensor q, Tensor k, Tensor v, "
      "Tensor? bias, Tensor stats, Tensor csc_ptr, Tensor csc_eid, Tensor csc_dst, "
      "float negative_slope, Tensor(a!) record, bool validated=False, int row_begin=0, "
      "int? row_end=None) -> Tensor");
  m.def(
      "edge_attention_backward_additive_scores(Tensor(a!) record, Tensor ptr, Tensor csc_ptr, "
      "Tensor csc_eid, float negative_slope, bool bias_grad=False, bool validated=False) "
      "-> (Tensor, Tensor, Tensor)");
}

namespace {
bool with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

int64_t cuda_version() {
#ifdef WITH_CUDA
  return CUDA_VERSION;
#else
  return -1;
#endif
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "graphattn native kernels (operators are registered under torch.ops.graphattn)";
  m.def("with_openmp", &with_openmp, "whether the extension was compiled with OpenMP");
  m.def("cuda_version", &cuda_version, "CUDA version the extension was built with, -1 if none");
  m.def("cuda_max_head_dim", [] { return graphattn::kCudaMaxHeadDim; },
        "widest head (D and Dv) the CUDA edge_attention kernels take");
}
