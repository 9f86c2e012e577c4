"""The memory contract: on the native path no op (forward or backward) produces an
[E, H, C] tensor. Every aten/graphattn op output is inspected with a dispatch mode; the
same check applied to the reference path must fire, so the test can fail."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from graphattn import ops
from graphattn.index import build_graph
from graphattn.nn import GraphAttention

N, E, H, C = 100, 6000, 4, 16


class LargestOutput(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = (0, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest[0]:
                self.largest = (t.numel(), str(func))
        return out


def largest_in_training_step(mode: str) -> tuple[int, str]:
    torch.manual_seed(0)
    x = torch.randn(N, 8)
    ei = torch.randint(0, N, (2, E))
    layer = GraphAttention(8, C, heads=H, mode=mode)
    graph = build_graph(ei, N, self_loops=layer.add_self_loops)  # built (and cached) outside
    with LargestOutput() as probe:
        out = layer(x, graph)
        out.pow(2).sum().backward()
    return probe.largest


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
def test_no_edge_by_channel_tensor_on_native_path(mode):
    if not ops.native_available():
        pytest.skip("graphattn._C not built")
    limit = E * H * C // 4
    with ops.set_backend("reference"):
        numel, _ = largest_in_training_step(mode)
    assert numel >= E * H * C  # the probe sees the reference path's [E, H, C] messages
    with ops.set_backend("native"):
        numel, where = largest_in_training_step(mode)
    assert numel < limit, f"{where} produced {numel} elements (limit {limit})"
