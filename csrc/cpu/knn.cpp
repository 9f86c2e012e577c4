// k-nearest-neighbour graphs by cell lists (graphattn.geometry.knn_graph and knn on the CPU):
// each target's k closest sources of its own graph, in O(N k) time for points at bounded
// density, where the blockwise path computes and sorts all O(N^2) pair distances of a graph.
// As torch-cluster's knn(x, y): the kNN graph of one point set is sources = targets with the
// self-pairs excluded (exclude_offset = 0: target i is not its own source i).
//
// Graphs are contiguous ranges [src_ptr[g], src_ptr[g + 1]) of the sources and
// [tgt_ptr[g], tgt_ptr[g + 1]) of the targets (a sorted batch; the caller sorts an unsorted
// one). Each graph gets a grid over its sources' bounding box with about 2 n / k cells (k / 2
// sources per cell at uniform density; at most 8 cells where the box is flat or the graph
// small). A target inside the box searches the cells in rings of growing Chebyshev distance R
// from its own (contiguous rows of cells), keeping the k best (d2, source) pairs, and stops
// after ring R once its k-th best squared distance lies strictly below b * b, b the distance
// to the nearest face of the searched block of (2 R + 1)^3 cells (faces at the grid's border
// do not count: nothing lies beyond them, so a search that has covered the grid stops). A
// target outside the box visits the cells best first instead, in order of the least squared
// distance at which a source of theirs can lie (the sum of its squared distances to the
// cell's extent, axis by axis), from the border cell nearest to it, and stops once its k-th
// best lies strictly below the next cell's bound: it reads the layers of cells facing it
// (rings from a border cell would have to widen to the lateral spread of its k nearest, which
// grows with its distance, and read every layer behind them). Both sides of a stop test are
// rounded in the coordinates' type, a bound's squares and sums in the order of the distances'
// own (sum_sq, cells.h; no unseen point can then come closer or tie); the distances in a bound
// carry margins for the rounding of the cell coordinates, in double, and of their casts. The grid
// spans the bounding box, so a far outlier coarsens it for the rest of its graph (up to one cell:
// the brute force of the blockwise path, without its O(n^2) memory).
//
// The result equals the blockwise path's: d2 = ((0 + dx dx) + dy dy) + dz dz with
// dx = x_s - x_i, each product and sum rounded (no fused multiply-add: cells.h), and
// the k smallest (d2, source id) pairs, so ties in distance go to the lower id, without the pair
// s == i + exclude_offset (exclude_offset -1: none); a graph of fewer candidates than k gives
// each target all of them. Edges come sorted by target, then source. Targets are
// split into chunks processed in parallel; the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <utility>
#include <vector>

#include "cells.h"

