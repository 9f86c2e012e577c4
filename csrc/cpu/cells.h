// Cell lists of the CPU neighbour searches (radius.cpp, knn.cpp): a grid over each graph's
// points, the points sorted by cell, and the checks of the points and of the graph offsets.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// No fused multiply-adds in the files that include this one: their squared distances
// d2 = ((dx dx) + dy dy) + dz dz round every product and every sum, as the blockwise torch
// path's separate products and sums do (a contracted fma(dy, dy, d2) rounds once, and would
// move pairs at a rounding of r^2 across a cutoff or reorder ties).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace graphattn {

// a * a + b * b + c * c as ((a a) + b b) + c c, every product and sum rounded in T: the
// searches' squared distances, and their lower bounds in the same order (rounding is monotone,
// so smaller magnitudes give no larger sums)
template <typename T>
inline T sum_sq(T a, T b, T c) {
  T s = a * a;
  s = s + b * b;
  return s + c * c;
}

struct Grid {
  double lo[3];
  double inv_h;   // 1 / cell edge
  int64_t n[3];   // cells per axis
  int64_t cells;  // n[0] n[1] n[2]
  int64_t reach;  // cells searched on each side of a target's: ceil(r / cell edge)
  int64_t off;    // this graph's first entry in the shared cell-start array
};

// the bounding box [lo, hi] of points a..b-1 of p [N, 3]; false where a span is not finite
// (coordinates spanning more than the largest double: no finite cell edge exists)
template <typename scalar_t>
bool bounding_box(const scalar_t* p, int64_t a, int64_t b, double* lo, double* hi) {
  for (int k = 0; k < 3; ++k) {
    lo[k] = std::numeric_limits<double>::infinity();
    hi[k] = -std::numeric_limits<double>::infinity();
  }
  for (int64_t i = a; i < b; ++i) {
    for (int k = 0; k < 3; ++k) {
      const double x = static_cast<double>(p[3 * i + k]);
      lo[k] = std::min(lo[k], x);
      hi[k] = std::max(hi[k], x);
    }
  }
  for (int k = 0; k < 3; ++k) {
    if (!std::isfinite(hi[k] - lo[k])) return false;
  }
  return true;
}

// cell of coordinate k of x, clamped to the grid (in double first: a target far outside the
// sources' box must not overflow the integer conversion)
template <typename scalar_t>
inline int64_t axis_cell(const Grid& g, const scalar_t* x, int k) {
  const double q = (static_cast<double>(x[k]) - g.lo[k]) * g.inv_h;
  if (!(q > 0.0)) return 0;  // also NaN (0 x inf of the one cell, inf x 0)
  return static_cast<int64_t>(std::min(q, static_cast<double>(g.n[k] - 1)));
}

template <typename scalar_t>
inline int64_t cell_index(const Grid& g, const scalar_t* x) {
  return (axis_cell(g, x, 2) * g.n[1] + axis_cell(g, x, 1)) * g.n[0] + axis_cell(g, x, 0);
}

// Points of each graph (ranges [ptr[g], ptr[g + 1]) of p [N, 3]) sorted by the cells of its
// grid: cell c of graph g holds sorted[ptr[g] + start[grids[g].off + c] ...
// ptr[g] + start[grids[g].off + c + 1]) (a counting sort, stable: ascending ids within a cell;
// the cells of a row along x are adjacent), with the coordinates copied in that order.
template <typename scalar_t>
struct CellLists {
  std::vector<Grid> grids;
  std::vector<int64_t> start, sorted;
  std::vector<scalar_t> x, y, z;

  // graph g's grid, cell starts, point ids and coordinates (its points begin at `first`)
  struct Graph {
    const Grid& grid;
    const int64_t* start;
    const int64_t* ids;
    const scalar_t *x, *y, *z;
    // squared distance of sorted point s to p[3], as the blockwise path rounds it
    scalar_t d2(int64_t s, const scalar_t* p) const {
      return sum_sq<scalar_t>(x[s] - p[0], y[s] - p[1], z[s] - p[2]);
    }
  };
  Graph graph(int64_t g, int64_t first) const {
    const Grid& gr = grids[g];
    return {gr,
            start.data() + gr.off,
            sorted.data() + first,
            x.data() + first,
            y.data() + first,
            z.data() + first};
  }
};

