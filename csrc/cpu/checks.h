// Index validation of the CPU kernels: every index is checked (dtype, contiguity, range)
// on the host before any kernel reads through it, and every message names the argument.
// Shapes and dtypes: ../attention_shapes.h (shared with the CUDA kernels).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <string>

#include "../attention_shapes.h"

namespace graphattn {

// t of dtype `dtype` (TypeError otherwise) on the CPU (ValueError otherwise): a gradient or a
// per-edge table beside the tensor whose dtype it must share.
inline void check_cpu_dtype(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "graphattn: '", name, "' must have dtype ", dtype,
                   ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), "graphattn: '", name, "' must be on the CPU, got ",
                    t.device());
}

// ptr must start at 0, end at num_edges and be non-decreasing. validated: the caller vouches
// for the contents (an EdgeGraph built from a checked edge_index), so the O(N) scan is skipped
// (dtype, layout, device and the two ends are still checked).
inline void check_ptr(const at::Tensor& ptr, int64_t num_edges, const char* name,
                      bool validated = false) {
  check_index(ptr, name, at::kCPU);
  TORCH_CHECK_VALUE(ptr.numel() >= 1, "graphattn: '", name, "' must have at least one entry");
  const int64_t* p = ptr.data_ptr<int64_t>();
  const int64_t n = ptr.numel() - 1;
  TORCH_CHECK_VALUE(p[0] == 0, "graphattn: '", name, "[0]' must be 0, got ", p[0]);
  TORCH_CHECK_VALUE(p[n] == num_edges, "graphattn: '", name,
                    "[-1]' must equal the number of edges (", num_edges, "), got ", p[n]);
  if (validated) return;
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= (p[i] <= p[i + 1]);
  TORCH_CHECK_VALUE(ok, "graphattn: '", name,
                    "' must be non-decreasing (a destination-sorted CSR)");
}

// every entry of idx must lie in [0, bound) (validated: as for check_ptr, the scan is skipped).
inline void check_range(const at::Tensor& idx, int64_t bound, const char* name,
                        bool validated = false) {
  check_index(idx, name, at::kCPU);
  if (validated) return;
  const int64_t* p = idx.data_ptr<int64_t>();
  const int64_t n = idx.numel();
  bool ok = true;
  for (int64_t e = 0; e < n; ++e) ok &= (p[e] >= 0) & (p[e] < bound);
  if (!ok) {
    for (int64_t e = 0; e < n; ++e) {
      TORCH_CHECK_VALUE(p[e] >= 0 && p[e] < bound, "graphattn: '", name, "' holds ", p[e],
                        " at position ", e, ", outside the valid range [0, ", bound, ")");
    }
  }
}

}  // namespace graphattn
