"""Tests for LCENet's co-occurrence init: near the identity, encodes co-occurrence, scales in L, deterministic."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lcenet.errors import UserError
from lcenet.lcenet import LCENet, cooccurrence_init_


def random_labels(docs: int, labels: int, per_doc: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    columns = np.concatenate([rng.choice(labels, per_doc, replace=False) for _ in range(docs)])
    rows = np.repeat(np.arange(docs), per_doc)
    return sp.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(docs, labels))


def test_starts_near_the_identity_map():
    """Correction <= scale * |sigmoid(z)| per document (the bound in the module docstring), far below |z|."""
    torch.manual_seed(0)
    net = LCENet(60, rank=8, blocks=2, init="cooccurrence")
    filled = cooccurrence_init_(net, random_labels(200, 60, 4), scale=0.1)
    assert filled == 8
    z = 3 * torch.randn(32, 60)
    correction = (net(z) - z).norm(dim=1)
    assert torch.all(correction <= 0.1 * torch.sigmoid(z).norm(dim=1) * (1 + 1e-5))
    assert torch.all(correction <= 0.05 * z.norm(dim=1))
    assert correction.min() > 0  # it does something


def test_first_block_encodes_which_labels_go_together():
    """Labels 0 and 1 always come together, 2 and 3 too: a confident label 0 raises label 1, not 3."""
    rows = [[0, 1], [0, 1], [2, 3], [2, 3], [0, 1, 4], [4]] * 5
    labels = sp.csr_matrix((np.ones(sum(map(len, rows))), (np.repeat(np.arange(len(rows)), [len(r) for r in rows]),
                                                            np.concatenate(rows))), shape=(len(rows), 5))
    net = LCENet(5, rank=3, blocks=1, init="cooccurrence")
    cooccurrence_init_(net, labels)
    z = torch.full((1, 5), -4.0)
    z[0, 0] = 4.0
    gain = net(z) - z
    assert gain[0, 1] > 0.5 * gain[0, 0] > 0
    assert gain[0, 1] > 10 * gain[0, 3].abs()


def test_rank_beyond_the_label_rank_is_xavier_filled_and_keeps_the_bound():
    labels = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]] * 3, dtype=np.float64))  # rank 2
    torch.manual_seed(0)
    net = LCENet(6, rank=5, blocks=1, init="cooccurrence")
    assert cooccurrence_init_(net, labels) == 2
    block = net.blocks[0]
    assert torch.all(block.up.weight[:, 2:] == 0) and torch.all(block.down.weight[:, 2:] != 0)
    bound = (6 / (6 + 5)) ** 0.5
    assert block.down.weight[:, 2:].abs().max() <= bound
    z = torch.randn(4, 6)
    assert torch.all((net(z) - z).norm(dim=1) <= 0.1 * torch.sigmoid(z).norm(dim=1) * (1 + 1e-5))


def test_deterministic_for_a_seed():
    labels = random_labels(20, 40, 3)  # rank <= 20
    nets = []
    for seed in (0, 0, 1):
        net = LCENet(40, rank=30, blocks=1, init="cooccurrence")  # rank > labels' rank: xavier rows too
        cooccurrence_init_(net, labels, seed=seed)
        nets.append(net.state_dict())
    assert all(torch.equal(nets[0][name], nets[1][name]) for name in nets[0])
    assert not torch.equal(nets[0]["blocks.0.down.weight"], nets[2]["blocks.0.down.weight"])


def test_never_forms_an_l_by_l_matrix():
    """L = 50,000: a dense L x L fp32 matrix would take 10 GB; the init stays under 100 MB (numpy and scipy,
    traced) and a few seconds."""
    labels = random_labels(3000, 50_000, 3)
    net = LCENet(50_000, rank=4, blocks=1, init="cooccurrence")
    started = time.perf_counter()
    tracemalloc.start()
    try:
        assert cooccurrence_init_(net, labels) == 4
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20
    assert time.perf_counter() - started < 20


def test_refused_without_bottleneck_or_with_the_wrong_width():
    with pytest.raises(UserError, match="bottleneck"):
        cooccurrence_init_(LCENet(5, blocks=1, bottleneck=False, init="cooccurrence"), sp.eye(5, format="csr"))
    with pytest.raises(UserError, match="columns"):
        cooccurrence_init_(LCENet(5, rank=2, init="cooccurrence"), sp.eye(6, format="csr"))


def test_init_name_is_accepted_and_starts_as_identity_before_the_labels_are_seen():
    net = LCENet(10, rank=4, blocks=2, init="cooccurrence")
    z = torch.randn(3, 10)
    assert torch.equal(net(z), z)
