// Radius graphs by cell lists (graphattn.geometry.radius_graph and periodic_radius_graph on the
// CPU): every pair (s, i) of source s and target i of one graph with |x_s - y_i| < r, in
// O(N + E) time for atoms at bounded density, where the blockwise path computes all O(N^2)
// pair distances of a graph. As torch-cluster's radius(x, y): the radius graph of one point
// set is sources = targets with the self-pairs excluded (exclude_offset = 0), the periodic one
// has the sources' images as sources (the self-pair of target i then being source
// i + exclude_offset, its image at zero shift).
//
// Graphs are contiguous ranges of sources [src_ptr[g], src_ptr[g + 1]) and of targets
// [tgt_ptr[g], tgt_ptr[g + 1]) (a sorted batch; the caller sorts an unsorted one). Each graph
// gets its own grid over its sources' bounding box with cells of edge h >= r / m, so a pair
// closer than r lies in cells at most m apart on each axis ((2 m + 1)^3 cells are searched per
// target; a target outside the box is clamped to its border cells, which holds every source
// within r of it). h is r / 2 (m = 2) or r (m = 1) times (1 + 1e-5): cell coordinates are
// computed in double and the pair test in the coordinates' own type, and the margin absorbs
// the rounding of both. A graph of n sources gets at most 2 n + 8 cells: where its extent would
// need more (sparse or small graphs, a far outlier), m = 1 and h doubles until it fits, which
// keeps the result exact and the memory O(N) (the search then visits more candidates per cell,
// up to the O(n^2) of the brute force for such a graph).
//
// The result equals the blockwise path's: the squared distance is summed axis by axis from
// coordinate differences in the same order, d2 = ((0 + dx dx) + dy dy) + dz dz with
// dx = x_s - y_i, each product and sum rounded (no fused multiply-add, below), and compared
// with r * r rounded to the coordinates' type (strict). Edges come
// sorted by target, then source; with max_num_neighbors = k >= 0 each target keeps the k
// closest sources (ties to the lower index). Targets are split into chunks processed in
// parallel, each writing its own sources and per-target counts; the result does not depend on
// the thread count. Bad input raises ValueError / TypeError in Python (TORCH_CHECK_VALUE /
// _TYPE), as the blockwise path does.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "cells.h"

namespace graphattn {
namespace {

template <typename scalar_t>
Grid make_grid(const scalar_t* p, int64_t a, int64_t b, double r) {
  Grid g{};
  // one cell holding every source (a brute force over the graph): for a graph without
  // sources, and where no finite cell edge fits (coordinates spanning more than the largest
  // double, a cell edge that underflows to 0)
  g.n[0] = g.n[1] = g.n[2] = g.cells = g.reach = 1;
  if (b <= a) return g;
  double hi[3];
  if (!bounding_box(p, a, b, g.lo, hi)) return g;
  // cells of edge r / 2 (5^3 cells searched, about 0.58x the candidates of 3^3 cells of edge
  // r) where they fit the budget, else of edge r and up (doubled until they fit)
  const double budget = 2.0 * static_cast<double>(b - a) + 8.0;
  double h = r * (1.0 + 1e-5) / 2.0;
  int64_t reach = 2;
  while (h > 0 && std::isfinite(h)) {
    double prod = 1.0, cnt[3];
    for (int k = 0; k < 3; ++k) {
      cnt[k] = std::floor((hi[k] - g.lo[k]) / h) + 1.0;
      prod *= cnt[k];
    }
    if (prod <= budget) {  // (false for a NaN or inf count: the edge doubles)
      for (int k = 0; k < 3; ++k) g.n[k] = static_cast<int64_t>(cnt[k]);
      g.inv_h = 1.0 / h;
      g.cells = g.n[0] * g.n[1] * g.n[2];
      g.reach = reach;
      return g;
    }
    h *= 2.0;
    reach = 1;
  }
  return g;  // the one cell
}

template <typename scalar_t>
at::Tensor radius_impl(const at::Tensor& src, const at::Tensor& tgt, double r,
                       const int64_t* sptr, const int64_t* tptr, int64_t G, int64_t exclude,
                       int64_t max_nn) {
  const int64_t Ns = src.size(0), Nt = tgt.size(0);
  const scalar_t* xs = src.data_ptr<scalar_t>();
  const scalar_t* yt = tgt.data_ptr<scalar_t>();
  const auto opt = src.options().dtype(at::kLong);
  const scalar_t r2 = static_cast<scalar_t>(r * r);
  if (Ns == 0 || Nt == 0 || !(r2 > 0)) return at::empty({2, 0}, opt);  // (d2 < 0: none)

  // 1. one grid per graph over its sources, the sources of each graph by cell, and each
  // target's graph
  const CellLists<scalar_t> cl = sort_into_cells(
      xs, sptr, G, Ns, [&](int64_t g) { return make_grid(xs, sptr[g], sptr[g + 1], r); });
  const std::vector<int64_t> graph_of = graph_of_items(tptr, G, Nt);

  // 2. each target's sources, by chunks of targets
  const int64_t chunks = std::min<int64_t>(Nt, 8 * std::max(1, at::get_num_threads()));
  const auto first = [&](int64_t t) { return Nt * t / chunks; };
  std::vector<std::vector<int64_t>> found(chunks);
  std::vector<int64_t> deg(Nt);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    std::vector<std::pair<scalar_t, int64_t>> cand;  // (d2, source) with a neighbour limit
    std::vector<int64_t> ids;                         // the sources without one
    for (int64_t t = cb; t < ce; ++t) {
      std::vector<int64_t>& out = found[t];
      for (int64_t i = first(t); i < first(t + 1); ++i) {
        const int64_t g = graph_of[i];
        const auto cg = cl.graph(g, sptr[g]);
        const Grid& gr = cg.grid;
        const int64_t *st = cg.start, *nodes = cg.ids;
        const scalar_t* yi = yt + 3 * i;
        const int64_t self = exclude >= 0 ? i + exclude : -1;
        const int64_t cx = axis_cell(gr, yi, 0), cy = axis_cell(gr, yi, 1),
                      cz = axis_cell(gr, yi, 2);
        const int64_t m = gr.reach;
        const int64_t x0 = std::max<int64_t>(cx - m, 0), x1 = std::min(cx + m, gr.n[0] - 1);
        cand.clear();
        ids.clear();
        for (int64_t z = std::max<int64_t>(cz - m, 0); z <= std::min(cz + m, gr.n[2] - 1); ++z) {
          for (int64_t y = std::max<int64_t>(cy - m, 0); y <= std::min(cy + m, gr.n[1] - 1); ++y) {
            const int64_t row = (z * gr.n[1] + y) * gr.n[0];
            // cells x0..x1 of one row are adjacent in the sorted source list
            for (int64_t s = st[row + x0]; s < st[row + x1 + 1]; ++s) {
              const scalar_t d2 = cg.d2(s, yi);
              const int64_t j = nodes[s];
              if (d2 < r2 && j != self) {
                if (max_nn >= 0)
                  cand.emplace_back(d2, j);
                else
                  ids.push_back(j);
              }
            }
          }
        }
        if (max_nn >= 0) {
          if (static_cast<int64_t>(cand.size()) > max_nn) {
            std::nth_element(cand.begin(), cand.begin() + max_nn, cand.end());
            cand.resize(max_nn);
          }
          for (const auto& cj : cand) ids.push_back(cj.second);
        }
        std::sort(ids.begin(), ids.end());
        deg[i] = static_cast<int64_t>(ids.size());
        out.insert(out.end(), ids.begin(), ids.end());
      }
    }
  });

