"""The synthetic host-flow generator: determinism, graph contract, class mix."""

from __future__ import annotations

import torch

from graphattn.datasets import FLOW_CLASSES, FlowConfig, flow_graph, host_scoped_knn


def test_flow_graph_contract() -> None:
    d = flow_graph(FlowConfig(n_benign=600, n_bots=10, scan_ports=40), seed=3)
    N = d.num_nodes
    ei = d.edge_index
    assert d.x.shape == (N, 10) and 0 <= d.x.min() and d.x.max() <= 1
    assert (ei[0] != ei[1]).all()  # no self-loops
    keys = ei[0] * N + ei[1]
    assert keys.unique().numel() == keys.numel()  # no duplicates
    rev = set((ei[1] * N + ei[0]).tolist())
    assert rev == set(keys.tolist())  # symmetric
    # every edge joins flows that share an endpoint host
    s, t = ei
    share = ((d.src_host[s] == d.src_host[t]) | (d.dst_host[s] == d.dst_host[t])
             | (d.src_host[s] == d.dst_host[t]) | (d.dst_host[s] == d.src_host[t]))
    assert share.all()
    counts = torch.bincount(d.y_class, minlength=len(FLOW_CLASSES))
    assert (counts > 0).all() and torch.equal(d.y, (d.y_class > 0).float())
    masks = d.train_mask.int() + d.val_mask.int() + d.test_mask.int()
    assert (masks == 1).all()


def test_flow_graph_deterministic() -> None:
    cfg = FlowConfig(n_benign=300)
    a, b = flow_graph(cfg, seed=1), flow_graph(cfg, seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index)
    c = flow_graph(FlowConfig(n_benign=300), seed=2)
    assert not torch.equal(a.x, c.x)


def test_host_scoped_knn_small() -> None:
    x = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [1.0, 0.05]])
    src = torch.tensor([0, 0, 1, 2])
    dst = torch.tensor([5, 6, 7, 8])
    ei = host_scoped_knn(x, src, dst, k=3)
    # flows 0 and 1 share host 0; flows 2 and 3 share nothing with anyone
    assert sorted(map(tuple, ei.T.tolist())) == [(0, 1), (1, 0)]
