// Destination-sorted CSR and source-sorted CSC of an edge list by counting sort
// (graphattn.index.build_graph on the CPU): O(E + T N) time, and no memory beyond the outputs
// and one cursor per node and chunk (T chunks, below), where two stable torch.sort calls (each
// with its own keys, values and scratch) took about twice the graph's size in temporaries.
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
//
// Parallel: each sort cuts its input into T contiguous chunks (of edges for the CSR, of CSR
// rows for the CSC), one per task. Every chunk counts its keys into its own histogram; a scan
// over the keys turns the T histograms into each chunk's first slot per key (chunks in order,
// so the placement stays stable); then every chunk places its items. The result does not depend
// on T. T is at most the thread count, and at most E / (2 x keys) so that the T histograms
// (T x keys int64) stay within the edge arrays' size; graphs of fewer than 2^17 edges per
// chunk take one chunk.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace graphattn {
namespace {

constexpr int64_t kMinChunk = 1 << 17;  // edges per chunk below which one chunk does it all

// Number of chunks for a counting sort of n items over `keys` keys (file comment).
int64_t num_chunks(int64_t n, int64_t keys) {
  const int64_t by_size = n / kMinChunk, by_memory = n / (2 * std::max<int64_t>(keys, 1));
  return std::max<int64_t>(1, std::min({static_cast<int64_t>(at::get_num_threads()), by_size,
                                        by_memory}));
}

// Runs f(t) for every chunk t in [0, T), one task per chunk.
template <typename F>
void for_chunks(int64_t T, const F& f) {
  if (T == 1) return f(0);
  at::parallel_for(0, T, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) f(t);
  });
}

