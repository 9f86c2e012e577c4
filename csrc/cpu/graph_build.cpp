// Destination-sorted CSR and source-sorted CSC of an edge list by counting sort
// (graphattn.index.build_graph on the CPU): O(E + N) time, and no memory beyond the outputs
// and one cursor per node, where two stable torch.sort calls (each with its own keys, values
// and scratch) took about twice the graph's size in temporaries.
//
// Edges j -> i are given as edge_index[0] = j (source), edge_index[1] = i (destination). With
// self_loops, every loop (j == i) is dropped and one loop per node n < min(num_src, num_dst) is
// appended after the remaining edges, as PyG's remove_self_loops + add_self_loops do; the
// caller's edge ids are then 0..K-1 for the K kept edges (in their order) and K + n for the
// loop of node n. Both sorts are stable, so the result equals that of
// torch.sort(dst, stable=True) followed by torch.sort(src_csr, stable=True):
//   ptr [N_dst + 1], perm [E'] (caller's id of each CSR position), src [E'] (CSR order),
//   csc_ptr [N_src + 1], csc_eid [E'] (CSR position of each CSC position), csc_dst [E'],
//   kept [K] (ids in edge_index of the kept edges; empty without self_loops).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace graphattn {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
edge_csr_cpu(const at::Tensor& edge_index, int64_t num_src, int64_t num_dst, bool self_loops) {
  TORCH_CHECK(edge_index.device().is_cpu(), "graphattn: 'edge_index' must be on the CPU for "
              "the CPU graph builder, got ", edge_index.device());
  TORCH_CHECK(edge_index.scalar_type() == at::kLong, "graphattn: 'edge_index' must be an int64 "
              "tensor, got ", edge_index.scalar_type());
  TORCH_CHECK(edge_index.dim() == 2 && edge_index.size(0) == 2, "graphattn: 'edge_index' must "
              "have shape [2, num_edges], got ", edge_index.sizes());
  TORCH_CHECK(num_src >= 0 && num_dst >= 0, "graphattn: node counts must be non-negative, got (",
              num_src, ", ", num_dst, ")");
  const at::Tensor ei = edge_index.contiguous();
  const int64_t E = ei.size(1);
  const int64_t* s = ei.data_ptr<int64_t>();
  const int64_t* d = s + E;
  int64_t loops_in = 0;  // self-loops among the given edges
  for (int64_t e = 0; e < E; ++e) {  // every index is used as an address below
    TORCH_CHECK(s[e] >= 0 && s[e] < num_src, "graphattn: 'edge_index[0]' (sources) holds ", s[e],
                " at position ", e, ", outside the valid range [0, ", num_src, ")");
    TORCH_CHECK(d[e] >= 0 && d[e] < num_dst, "graphattn: 'edge_index[1]' (destinations) holds ",
                d[e], " at position ", e, ", outside the valid range [0, ", num_dst, ")");
    loops_in += s[e] == d[e];
  }
  const auto opt = ei.options();
  const int64_t loops = self_loops ? std::min(num_src, num_dst) : 0;
  const int64_t K = self_loops ? E - loops_in : E;
  const int64_t Et = K + loops;

  // CSR: counts per destination, exclusive prefix sum, stable placement in caller order
  at::Tensor ptr = at::zeros({num_dst + 1}, opt);
  int64_t* p = ptr.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e)
    if (!self_loops || s[e] != d[e]) ++p[d[e] + 1];
  for (int64_t n = 0; n < loops; ++n) ++p[n + 1];
  for (int64_t i = 0; i < num_dst; ++i) p[i + 1] += p[i];
  at::Tensor perm = at::empty({Et}, opt), src = at::empty({Et}, opt);
  at::Tensor kept = at::empty({self_loops ? K : 0}, opt);
  int64_t* pm = perm.data_ptr<int64_t>();
  int64_t* sc = src.data_ptr<int64_t>();
  int64_t* kp = kept.data_ptr<int64_t>();
  std::vector<int64_t> cur(p, p + num_dst);
  int64_t id = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (self_loops) {
      if (s[e] == d[e]) continue;
      kp[id] = e;
    }
    const int64_t c = cur[d[e]]++;
    pm[c] = id++;
    sc[c] = s[e];
  }
  for (int64_t n = 0; n < loops; ++n) {
    const int64_t c = cur[n]++;
    pm[c] = K + n;
    sc[c] = n;
  }

  // CSC: counts per source over the CSR positions, stable placement in CSR order
  at::Tensor csc_ptr = at::zeros({num_src + 1}, opt);
  int64_t* q = csc_ptr.data_ptr<int64_t>();
  for (int64_t c = 0; c < Et; ++c) ++q[sc[c] + 1];
  for (int64_t j = 0; j < num_src; ++j) q[j + 1] += q[j];
  at::Tensor csc_eid = at::empty({Et}, opt), csc_dst = at::empty({Et}, opt);
  int64_t* ce = csc_eid.data_ptr<int64_t>();
  int64_t* cd = csc_dst.data_ptr<int64_t>();
  cur.assign(q, q + num_src);
  for (int64_t i = 0; i < num_dst; ++i)
    for (int64_t c = p[i]; c < p[i + 1]; ++c) {
      const int64_t t = cur[sc[c]]++;
      ce[t] = c;
      cd[t] = i;
    }
  return {ptr, perm, src, csc_ptr, csc_eid, csc_dst, kept};
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) { m.impl("edge_csr", &edge_csr_cpu); }

}  // namespace graphattn
