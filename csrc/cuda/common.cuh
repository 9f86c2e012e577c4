// Shared by the CUDA kernels: index validation for device tensors (every index is checked
// for dtype, contiguity, device and range before a kernel reads through it; each message
// names the argument) and warp reductions. Shapes and dtypes: ../attention_shapes.h.
//
// The range checks run as small reductions on the device followed by one host sync per
// checked index, the price of an error message instead of an illegal memory access. A caller
// that vouches for the contents (validated = true: an EdgeGraph built from a checked
// edge_index, see graphattn/index.py) skips them, and with them every host sync: only dtype,
// layout, device and sizes are checked then.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <limits>

#include "../attention_shapes.h"

namespace graphattn {
namespace cuda {

constexpr int kWarp = 32;
constexpr int kBlock = 256;  // threads per block: 8 warps

// ptr must start at 0, end at num_edges and be non-decreasing.
inline void check_ptr(const at::Tensor& ptr, int64_t num_edges, const char* name,
                      const at::Device& device, bool validated = false) {
  check_index(ptr, name, device);
  TORCH_CHECK_VALUE(ptr.numel() >= 1, "graphattn: '", name, "' must have at least one entry");
  if (validated) return;
  const int64_t n = ptr.numel() - 1;
  // [ptr[0], ptr[-1], number of decreasing steps] in one transfer
  at::Tensor steps = n > 0 ? (ptr.slice(0, 1) < ptr.slice(0, 0, n)).sum() : at::zeros({}, ptr.options());
  const at::Tensor h = at::stack({ptr[0], ptr[n], steps.to(at::kLong)}).cpu();
  const int64_t* v = h.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(v[0] == 0, "graphattn: '", name, "[0]' must be 0, got ", v[0]);
  TORCH_CHECK_VALUE(v[1] == num_edges, "graphattn: '", name,
                    "[-1]' must equal the number of edges (", num_edges, "), got ", v[1]);
  TORCH_CHECK_VALUE(v[2] == 0, "graphattn: '", name,
                    "' must be non-decreasing (a destination-sorted CSR)");
}

// every entry of idx must lie in [0, bound).
inline void check_range(const at::Tensor& idx, int64_t bound, const char* name,
                        const at::Device& device, bool validated = false) {
  check_index(idx, name, device);
  if (validated || idx.numel() == 0) return;
  const auto mm = at::aminmax(idx);
  const at::Tensor h = at::stack({std::get<0>(mm), std::get<1>(mm)}).cpu();
  const int64_t* v = h.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(v[0] >= 0, "graphattn: '", name, "' holds ", v[0],
                    ", outside the valid range [0, ", bound, ")");
  TORCH_CHECK_VALUE(v[1] < bound, "graphattn: '", name, "' holds ", v[1],
                    ", outside the valid range [0, ", bound, ")");
}

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename T>
__device__ __forceinline__ T dev_exp(T x) {
  return exp(x);
}
template <>
__device__ __forceinline__ float dev_exp<float>(float x) {
  return expf(x);
}

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

inline int64_t blocks_for(int64_t threads) {
  return (threads + kBlock - 1) / kBlock;
}

}  // namespace cuda
}  // namespace graphattn