// make(g) gives graph g's grid; graphs are processed in parallel.
template <typename scalar_t, typename MakeGrid>
CellLists<scalar_t> sort_into_cells(const scalar_t* p, const int64_t* ptr, int64_t G, int64_t N,
                                    const MakeGrid& make) {
  CellLists<scalar_t> cl;
  cl.grids.resize(G);
  at::parallel_for(0, G, 64, [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) cl.grids[g] = make(g);
  });
  int64_t total = 0;
  for (int64_t g = 0; g < G; ++g) {
    cl.grids[g].off = total;
    total += cl.grids[g].cells + 1;
  }
  cl.start.assign(total, 0);
  cl.sorted.resize(N);
  cl.x.resize(N);
  cl.y.resize(N);
  cl.z.resize(N);
  std::vector<int64_t> cell_of(N);
  at::parallel_for(0, G, 64, [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) {
      const Grid& gr = cl.grids[g];
      int64_t* st = cl.start.data() + gr.off;
      for (int64_t j = ptr[g]; j < ptr[g + 1]; ++j) {
        cell_of[j] = cell_index(gr, p + 3 * j);
        ++st[cell_of[j] + 1];
      }
      for (int64_t c = 0; c < gr.cells; ++c) st[c + 1] += st[c];
      std::vector<int64_t> cursor(st, st + gr.cells);
      for (int64_t j = ptr[g]; j < ptr[g + 1]; ++j) cl.sorted[ptr[g] + cursor[cell_of[j]]++] = j;
      for (int64_t s = ptr[g]; s < ptr[g + 1]; ++s) {
        const scalar_t* x = p + 3 * cl.sorted[s];
        cl.x[s] = x[0];
        cl.y[s] = x[1];
        cl.z[s] = x[2];
      }
    }
  });
  return cl;
}

// the graph of each of the n items of ranges [ptr[g], ptr[g + 1])
inline std::vector<int64_t> graph_of_items(const int64_t* ptr, int64_t G, int64_t n) {
  std::vector<int64_t> out(n);
  at::parallel_for(0, G, 64, [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) std::fill(out.begin() + ptr[g], out.begin() + ptr[g + 1], g);
  });
  return out;
}

inline void check_points(const at::Tensor& x, const char* name, const char* what) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "graphattn: '", name, "' must be on the CPU for the CPU ",
                    what, ", got ", x.device());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == 3, "graphattn: '", name,
                    "' must have shape [N, 3], got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "graphattn: '",
                   name, "' must be float32 or float64, got ", x.scalar_type());
}

// graph offsets over n points; returns the contiguous copy
inline at::Tensor check_offsets(const at::Tensor& ptr, int64_t n, const char* name,
                                const char* of) {
  TORCH_CHECK_VALUE(ptr.device().is_cpu(), "graphattn: '", name, "' must be on the CPU, got ",
                    ptr.device());
  TORCH_CHECK_TYPE(ptr.scalar_type() == at::kLong, "graphattn: '", name,
                   "' must be an int64 tensor (graph offsets), got ", ptr.scalar_type());
  TORCH_CHECK_VALUE(ptr.dim() == 1 && ptr.numel() >= 1, "graphattn: '", name,
                    "' must be a non-empty 1-D tensor (graph offsets), got shape ", ptr.sizes());
  at::Tensor pc = ptr.contiguous();
  const int64_t* p = pc.data_ptr<int64_t>();
  const int64_t G = pc.numel() - 1;
  TORCH_CHECK_VALUE(p[0] == 0 && p[G] == n, "graphattn: '", name,
                    "' must run from 0 to the number of ", of, " (", n, "), got ", p[0], " to ",
                    p[G]);
  for (int64_t g = 0; g < G; ++g) {
    TORCH_CHECK_VALUE(p[g] <= p[g + 1], "graphattn: '", name,
                      "' must be non-decreasing (graph offsets), got ", p[g], " before ",
                      p[g + 1], " at ", g);
  }
  return pc;
}

template <typename scalar_t>
inline void check_finite(const at::Tensor& x, const char* name) {
  const scalar_t* p = x.data_ptr<scalar_t>();
  for (int64_t e = 0; e < x.numel(); ++e) {
    TORCH_CHECK_VALUE(std::isfinite(static_cast<double>(p[e])), "graphattn: '", name,
                      "' must be finite: row ", e / 3, " holds ", p[e]);
  }
}

}  // namespace graphattn