namespace graphattn {
namespace {

// cells per axis for cell edge h over spans s (at least 1 each); their product in double
inline double grid_cells(const double* s, double h, double* cnt) {
  double prod = 1.0;
  for (int k = 0; k < 3; ++k) {
    cnt[k] = std::floor(s[k] / h) + 1.0;
    prod *= cnt[k];
  }
  return prod;
}

// A grid of at most 2 n / k cells over points a..b-1 (the budget): the smallest cell edge
// that fits it, to a factor 1 + 2^-20 (halving from the largest span, at most 8 cells, until
// the budget is exceeded, then bisecting); one cell where even the largest span does not fit,
// where the points coincide or where no finite edge exists.
template <typename scalar_t>
Grid knn_grid(const scalar_t* p, int64_t a, int64_t b, int64_t k) {
  Grid g{};
  g.n[0] = g.n[1] = g.n[2] = g.cells = 1;
  if (b <= a) return g;
  double hi[3], span[3], cnt[3];
  if (!bounding_box(p, a, b, g.lo, hi)) return g;
  double h = 0.0;
  for (int d = 0; d < 3; ++d) {
    span[d] = hi[d] - g.lo[d];
    h = std::max(h, span[d]);
  }
  const double budget = std::max(1.0, 2.0 * static_cast<double>(b - a) / static_cast<double>(k));
  if (!(h > 0.0) || grid_cells(span, h, cnt) > budget) return g;
  double tight = 0.0;                  // an edge that does not fit (0: none found yet)
  for (int it = 0; it < 2100; ++it) {  // (2^-2100 of any finite span underflows)
    const double h2 = h / 2.0;
    if (!(h2 > 0.0)) break;
    if (grid_cells(span, h2, cnt) > budget) {
      tight = h2;
      break;
    }
    h = h2;
  }
  for (int it = 0; it < 20 && tight > 0.0; ++it) {  // h fits, tight does not
    const double mid = 0.5 * (tight + h);
    if (grid_cells(span, mid, cnt) > budget)
      tight = mid;
    else
      h = mid;
  }
  if (!std::isfinite(1.0 / h)) return g;  // a subnormal edge: one cell
  grid_cells(span, h, cnt);
  for (int d = 0; d < 3; ++d) g.n[d] = static_cast<int64_t>(cnt[d]);
  g.inv_h = 1.0 / h;
  g.cells = g.n[0] * g.n[1] * g.n[2];
  return g;
}

template <typename scalar_t>
at::Tensor knn_impl(const at::Tensor& src, const at::Tensor& tgt, const int64_t* sptr,
                    const int64_t* tptr, int64_t G, int64_t k, int64_t exclude) {
  const int64_t Ns = src.size(0), N = tgt.size(0);
  const scalar_t* xs = src.data_ptr<scalar_t>();
  const scalar_t* yt = tgt.data_ptr<scalar_t>();
  const auto opt = src.options().dtype(at::kLong);
  if (Ns == 0 || N == 0) return at::empty({2, 0}, opt);

  // 1. the sources of each graph by cell, and each target's graph
  const CellLists<scalar_t> cl = sort_into_cells(
      xs, sptr, G, Ns, [&](int64_t g) { return knn_grid(xs, sptr[g], sptr[g + 1], k); });
  const std::vector<int64_t> graph_of = graph_of_items(tptr, G, N);

  // 2. each target's k nearest, by chunks of targets (every target gets min(k, candidates))
  const int64_t chunks = std::min<int64_t>(N, 8 * std::max(1, at::get_num_threads()));
  const auto first = [&](int64_t t) { return N * t / chunks; };
  std::vector<int64_t> nbr_start(N + 1, 0);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t g = graph_of[i], self = exclude >= 0 ? i + exclude : -1;
    const int64_t n = sptr[g + 1] - sptr[g] - (self >= sptr[g] && self < sptr[g + 1] ? 1 : 0);
    nbr_start[i + 1] = nbr_start[i] + std::min(k, n);
  }
  const int64_t E = nbr_start[N];
  at::Tensor edge_index = at::empty({2, E}, opt);
  int64_t* row0 = edge_index.data_ptr<int64_t>();
  int64_t* row1 = row0 + E;
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    using Pair = std::pair<scalar_t, int64_t>;  // (d2, source): the k smallest, a max-heap
    std::vector<Pair> best;
    std::vector<Pair> front;      // (bound, cell): the cells to visit next, a min-heap
    std::vector<int64_t> queued;  // queued[cell] == i: the cell is in target i's front
    for (int64_t i = first(cb); i < first(ce); ++i) {
      const int64_t kk = nbr_start[i + 1] - nbr_start[i];
      if (kk == 0) continue;
      const int64_t g = graph_of[i];
      const auto cg = cl.graph(g, sptr[g]);
      const Grid& gr = cg.grid;
      const int64_t *st = cg.start, *nodes = cg.ids;
      const scalar_t* yi = yt + 3 * i;
      const int64_t self = exclude >= 0 ? i + exclude : -1;
      const int64_t c[3] = {axis_cell(gr, yi, 0), axis_cell(gr, yi, 1), axis_cell(gr, yi, 2)};
      best.clear();
      // sources s..e-1 of the sorted list
      const auto visit = [&](int64_t s, int64_t e) {
        for (; s < e; ++s) {
          const scalar_t d2 = cg.d2(s, yi);
          const int64_t j = nodes[s];
          if (j == self) continue;
          const Pair pj(d2, j);
          if (static_cast<int64_t>(best.size()) < kk) {
            best.push_back(pj);
            std::push_heap(best.begin(), best.end());
          } else if (pj < best.front()) {
            std::pop_heap(best.begin(), best.end());
            best.back() = pj;
            std::push_heap(best.begin(), best.end());
          }
        }
      };
      const double h = gr.inv_h > 0.0 ? 1.0 / gr.inv_h : 0.0;
      // slack of the face positions against the cells the points were sorted into (both
      // rounded in double, near the coordinates' magnitude)
      const double tol =
          1e-12 * std::max({std::abs(gr.lo[0]), std::abs(gr.lo[1]), std::abs(gr.lo[2]),
                            std::abs(gr.lo[0] + gr.n[0] * h), std::abs(gr.lo[1] + gr.n[1] * h),
                            std::abs(gr.lo[2] + gr.n[2] * h)});
      // a distance v (double) as a scalar_t below it, with the margins above (0 if none is left)
      const auto below = [&](double v) {
        return v > tol ? static_cast<scalar_t>((v - tol) * (1.0 - 1e-6)) : scalar_t(0);
      };
      // the target's distance on axis d to the extent [l, u], as below() gives it
      const auto beyond = [&](int d, double l, double u) {
        const double v = static_cast<double>(yi[d]);
        return below(std::max({0.0, l - v, v - u}));
      };
      bool outside = false;  // of the grid's box on some axis (one cell: searched whole)
      for (int d = 0; d < 3 && gr.cells > 1; ++d)
        outside = outside || beyond(d, gr.lo[d], gr.lo[d] + gr.n[d] * h) > 0;
      if (outside) {
        // Outside the box: best first. The cells in order of the least squared distance at
        // which a source of theirs can lie (per axis the distance to the cell's extent, with
        // the margins of below(), squared and summed as visit() does), popped from a front
        // grown from the target's cell through the cells' faces: every cell has a face
        // neighbour towards the target's cell whose bound is no larger, so the pops come in
        // non-decreasing order. Stop once the k-th best lies strictly below the next bound.
        if (static_cast<int64_t>(queued.size()) < gr.cells) queued.assign(gr.cells, -1);
        const auto push = [&](int64_t x, int64_t y, int64_t z) {
          const int64_t cell = (z * gr.n[1] + y) * gr.n[0] + x;
          if (queued[cell] == i) return;
          queued[cell] = i;
          const int64_t idx[3] = {x, y, z};
          scalar_t b[3];
          for (int d = 0; d < 3; ++d) {
            const double l = gr.lo[d] + idx[d] * h;
            b[d] = beyond(d, l, l + h);
          }
          front.emplace_back(sum_sq(b[0], b[1], b[2]), cell);
          std::push_heap(front.begin(), front.end(), std::greater<Pair>());
        };
        front.clear();
        push(c[0], c[1], c[2]);
        while (!front.empty()) {
          std::pop_heap(front.begin(), front.end(), std::greater<Pair>());
          const auto [bound, cell] = front.back();
          front.pop_back();
          if (static_cast<int64_t>(best.size()) == kk && best.front().first < bound) break;
          visit(st[cell], st[cell + 1]);
          const int64_t x = cell % gr.n[0], y = cell / gr.n[0] % gr.n[1],
                        z = cell / (gr.n[0] * gr.n[1]);
          if (x > 0) push(x - 1, y, z);
          if (x + 1 < gr.n[0]) push(x + 1, y, z);
          if (y > 0) push(x, y - 1, z);
          if (y + 1 < gr.n[1]) push(x, y + 1, z);
          if (z > 0) push(x, y, z - 1);
          if (z + 1 < gr.n[2]) push(x, y, z + 1);
        }
      }
      for (int64_t R = 0; !outside; ++R) {  // inside the box: rings
        const int64_t z0 = std::max<int64_t>(c[2] - R, 0), z1 = std::min(c[2] + R, gr.n[2] - 1);
        const int64_t y0 = std::max<int64_t>(c[1] - R, 0), y1 = std::min(c[1] + R, gr.n[1] - 1);
        const int64_t x0 = std::max<int64_t>(c[0] - R, 0), x1 = std::min(c[0] + R, gr.n[0] - 1);
        for (int64_t z = z0; z <= z1; ++z) {
          for (int64_t y = y0; y <= y1; ++y) {
            const int64_t row = (z * gr.n[1] + y) * gr.n[0];
            if (R == 0 || z == c[2] - R || z == c[2] + R || y == c[1] - R || y == c[1] + R) {
              visit(st[row + x0], st[row + x1 + 1]);  // the ring's whole row: adjacent cells
            } else {                                  // the row's two ends on the ring
              if (c[0] - R >= 0) visit(st[row + c[0] - R], st[row + c[0] - R + 1]);
              if (c[0] + R < gr.n[0]) visit(st[row + c[0] + R], st[row + c[0] + R + 1]);
            }
          }
        }
        // distance from the target to the nearest inner face of the searched block
        double bound = std::numeric_limits<double>::infinity();
        for (int d = 0; d < 3; ++d) {
          const double y = static_cast<double>(yi[d]);
          if (c[d] - R > 0) bound = std::min(bound, y - (gr.lo[d] + (c[d] - R) * h));
          if (c[d] + R + 1 < gr.n[d]) bound = std::min(bound, gr.lo[d] + (c[d] + R + 1) * h - y);
        }
        if (std::isinf(bound)) break;  // the whole grid searched
        // An unseen source differs from the target by more than b on some axis, so its d2,
        // rounded in scalar_t as visit() rounds it, is at least b * b rounded (rounding is
        // monotone; b a scalar_t below the bound: the cast cannot round up past it). Stop
        // once the k-th best lies strictly below that: no unseen source can tie with it. In
        // scalar_t, so that squares flushed to subnormals or 0 never stop the search early.
        const scalar_t b = below(bound);
        if (static_cast<int64_t>(best.size()) == kk && best.front().first < b * b) break;
      }
      std::sort(best.begin(), best.end(),
                [](const Pair& u, const Pair& v) { return u.second < v.second; });
      int64_t o = nbr_start[i];
      for (const Pair& pj : best) {
        row0[o] = pj.second;
        row1[o++] = i;
      }
    }
  });
  return edge_index;
}

