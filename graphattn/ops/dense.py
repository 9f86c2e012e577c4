r"""Dense projections :math:`y = x W^\top + b` of the attention layers, through oneDNN on the CPU.

torch's CPU wheel multiplies float32 matrices with MKL, and MKL takes its AVX2 code path on
AMD processors even where they have AVX-512; oneDNN, which the wheel also carries (as
MKLDNN), picks its kernels by instruction set. On this project's 2-core AMD EPYC (AVX-512),
2 threads, ``[20000, 128] x [128, 128]`` takes 3.2-3.4 ms with MKL (~190 GFLOP/s) and
1.5-1.6 ms with oneDNN (~450 GFLOP/s); oneDNN stays ahead from about 2M multiply-adds
(1000 x 64 x 64: 0.038 against 0.051 ms) and falls behind below (600 x 32 x 32: 0.021
against 0.015 ms, its fixed cost per call).

:func:`linear` is ``torch.nn.functional.linear`` with the same numbers up to float32 rounding
(another summation order) and the same autograd: the forward product and the input gradient
:math:`\partial x = \partial y\, W` run on oneDNN; the weight gradient
:math:`\partial W = \partial y^\top x` stays on torch's ``mm`` (:func:`weight_grad`: an outer
product for a gradient broadcast over the rows, as that of ``y.sum()``), the bias gradient is
a column sum. (A weight gradient on oneDNN needs the rows, its reduction dimension, contiguous
in one operand: with a native transpose, 0.25 ms for ``[20000, 128]``, and oneDNN's product,
1.7-1.8 ms, it took 2.0 ms against 3.5 ms for ``mm`` alone, but inside the Transformer's
training step at E = 200k the fresh transposed copies and oneDNN's reorders cost what it
saved: 53-56 ms against 48-66 ms, so it was not kept.) A backward with
``create_graph=True`` runs the differentiable torch formulas instead.

oneDNN is used for float32 strided CPU tensors, 2-D inputs of at least :data:`MIN_MACS`
multiply-adds, outside ``torch.compile`` / TorchScript / CPU autocast / ``torch.func``
transforms / forward-mode AD, when torch was built with it, and unless the backend is
forced to ``"reference"`` (:class:`graphattn.ops.set_backend`), whose layers stay pure
torch; everything else is ``F.linear``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import forward_ad

__all__ = ["MIN_MACS", "linear", "onednn_available", "weight_grad"]

#: Smallest ``rows x in x out`` handed to oneDNN (its fixed cost per call is ~0.02 ms).
MIN_MACS = 1 << 21


@functools.cache
def onednn_available() -> bool:
    """Whether torch carries oneDNN's linear kernel (``torch.ops.mkldnn._linear_pointwise``)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(
            torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _functorch_active() -> bool:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def _forward_ad_active() -> bool:
    return getattr(forward_ad, "_current_level", -1) >= 0


def _onednn_product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # the kernel reads the bias as a dense vector: a strided or expanded view is copied first
    bias = None if bias is None else bias.contiguous()
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def use_onednn(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether :func:`linear` takes the oneDNN kernel for these operands (module docstring)."""
    from . import _requested

    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and x.dim() == 2
        and x.size(1) == weight.size(1)
        and x.layout == torch.strided
        and weight.layout == torch.strided
        and (bias is None or (
            bias.dtype == torch.float32
            and bias.device.type == "cpu"
            and bias.layout == torch.strided
            and bias.shape == weight.shape[:1]))
        and x.size(0) * weight.size(0) * weight.size(1) >= MIN_MACS
        and _requested() != "reference"
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")  # autocast casts F.linear's operands
        and not _functorch_active()  # torch.func's vmap / grad: F.linear's own rules
        and not _forward_ad_active()  # forward-mode AD (dual tensors): F.linear's jvp
        and onednn_available()
    )


def product(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    r""":math:`x W^\top + b` without autograd bookkeeping of its own (for the forward of an
    ``autograd.Function`` that computes its gradients itself): oneDNN where :func:`use_onednn`
    says so, else ``F.linear``."""
    if use_onednn(x, weight, bias):
        return _onednn_product(x, weight, bias)
    return F.linear(x, weight, bias)


def input_grad(grad: Tensor, weight: Tensor) -> Tensor:
    r""":math:`\partial x = \partial y\, W`, ``[R, out] x [out, in]``, through oneDNN where it
    applies (as the product with the transposed weight), else ``mm``."""
    wt = weight.t()
    if use_onednn(grad, wt):
        return _onednn_product(grad, wt.contiguous(), None)
    return grad @ weight


def weight_grad(grad: Tensor, x: Tensor) -> Tensor:
    r""":math:`\partial W = \partial y^\top x`, ``[R, out]^T x [R, in]``. A gradient that is
    one row broadcast over the ``R`` rows (stride 0, as that of ``y.sum()`` or of an energy
    summed over atoms) gives the outer product :math:`g_0 (\sum_r x_r)^\top`: ``mm`` would
    first copy the broadcast ``[R, out]`` into memory (10 MB and ~2 ms at R = 20k, out = 128)."""
    if grad.dim() == 2 and grad.size(0) > 1 and grad.stride(0) == 0:
        return torch.outer(grad[0], x.sum(0))
    return grad.t() @ x


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        need_x, need_w = ctx.needs_input_grad[:2]
        # grad x needs W, grad W needs x: a frozen weight keeps x unsaved
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)
        ctx.has_bias = bias is not None
        return _onednn_product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: differentiable formulas
            gx = grad @ weight if need_x else None
            gw = grad.t() @ x if need_w else None
        else:
            gx = input_grad(grad, weight) if need_x else None
            gw = weight_grad(grad, x) if need_w else None
        gb = grad.sum(0) if ctx.has_bias and need_b else None
        return gx, gw, gb


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    r"""``F.linear(x, weight, bias)`` (:math:`x W^\top + b`), on oneDNN where it is faster
    (module docstring).

    Args:
        x (Tensor): ``[R, in]`` (any other rank goes to ``F.linear``).
        weight (Tensor): ``[out, in]``.
        bias (Tensor, optional): ``[out]``.

    Returns:
        ``[R, out]``.
    """
    if use_onednn(x, weight, bias):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)
