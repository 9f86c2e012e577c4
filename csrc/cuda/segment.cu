// Segment softmax and segment reductions (sum / mean / max with argmax) on the GPU over a
// destination-sorted CSR: one thread per (segment, column), walking the segment's rows.
// Neighbouring threads read neighbouring columns of the same rows (coalesced), there are no
// atomics, and the results are deterministic.
#include <torch/library.h>

#include <string>

#include "common.cuh"

namespace graphattn {
namespace cuda {
namespace {

void check_edge_tensor(const at::Tensor& t, const at::Tensor& ptr, const char* name,
                       bool validated) {
  check_edge_values(t, name);
  TORCH_CHECK_VALUE(t.is_cuda(), "graphattn: '", name,
                    "' must be a CUDA tensor for the CUDA kernel");
  check_ptr(ptr, t.size(0), "ptr", t.device(), validated);
}

template <typename scalar_t>
__global__ void softmax_kernel(const scalar_t* __restrict__ s, const int64_t* __restrict__ p,
                               int64_t N, int64_t H, scalar_t* __restrict__ o) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N * H) return;
  const int64_t i = t / H, h = t % H;
  acc_t mx = neg_inf<acc_t>(), sum = 0;
  for (int64_t e = p[i]; e < p[i + 1]; ++e) {
    const acc_t x = acc_t(s[e * H + h]);
    mx = x > mx ? x : mx;  // a NaN is skipped here but makes its exponential, so the sum, NaN
  }
  // a row whose scores are all -inf: shift by 0, so exp(-inf) = 0 and the row gives zeros
  mx = mx > neg_inf<acc_t>() ? mx : acc_t(0);
  for (int64_t e = p[i]; e < p[i + 1]; ++e) sum += dev_exp<acc_t>(acc_t(s[e * H + h]) - mx);
  // sum is 0 only for an empty or fully masked row (zeros, never NaN); a NaN score (or +inf,
  // whose shift is inf - inf) makes it NaN and the whole (row, head) NaN, as torch.softmax
  // does and the CPU kernel does
  const acc_t inv = sum != acc_t(0) ? acc_t(1) / sum : acc_t(0);
  for (int64_t e = p[i]; e < p[i + 1]; ++e)
    o[e * H + h] = scalar_t(dev_exp<acc_t>(acc_t(s[e * H + h]) - mx) * inv);
}

template <typename scalar_t>
__global__ void softmax_backward_kernel(const scalar_t* __restrict__ o,
                                        const scalar_t* __restrict__ g,
                                        const int64_t* __restrict__ p, int64_t N, int64_t H,
                                        scalar_t* __restrict__ gi) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N * H) return;
  const int64_t i = t / H, h = t % H;
  acc_t dot = 0;
  for (int64_t e = p[i]; e < p[i + 1]; ++e) dot += acc_t(o[e * H + h]) * acc_t(g[e * H + h]);
  for (int64_t e = p[i]; e < p[i + 1]; ++e)
    gi[e * H + h] = scalar_t(acc_t(o[e * H + h]) * (acc_t(g[e * H + h]) - dot));
}

// code: 0 sum, 1 mean, 2 max (arg = position of the max, -1 for an empty segment; the first
// NaN wins and stays, as in torch's amax and on the CPU; else the first maximal entry)
template <typename scalar_t>
__global__ void reduce_kernel(const scalar_t* __restrict__ s, const int64_t* __restrict__ p,
                              int64_t N, int64_t F, int code, scalar_t* __restrict__ o,
                              int64_t* __restrict__ arg) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N * F) return;
  const int64_t i = t / F, f = t % F;
  const int64_t deg = p[i + 1] - p[i];
  if (code == 2) {
    acc_t best = neg_inf<acc_t>();
    int64_t a = -1;
    for (int64_t e = p[i]; e < p[i + 1]; ++e) {
      const acc_t x = acc_t(s[e * F + f]);
      const bool nan_first = x != x && best == best;  // a plain '>' would skip the NaN
      if (x > best || nan_first || a < 0) {
        best = x;
        a = e;
      }
    }
    o[t] = deg > 0 ? scalar_t(best) : scalar_t(0);
    arg[t] = a;
  } else {
    acc_t acc = 0;
    for (int64_t e = p[i]; e < p[i + 1]; ++e) acc += acc_t(s[e * F + f]);
    o[t] = scalar_t(code == 1 && deg > 0 ? acc / acc_t(deg) : acc);
  }
}

template <typename scalar_t>
__global__ void reduce_backward_kernel(const scalar_t* __restrict__ g,
                                       const int64_t* __restrict__ p,
                                       const int64_t* __restrict__ arg, int64_t N, int64_t F,
                                       int code, scalar_t* __restrict__ gi,
                                       int* __restrict__ bad) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N * F) return;
  const int64_t i = t / F, f = t % F;
  const int64_t deg = p[i + 1] - p[i];
  if (deg == 0) return;
  if (code == 2) {
    // the segment's column is written whole (the max's entry gets g, the others 0), so the
    // output needs no zero fill beforehand
    const int64_t a = arg[t];
    if (a < p[i] || a >= p[i + 1]) *bad = 1;  // never write outside the segment: flag it
    for (int64_t e = p[i]; e < p[i + 1]; ++e) gi[e * F + f] = e == a ? g[t] : scalar_t(0);
  } else {
    const scalar_t scale = code == 1 ? scalar_t(1) / scalar_t(deg) : scalar_t(1);
    for (int64_t e = p[i]; e < p[i + 1]; ++e) gi[e * F + f] = g[t] * scale;
  }
}

