r"""Synthetic host-flow graphs for intrusion detection (the offline data of the Q-AGNN example).

No public flow dataset (NSL-KDD, UNSW-NB15, CIC-IDS, BoT-IoT) ships in a package that works
offline, so this module generates one (``../shared/DATA.md`` section 7). Nodes are **flows**
between hosts. Benign traffic is heavy-tailed (Zipf host activity, lognormal sizes); attacks
follow the CIC-IDS2017 taxonomy: port scans, DDoS, SSH brute force and exfiltration.

Unlike the clean taxonomy, single flows here are deliberately ambiguous, so that a per-flow
classifier is *not* already perfect and the graph has to carry evidence:

* benign traffic contains failed connections (SYN-only, one tiny packet), high ephemeral
  ports, interactive SSH sessions and nightly backup uploads, which look like scans,
  brute-force logins and exfiltration one flow at a time;
* attacks mimic benign traffic: scans probe well-known ports first and partly complete the
  handshake, DDoS bots send ordinary-sized web requests at ordinary hours, brute-force
  logins vary in size and duration, exfiltration hides in HTTPS uploads;
* every continuous feature carries multiplicative measurement noise.

What gives an attack away is its *campaign*: many similar flows around the same host. The
graph links each flow to its ``k`` most cosine-similar flows **among flows that share an
endpoint host** (symmetrised, no self-loops, no duplicates), so attention can gather a
flow's campaign.

Features (min-max scaled to [0, 1]): log duration, log source bytes, log destination
bytes, log packets, log port, well-known port (< 1024), TCP, SYN-only, sin and cos of the
hour of day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

CLASSES = ("benign", "portscan", "ddos", "bruteforce_ssh", "exfiltration")
FEATURES = ("log_duration", "log_src_bytes", "log_dst_bytes", "log_packets", "log_port",
            "well_known_port", "tcp", "syn_only", "hour_sin", "hour_cos")
_SERVICE_PORTS = np.array([80, 443, 53, 22, 25, 3306, 8080])


@dataclass(frozen=True)
class FlowConfig:
    """Sizes of a generated flow graph.

    Args:
        n_hosts: Hosts (10 of them are servers).
        n_benign: Benign flows.
        n_scanners, scan_ports: Port-scanning hosts and ports each probes.
        n_bots, ddos_flows: DDoS bots and flows per bot (one victim server).
        n_bruteforce, bruteforce_flows: SSH brute-force hosts and logins each.
        n_exfil, exfil_flows: Exfiltrating hosts and uploads each.
        noise: Standard deviation of the multiplicative log-normal measurement noise.
        k: Neighbours per flow in the similarity graph.
    """

    n_hosts: int = 200
    n_benign: int = 2400
    n_scanners: int = 3
    scan_ports: int = 90
    n_bots: int = 25
    ddos_flows: int = 8
    n_bruteforce: int = 3
    bruteforce_flows: int = 50
    n_exfil: int = 3
    exfil_flows: int = 12
    noise: float = 0.35
    k: int = 8

    @staticmethod
    def full() -> FlowConfig:
        """Four times the demo size (about 12,000 flows)."""
        return FlowConfig(n_hosts=600, n_benign=9600, n_scanners=8, scan_ports=140, n_bots=80,
                          ddos_flows=10, n_bruteforce=8, bruteforce_flows=80, n_exfil=8,
                          exfil_flows=15)


def generate_flows(config: FlowConfig = FlowConfig(), seed: int = 0):
    """Raw flows.

    Returns:
        ``(raw [M, 8] float64, src [M], dst [M], cls [M])``: columns duration (s), source
        bytes, destination bytes, packets, destination port, TCP, SYN-only, hour; the source
        and destination host ids; the class index into :data:`CLASSES`.
    """
    c = config
    if c.n_hosts < 20:
        raise ValueError(f"n_hosts must be >= 20, got {c.n_hosts}")
    rng = np.random.default_rng(seed)
    rows: list[list[float]] = []
    src: list[int] = []
    dst: list[int] = []
    cls: list[int] = []

    def add(s, d, dur, sb, db, pk, port, tcp, syn, hour, label):
        rows.append([dur, sb, db, pk, port, tcp, syn, hour % 24])
        src.append(int(s))
        dst.append(int(d))
        cls.append(label)

    servers = rng.choice(c.n_hosts, 10, replace=False)
    clients = np.setdiff1d(np.arange(c.n_hosts), servers)
    pop = rng.zipf(1.6, c.n_hosts).astype(float)
    pop[servers] = 0
    pop /= pop.sum()
    for _ in range(c.n_benign):
        s, d = rng.choice(c.n_hosts, p=pop), rng.choice(servers)
        u = rng.random()
        if u < 0.05:  # failed connection: looks like a scan probe
            port = rng.choice(_SERVICE_PORTS) if rng.random() < .6 else rng.integers(1024, 65535)
            add(s, d, rng.exponential(0.05), 60, 0, 1, port, 1, 1, rng.normal(14, 4), 0)
        elif u < 0.10:  # interactive SSH: looks like brute force
            pk = rng.integers(15, 60)
            add(s, servers[1], rng.lognormal(1.2, 0.8), rng.normal(2200, 600),
                rng.normal(2900, 700), pk, 22, 1, 0, rng.normal(13, 4), 0)
        elif u < 0.12:  # nightly backup upload: looks like exfiltration
            add(s, d, rng.lognormal(4, 0.8), rng.lognormal(16, 1.2), rng.lognormal(7, 1),
                rng.integers(1000, 40000), 443, 1, 0, rng.normal(2, 1.5), 0)
        else:
            port = (rng.choice(_SERVICE_PORTS, p=[.3, .4, .15, .03, .04, .04, .04])
                    if rng.random() < .9 else rng.integers(1024, 65535))
            pk = 1 + rng.poisson(rng.lognormal(2, 1))
            add(s, d, rng.lognormal(0, 1.5), pk * rng.lognormal(5, 1), pk * rng.lognormal(6, 1.5),
                pk, port, float(port != 53), 0, rng.normal(14, 4), 0)
    attackers = rng.choice(clients, c.n_scanners + c.n_bruteforce + c.n_exfil, replace=False)
    for s in attackers[: c.n_scanners]:  # scans: well-known ports first, some full handshakes
        d = rng.choice(servers)
        hour = rng.uniform(0, 24)
        ports = np.concatenate([_SERVICE_PORTS, rng.choice(np.arange(1, 1024), 60, replace=False),
                                rng.integers(1024, 65535, max(c.scan_ports, 1))])[: c.scan_ports]
        for port in ports:
            syn = float(rng.random() < 0.6)
            add(s, d, rng.exponential(0.05), 60 if syn else rng.integers(60, 400),
                0 if syn else rng.integers(0, 400), 1 if syn else rng.integers(2, 5), port, 1, syn,
                hour + rng.normal(0, .2), 1)
    victim = servers[0]
    hour = rng.uniform(8, 20)
    for s in rng.choice(clients, c.n_bots, replace=False):  # DDoS: ordinary requests en masse
        for _ in range(c.ddos_flows):
            pk = rng.integers(1, 6)
            add(s, victim, rng.exponential(0.3), pk * rng.lognormal(5, .6),
                pk * rng.lognormal(5.5, 1), pk, 80 if rng.random() < .7 else 443, 1,
                float(rng.random() < .3), hour + rng.normal(0, .3), 2)
    for s in attackers[c.n_scanners: c.n_scanners + c.n_bruteforce]:  # SSH brute force
        hour = rng.uniform(0, 24)
        for _ in range(c.bruteforce_flows):
            add(s, servers[1], rng.lognormal(1.0, 0.4), rng.normal(2000, 300),
                rng.normal(2700, 400), rng.integers(12, 30), 22, 1, 0, hour + rng.normal(0, .5), 3)
    for s in attackers[c.n_scanners + c.n_bruteforce:]:  # exfiltration in HTTPS uploads
        for _ in range(c.exfil_flows):
            add(s, rng.choice(servers), rng.lognormal(4.5, .8), rng.lognormal(17, 1.2),
                rng.lognormal(7, 1), rng.integers(2000, 50000), 443, 1, 0, rng.normal(3, 2), 4)
    raw = np.asarray(rows, dtype=np.float64)
    jitter = rng.lognormal(0.0, c.noise, size=(raw.shape[0], 4))
    raw[:, :4] = np.abs(raw[:, :4]) * jitter
    order = rng.permutation(raw.shape[0])
    return raw[order], np.asarray(src)[order], np.asarray(dst)[order], np.asarray(cls)[order]


def flow_features(raw: np.ndarray) -> Tensor:
    """The scaled ``[M, 10]`` node features of :data:`FEATURES` (min-max over the set)."""
    port = raw[:, 4]
    hour = raw[:, 7] * (2 * np.pi / 24)
    f = np.column_stack([np.log1p(raw[:, 0]), np.log1p(raw[:, 1]), np.log1p(raw[:, 2]),
                         np.log1p(raw[:, 3]), np.log1p(port), (port < 1024).astype(float),
                         raw[:, 5], raw[:, 6], np.sin(hour), np.cos(hour)])
    lo, hi = f.min(0), f.max(0)
    return torch.tensor((f - lo) / np.where(hi > lo, hi - lo, 1.0), dtype=torch.float32)


def host_scoped_knn(x: Tensor, src: Tensor, dst: Tensor, k: int, block: int = 1024) -> Tensor:
    """Symmetrised cosine kNN among flows that share an endpoint host, ``[2, E]``, coalesced,
    without self-loops. A flow with fewer than ``k`` endpoint-sharing flows keeps them all."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    xn = F.normalize(x - x.mean(0), dim=1)
    M = x.size(0)
    rows, cols = [], []
    for s in range(0, M, block):
        e = min(s + block, M)
        share = ((src[s:e, None] == src[None]) | (dst[s:e, None] == dst[None])
                 | (src[s:e, None] == dst[None]) | (dst[s:e, None] == src[None]))
        share[torch.arange(e - s), torch.arange(s, e)] = False
        sim = (xn[s:e] @ xn.T).masked_fill(~share, -3.0)
        val, idx = sim.topk(min(k, M - 1), dim=1)
        keep = val > -3.0
        rows.append(torch.arange(s, e).unsqueeze(1).expand_as(idx)[keep])
        cols.append(idx[keep])
    ei = torch.stack([torch.cat(cols), torch.cat(rows)])
    ei, _ = remove_self_loops(to_undirected(ei, num_nodes=M))
    return coalesce(ei, num_nodes=M)


