"""Shared fixtures: both backends of the core, ragged test graphs, seeds."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from graphattn import ops

BACKENDS = ["reference"] + (["native"] if ops.native_available() else [])


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def float64():
    """float64 as the default dtype for one test (gradcheck, equivariance to 1e-9), restored
    afterwards so that it never leaks into the tests collected after it."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Runs a test body once per available path of the core (the ``disable_native`` switch)."""
    with ops.set_backend(request.param):
        yield request.param


@pytest.fixture
def disable_native():
    """Forces the reference path for the duration of a test."""
    with ops.set_backend("reference"):
        yield


def ragged_edge_index(num_nodes: int = 12, seed: int = 0) -> torch.Tensor:
    """A graph with zero in-degree nodes, a hub, duplicate edges and self-loops."""
    g = torch.Generator().manual_seed(seed)
    n = num_nodes
    parts = [
        torch.randint(0, n, (2, 3 * n), generator=g),
        torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)]),  # hub: node 0
        torch.tensor([[1, 1, 1], [2, 2, 2]]),  # duplicates
        torch.tensor([[3, 4], [3, 4]]),  # self-loops
    ]
    ei = torch.cat(parts, dim=1)
    # nodes n-2 and n-1 receive nothing
    ei = ei[:, ei[1] < n - 2]
    perm = torch.randperm(ei.size(1), generator=g)  # unsorted COO
    return ei[:, perm].contiguous()


GRAPHS = {
    "ragged": lambda: (ragged_edge_index(12), 12),
    "empty": lambda: (torch.empty(2, 0, dtype=torch.long), 5),
    "no-nodes": lambda: (torch.empty(2, 0, dtype=torch.long), 0),
    "single": lambda: (torch.tensor([[0], [1]]), 2),
}