at::Tensor knn_cpu(const at::Tensor& src, const at::Tensor& tgt, const at::Tensor& src_ptr,
                   const at::Tensor& tgt_ptr, int64_t k, int64_t exclude_offset) {
  check_points(src, "src", "kNN graph");
  check_points(tgt, "tgt", "kNN graph");
  TORCH_CHECK_TYPE(src.scalar_type() == tgt.scalar_type(),
                   "graphattn: 'tgt' must have the dtype of 'src' (",
                   src.scalar_type(), "), got ", tgt.scalar_type());
  TORCH_CHECK_VALUE(k >= 1, "graphattn: 'k' must be >= 1, got ", k);
  TORCH_CHECK_VALUE(exclude_offset >= -1 && exclude_offset <= src.size(0),
                    "graphattn: 'exclude_offset' must lie in [0, number of sources = ", src.size(0),
                    "], or be -1 to exclude nothing, got ", exclude_offset);
  const at::Tensor xs = src.contiguous(), yt = tgt.contiguous();
  const at::Tensor sp = check_offsets(src_ptr, xs.size(0), "src_ptr", "sources");
  const at::Tensor tp = check_offsets(tgt_ptr, yt.size(0), "tgt_ptr", "targets");
  TORCH_CHECK_VALUE(sp.numel() == tp.numel(),
                    "graphattn: 'src_ptr' and 'tgt_ptr' must hold the same number of graphs, got ",
                    sp.numel() - 1, " and ", tp.numel() - 1);
  return AT_DISPATCH_FLOATING_TYPES(xs.scalar_type(), "knn_cpu", [&] {
    check_finite<scalar_t>(xs, "src");
    check_finite<scalar_t>(yt, "tgt");
    return knn_impl<scalar_t>(xs, yt, sp.data_ptr<int64_t>(), tp.data_ptr<int64_t>(),
                              sp.numel() - 1, k, exclude_offset);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) { m.impl("knn", &knn_cpu); }

}  // namespace graphattn