def flow_graph(config: FlowConfig = FlowConfig(), seed: int = 0,
               split: tuple[float, float] = (0.4, 0.2)) -> Data:
    """A generated flow graph as PyG ``Data``.

    Attributes: ``x [M, 10]``, ``edge_index [2, E]``, ``y [M]`` (1 = attack), ``y_class [M]``
    (index into :data:`CLASSES`), ``src_host``/``dst_host [M]``, ``raw [M, 8]`` and boolean
    ``train_mask``/``val_mask``/``test_mask`` (stratified by class; fractions ``split`` for
    train and validation, the rest test).
    """
    raw, src, dst, cls = generate_flows(config, seed)
    x = flow_features(raw)
    s, d = torch.from_numpy(src), torch.from_numpy(dst)
    ei = host_scoped_knn(x, s, d, config.k)
    y_class = torch.from_numpy(cls)
    rng = np.random.default_rng(seed + 1)
    masks = [torch.zeros(len(cls), dtype=torch.bool) for _ in range(3)]
    for c in range(len(CLASSES)):
        idx = rng.permutation(np.nonzero(cls == c)[0])
        n_tr, n_va = round(split[0] * len(idx)), round(split[1] * len(idx))
        masks[0][idx[:n_tr]] = True
        masks[1][idx[n_tr: n_tr + n_va]] = True
        masks[2][idx[n_tr + n_va:]] = True
    return Data(x=x, edge_index=ei, y=(y_class > 0).float(), y_class=y_class, src_host=s,
                dst_host=d, raw=torch.from_numpy(raw), train_mask=masks[0], val_mask=masks[1],
                test_mask=masks[2])