// Histograms cnt [T, keys] (chunk t's count of each key) -> each chunk's first slot per key,
// in place, with the rows' starts written to ptr [keys + 1] (exclusive scan over keys of the
// totals plus `extra(k)` more slots after the chunks' at each key; they start at
// ptr[k + 1] - extra(k)).
template <typename Extra>
void chunk_offsets(std::vector<int64_t>& cnt, int64_t T, int64_t keys, int64_t* ptr,
                   const Extra& extra) {
  ptr[0] = 0;
  for (int64_t k = 0; k < keys; ++k) {
    int64_t at = ptr[k];
    for (int64_t t = 0; t < T; ++t) {
      const int64_t c = cnt[t * keys + k];
      cnt[t * keys + k] = at;
      at += c;
    }
    ptr[k + 1] = at + extra(k);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
edge_csr_cpu(const at::Tensor& edge_index, int64_t num_src, int64_t num_dst, bool self_loops) {
  TORCH_CHECK_VALUE(edge_index.device().is_cpu(),
                    "graphattn: 'edge_index' must be on the CPU for the CPU graph builder, got ",
                    edge_index.device());
  TORCH_CHECK_TYPE(edge_index.scalar_type() == at::kLong,
                   "graphattn: 'edge_index' must be an int64 tensor, got ",
                   edge_index.scalar_type());
  TORCH_CHECK_VALUE(edge_index.dim() == 2 && edge_index.size(0) == 2,
                    "graphattn: 'edge_index' must have shape [2, num_edges], got ",
                    edge_index.sizes());
  TORCH_CHECK_VALUE(num_src >= 0 && num_dst >= 0,
                    "graphattn: node counts must be non-negative, got (", num_src, ", ", num_dst,
                    ")");
  const at::Tensor ei = edge_index.contiguous();
  const int64_t E = ei.size(1);
  const int64_t* s = ei.data_ptr<int64_t>();
  const int64_t* d = s + E;
  const auto opt = ei.options();

  // CSR pass 1, by chunks of edges: range checks (every index is used as an address below;
  // the first bad position is reported after the pass, whatever the chunking), the given
  // self-loops, and each chunk's count per destination of the edges it keeps
  const int64_t T = num_chunks(E, num_dst);
  const auto chunk = [&](int64_t t, int64_t n) { return n * t / T; };  // chunk t: [c(t), c(t+1))
  std::vector<int64_t> cnt(T * num_dst, 0), bad(T, -1), loops_in(T, 0);
  for_chunks(T, [&](int64_t t) {
    int64_t* h = cnt.data() + t * num_dst;
    for (int64_t e = chunk(t, E); e < chunk(t + 1, E); ++e) {
      if (s[e] < 0 || s[e] >= num_src || d[e] < 0 || d[e] >= num_dst) {
        bad[t] = e;
        return;
      }
      const bool loop = s[e] == d[e];
      loops_in[t] += loop;
      if (!self_loops || !loop) ++h[d[e]];
    }
  });
  for (int64_t t = 0; t < T; ++t) {
    const int64_t e = bad[t];
    if (e < 0) continue;
    TORCH_CHECK_VALUE(s[e] >= 0 && s[e] < num_src, "graphattn: 'edge_index[0]' (sources) holds ",
                      s[e], " at position ", e, ", outside the valid range [0, ", num_src, ")");
    TORCH_CHECK_VALUE(false, "graphattn: 'edge_index[1]' (destinations) holds ", d[e],
                      " at position ", e, ", outside the valid range [0, ", num_dst, ")");
  }
  int64_t loops_total = 0;
  for (int64_t t = 0; t < T; ++t) loops_total += loops_in[t];
  const int64_t loops = self_loops ? std::min(num_src, num_dst) : 0;
  const int64_t K = self_loops ? E - loops_total : E;
  const int64_t Et = K + loops;

  // CSR pass 2: rows' starts and each chunk's slots (the appended loop of node n takes the
  // last slot of row n), then stable placement in caller order
  at::Tensor ptr = at::empty({num_dst + 1}, opt);
  int64_t* p = ptr.data_ptr<int64_t>();
  chunk_offsets(cnt, T, num_dst, p, [&](int64_t n) { return int64_t(n < loops); });
  at::Tensor perm = at::empty({Et}, opt), src = at::empty({Et}, opt);
  at::Tensor kept = at::empty({self_loops ? K : 0}, opt);
  int64_t* pm = perm.data_ptr<int64_t>();
  int64_t* sc = src.data_ptr<int64_t>();
  int64_t* kp = kept.data_ptr<int64_t>();
  for_chunks(T, [&](int64_t t) {
    int64_t* cur = cnt.data() + t * num_dst;
    int64_t id = chunk(t, E);  // caller's id of the chunk's first kept edge
    if (self_loops)
      for (int64_t u = 0; u < t; ++u) id -= loops_in[u];
    for (int64_t e = chunk(t, E); e < chunk(t + 1, E); ++e) {
      if (self_loops) {
        if (s[e] == d[e]) continue;
        kp[id] = e;
      }
      const int64_t c = cur[d[e]]++;
      pm[c] = id++;
      sc[c] = s[e];
    }
  });
  at::parallel_for(0, loops, 4096, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      pm[p[n + 1] - 1] = K + n;
      sc[p[n + 1] - 1] = n;
    }
  });

  // CSC, by chunks of CSR rows with about Et / T positions each: counts per source, slots,
  // stable placement in CSR order
  const int64_t U = num_chunks(Et, num_src);
  std::vector<int64_t> rows(U + 1, num_dst);  // chunk u: rows [rows[u], rows[u + 1])
  for (int64_t u = 0; u < U; ++u)
    rows[u] = std::lower_bound(p, p + num_dst, Et * u / U) - p;
  cnt.assign(U * num_src, 0);
  for_chunks(U, [&](int64_t u) {
    int64_t* h = cnt.data() + u * num_src;
    for (int64_t c = p[rows[u]]; c < p[rows[u + 1]]; ++c) ++h[sc[c]];
  });
  at::Tensor csc_ptr = at::empty({num_src + 1}, opt);
  int64_t* q = csc_ptr.data_ptr<int64_t>();
  chunk_offsets(cnt, U, num_src, q, [](int64_t) { return int64_t(0); });
  at::Tensor csc_eid = at::empty({Et}, opt), csc_dst = at::empty({Et}, opt);
  int64_t* ce = csc_eid.data_ptr<int64_t>();
  int64_t* cd = csc_dst.data_ptr<int64_t>();
  for_chunks(U, [&](int64_t u) {
    int64_t* cur = cnt.data() + u * num_src;
    for (int64_t i = rows[u]; i < rows[u + 1]; ++i)
      for (int64_t c = p[i]; c < p[i + 1]; ++c) {
        const int64_t t = cur[sc[c]]++;
        ce[t] = c;
        cd[t] = i;
      }
  });
  return {ptr, perm, src, csc_ptr, csc_eid, csc_dst, kept};
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) { m.impl("edge_csr", &edge_csr_cpu); }

}  // namespace graphattn