  // 3. concatenate: row 0 the sources, row 1 their targets
  std::vector<int64_t> at_chunk(chunks + 1, 0);
  for (int64_t t = 0; t < chunks; ++t)
    at_chunk[t + 1] = at_chunk[t] + static_cast<int64_t>(found[t].size());
  const int64_t E = at_chunk[chunks];
  at::Tensor edge_index = at::empty({2, E}, opt);
  int64_t* row0 = edge_index.data_ptr<int64_t>();
  int64_t* row1 = row0 + E;
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t t = cb; t < ce; ++t) {
      std::copy(found[t].begin(), found[t].end(), row0 + at_chunk[t]);
      int64_t o = at_chunk[t];
      for (int64_t i = first(t); i < first(t + 1); ++i)
        for (int64_t d = 0; d < deg[i]; ++d) row1[o++] = i;
    }
  });
  return edge_index;
}

at::Tensor radius_cpu(const at::Tensor& src, const at::Tensor& tgt, double r,
                      const at::Tensor& src_ptr, const at::Tensor& tgt_ptr, int64_t exclude_offset,
                      int64_t max_num_neighbors) {
  check_points(src, "src", "radius graph");
  check_points(tgt, "tgt", "radius graph");
  TORCH_CHECK_TYPE(src.scalar_type() == tgt.scalar_type(), "graphattn: 'tgt' must have the "
                   "dtype of 'src' (", src.scalar_type(), "), got ", tgt.scalar_type());
  TORCH_CHECK_VALUE(std::isfinite(r) && r >= 0, "graphattn: 'r' must be a finite non-negative "
                    "number, got ", r);
  TORCH_CHECK_VALUE(max_num_neighbors >= -1, "graphattn: 'max_num_neighbors' must be >= 0, "
                    "or -1 for no limit, got ", max_num_neighbors);
  TORCH_CHECK_VALUE(exclude_offset >= -1 && exclude_offset <= src.size(0),
                    "graphattn: 'exclude_offset' must lie in [0, number of sources = ",
                    src.size(0), "], or be -1 to exclude nothing, got ", exclude_offset);
  const at::Tensor xs = src.contiguous(), yt = tgt.contiguous();
  const at::Tensor sp = check_offsets(src_ptr, xs.size(0), "src_ptr", "sources");
  const at::Tensor tp = check_offsets(tgt_ptr, yt.size(0), "tgt_ptr", "targets");
  TORCH_CHECK_VALUE(sp.numel() == tp.numel(), "graphattn: 'src_ptr' and 'tgt_ptr' must hold "
                    "the same number of graphs, got ", sp.numel() - 1, " and ", tp.numel() - 1);
  return AT_DISPATCH_FLOATING_TYPES(xs.scalar_type(), "radius_cpu", [&] {
    check_finite<scalar_t>(xs, "src");
    check_finite<scalar_t>(yt, "tgt");
    return radius_impl<scalar_t>(xs, yt, r, sp.data_ptr<int64_t>(), tp.data_ptr<int64_t>(),
                                 sp.numel() - 1, exclude_offset, max_num_neighbors);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) { m.impl("radius", &radius_cpu); }

}  // namespace graphattn