at::Tensor segment_softmax_cuda(const at::Tensor& scores_, const at::Tensor& ptr,
                                bool validated) {
  const c10::cuda::CUDAGuard guard(scores_.device());
  check_edge_tensor(scores_, ptr, "scores", validated);
  const at::Tensor scores = scores_.contiguous();
  const int64_t N = ptr.numel() - 1, H = scores.size(1);
  at::Tensor out = at::empty_like(scores);
  if (N * H == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "graphattn::segment_softmax_cuda", [&] {
    softmax_kernel<scalar_t><<<blocks_for(N * H), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        scores.data_ptr<scalar_t>(), ptr.data_ptr<int64_t>(), N, H, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor segment_softmax_backward_cuda(const at::Tensor& out_, const at::Tensor& grad_,
                                         const at::Tensor& ptr, bool validated) {
  const c10::cuda::CUDAGuard guard(out_.device());
  check_edge_tensor(out_, ptr, "out", validated);
  TORCH_CHECK_VALUE(grad_.sizes() == out_.sizes(), "graphattn: 'grad_out' must have shape ",
                    out_.sizes(), ", got ", grad_.sizes());
  check_float(grad_, "grad_out", out_.scalar_type(), out_.device());
  const at::Tensor out = out_.contiguous(), grad = grad_.contiguous();
  const int64_t N = ptr.numel() - 1, H = out.size(1);
  at::Tensor gin = at::empty_like(out);
  if (N * H == 0) return gin;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "graphattn::segment_softmax_backward_cuda", [&] {
    softmax_backward_kernel<scalar_t>
        <<<blocks_for(N * H), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
            out.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), ptr.data_ptr<int64_t>(), N, H,
            gin.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gin;
}

std::tuple<at::Tensor, at::Tensor> segment_reduce_cuda(const at::Tensor& src_,
                                                       const at::Tensor& ptr,
                                                       c10::string_view reduce_,
                                                       bool validated) {
  const c10::cuda::CUDAGuard guard(src_.device());
  const int code = reduce_code(std::string(reduce_));
  check_edge_tensor(src_, ptr, "src", validated);
  const at::Tensor src = src_.contiguous();
  const int64_t N = ptr.numel() - 1, F = src.size(1);
  at::Tensor out = at::empty({N, F}, src.options());
  at::Tensor arg = at::empty({code == 2 ? N : 0, F}, ptr.options());
  if (N * F == 0) return {out, arg};
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "graphattn::segment_reduce_cuda", [&] {
    reduce_kernel<scalar_t><<<blocks_for(N * F), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        src.data_ptr<scalar_t>(), ptr.data_ptr<int64_t>(), N, F, code,
        out.data_ptr<scalar_t>(), code == 2 ? arg.data_ptr<int64_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, arg};
}

at::Tensor segment_reduce_backward_cuda(const at::Tensor& grad_, const at::Tensor& ptr,
                                        const at::Tensor& arg_, c10::string_view reduce_,
                                        int64_t num_edges, bool validated) {
  const c10::cuda::CUDAGuard guard(grad_.device());
  const int code = reduce_code(std::string(reduce_));
  TORCH_CHECK_VALUE(grad_.is_cuda(),
                    "graphattn: 'grad_out' must be a CUDA tensor for the CUDA kernel");
  check_ptr(ptr, num_edges, "ptr", grad_.device(), validated);
  check_reduce_backward_shapes(grad_, ptr, arg_, code);
  const at::Tensor grad = grad_.contiguous();
  const int64_t N = ptr.numel() - 1, F = grad.size(1);
  const at::Tensor arg = code == 2 ? arg_.contiguous() : at::Tensor();
  // ptr covers every edge exactly once (check_ptr) and each segment writes all of its rows
  at::Tensor gin = at::empty({num_edges, F}, grad.options());
  if (N * F == 0) return gin;
  at::Tensor bad = at::zeros({1}, grad.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "graphattn::segment_reduce_backward_cuda", [&] {
    reduce_backward_kernel<scalar_t>
        <<<blocks_for(N * F), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
            grad.data_ptr<scalar_t>(), ptr.data_ptr<int64_t>(),
            code == 2 ? arg.data_ptr<int64_t>() : nullptr, N, F, code,
            gin.data_ptr<scalar_t>(), bad.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // the kernel never writes outside a segment whatever arg holds; reading the flag costs a
  // host sync, which a validated call (arg from the forward on the same ptr) skips
  if (code == 2 && !validated) {
    TORCH_CHECK_VALUE(bad.item<int>() == 0,
                      "graphattn: 'arg' holds a position outside its segment (it must come from "
                      "segment_reduce(..., 'max') on the same ptr)");
  }
  return gin;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(graphattn, CUDA, m) {
  m.impl("segment_softmax", &cuda::segment_softmax_cuda);
  m.impl("segment_softmax_backward", &cuda::segment_softmax_backward_cuda);
  m.impl("segment_reduce", &cuda::segment_reduce_cuda);
  m.impl("segment_reduce_backward", &cuda::segment_reduce_backward_cuda);
}

}  // namespace graphattn
