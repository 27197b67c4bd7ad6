"""Shortlist LCENet a cluster at a time: what the per-label paths compute, with gradients only at the chosen
clusters' labels, under bf16 autocast too, and bad cluster ids refused."""

from __future__ import annotations

import pytest
import torch

from lcenet import lcenet as lcenet_module
from lcenet.errors import UserError
from lcenet.lcenet import CLUSTER_GEMM, LCENet, Shortlist
from lcenet.output import PADDING_LOGIT

L = 14
# Clusters of at most 4 labels in a shuffled order; the last two are smaller, so their blocks end in padding.
MEMBERS = torch.tensor([[3, 11, 0, 7], [12, 5, 9, 1], [2, 13, 6, -1], [10, 8, 4, -1]])
ALL_LABELS = MEMBERS.shape[0]

SWITCHES = [
    {},
    {"rank": 3, "blocks": 3},
    {"blocks": 1, "input_activation": "tanh", "hidden_activation": "relu"},
    {"input_activation": "none", "hidden_activation": "gelu"},
    {"residual": False},
    {"bottleneck": False},
    {"sparse_gradients": True},
    {"sparse_gradients": True, "rank": 2, "hidden_activation": "none"},
]


def make_net(**kwargs) -> LCENet:
    torch.manual_seed(0)
    kwargs = {"rank": 4, "init": "xavier", **kwargs}
    if not kwargs.get("bottleneck", True):
        kwargs.pop("rank")
    net = LCENet(L, **kwargs)
    with torch.no_grad():  # non-zero biases, so that a gradient at the wrong label would show
        for name, param in net.named_parameters():
            if "bias" in name:
                param.add_(0.1 * torch.randn(param.shape))
    return net


def chosen(clusters: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(label ids [B, c·S], clusters [B, c]) for each document's list of clusters."""
    ids = torch.tensor(clusters)
    return MEMBERS[ids].reshape(len(ids), -1), ids


def run(net: LCENet, logits: torch.Tensor, upstream: torch.Tensor, ids: torch.Tensor, clusters=None):
    net.zero_grad(set_to_none=True)
    logits = logits.clone().requires_grad_()
    out = net(logits, ids, clusters)
    (torch.where(ids >= 0, out, 0.0) * upstream).sum().backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    return out.detach(), logits.grad, grads


BATCH = [[0, 2], [2, 3], [1, 2], [3, 0], [2, 0]]  # cluster 2 three times, cluster 1 once


@pytest.mark.parametrize("kwargs", SWITCHES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_a_cluster_at_a_time_is_the_per_label_computation(kwargs):
    """Same outputs, logit gradients and parameter gradients as the same candidates without their cluster ids;
    padding comes out as PADDING_LOGIT."""
    net = make_net(**kwargs)
    ids, clusters = chosen(BATCH)
    logits, upstream = 2 * torch.randn(ids.shape), torch.randn(ids.shape)
    assert Shortlist.of(ids, L, clusters).path == CLUSTER_GEMM
    out, logit_grad, grads = run(net, logits, upstream, ids, clusters)
    expected_out, expected_logit_grad, expected_grads = run(net, logits, upstream, ids)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    assert torch.all(out[ids < 0] == PADDING_LOGIT)
    torch.testing.assert_close(logit_grad, expected_logit_grad, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        assert grad.is_sparse == expected_grads[name].is_sparse, name
        torch.testing.assert_close(grad.to_dense(), expected_grads[name].to_dense(), atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kwargs", [kwargs for kwargs in SWITCHES if kwargs.get("bottleneck", True)],
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_tables_in_cluster_order_multiply_slices_and_compute_the_same(kwargs):
    """With the tables' rows in cluster order (as after a shortlist) every cluster's rows are a slice, and
    outputs and gradients (read back in label order) are those of the label-ordered tables."""
    net, arranged = make_net(**kwargs), make_net(**kwargs)
    arranged.arrange_rows(MEMBERS[MEMBERS >= 0])
    ids, clusters = chosen(BATCH)
    assert all(start is not None for start in Shortlist.of(ids, L, clusters, arranged.label_rows).segments.starts)
    assert not any(start is not None for start in Shortlist.of(ids, L, clusters).segments.starts)
    logits, upstream = 2 * torch.randn(ids.shape), torch.randn(ids.shape)
    out, logit_grad, grads = run(arranged, logits, upstream, ids, clusters)
    expected_out, expected_logit_grad, expected_grads = run(net, logits, upstream, ids, clusters)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logit_grad, expected_logit_grad, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        assert grad.is_sparse == expected_grads[name].is_sparse, name
        grad = grad.to_dense()
        if name.endswith(("down.weight", "up.weight", "up.bias")):
            grad = grad.index_select(0, arranged.label_rows)
        torch.testing.assert_close(grad, expected_grads[name].to_dense(), atol=1e-5, rtol=1e-4, msg=name)


def test_every_cluster_chosen_in_any_order_is_the_dense_network():
    net = make_net(blocks=2)
    orders = [torch.randperm(ALL_LABELS, generator=torch.Generator().manual_seed(seed)).tolist() for seed in range(3)]
    ids, clusters = chosen(orders)
    logits = torch.randn(3, L)
    dense = net(logits)
    out = net(logits.gather(1, ids.clamp(min=0)), ids, clusters)
    valid = ids >= 0
    torch.testing.assert_close(out[valid], dense.gather(1, ids.clamp(min=0))[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_gradients_reach_only_the_chosen_clusters_labels(sparse, monkeypatch):
    """Clusters 0 and 2 chosen: their 7 labels get gradient rows (row-sparse ones naming exactly them, in order), the
    other 7 (label 0's row included, where padding points) none."""
    monkeypatch.setattr(lcenet_module, "FULL_TABLES_MIN_FRACTION", 0.75)  # 7 of 14 touched: sparse stays sparse
    net = make_net(rank=3, sparse_gradients=sparse)
    ids, clusters = chosen([[2, 0], [0, 2]])
    net(torch.randn(ids.shape), ids, clusters).sum().backward()
    touched = torch.tensor(sorted(MEMBERS[[0, 2]][MEMBERS[[0, 2]] >= 0].tolist()))
    untouched = torch.tensor(sorted(set(range(L)) - set(touched.tolist())))
    for table in net.label_tables():
        assert table.grad.is_sparse == sparse
        if sparse:
            assert torch.equal(table.grad._indices()[0], touched)  # sorted and distinct, as RowAdam reads them
        grad = table.grad.to_dense()
        assert torch.all(grad[untouched] == 0) and torch.all(grad[touched].abs().sum(1) > 0)


def test_bf16_autocast_computes_in_bf16_and_keeps_fp32_gradients():
    net = make_net(blocks=2)
    ids, clusters = chosen(BATCH)
    logits, upstream = torch.randn(ids.shape), torch.randn(ids.shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, logit_grad, grads = run(net, logits, upstream, ids, clusters)
        expected_out, expected_logit_grad, _ = run(net, logits, upstream, ids)
    torch.testing.assert_close(out.float(), expected_out.float(), atol=0.05, rtol=0.02)
    torch.testing.assert_close(logit_grad, expected_logit_grad, atol=0.05, rtol=0.02)
    assert all(grad.dtype == torch.float32 for grad in grads.values())


@pytest.mark.parametrize("clusters", [torch.zeros(5, 3, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long),
                                      torch.zeros(5, 2), torch.zeros(5, dtype=torch.long)])
def test_bad_cluster_ids_are_refused(clusters):
    ids, _ = chosen(BATCH)
    with pytest.raises(UserError, match="clusters must be integer ids"):
        make_net()(torch.randn(ids.shape), ids, clusters)


def test_blocks_that_break_the_cluster_layout_are_refused():
    ids, clusters = chosen(BATCH)
    net = make_net()
    swapped = ids.clone()
    swapped[0, :2] = swapped[0, :2].flip(0)  # document 0's block of cluster 0 in another order than document 3's
    with pytest.raises(UserError, match="same labels in its block"):
        net(torch.randn(ids.shape), swapped, clusters)
    shared = torch.tensor([[0, 1], [1, 0]])
    overlapping = torch.cat([MEMBERS[0], MEMBERS[0]]).expand(2, -1)  # clusters 0 and 1 both naming cluster 0's labels
    with pytest.raises(UserError, match="must not share labels"):
        net(torch.randn(overlapping.shape), overlapping, shared)
    padded_first = MEMBERS[2].roll(1).expand(2, -1)  # [-1, 2, 13, 6] in both documents
    with pytest.raises(UserError, match="its labels first, then its -1 padding"):
        net(torch.randn(padded_first.shape), padded_first, torch.tensor([[2], [2]]))


def test_clusters_no_two_documents_share_take_the_per_label_paths():
    """A cluster's rows gathered once serve every document that chose it; with one document per cluster there
    is nothing to share, and the per-label paths compute the same."""
    ids, clusters = chosen([[0], [1], [2], [3]])
    assert Shortlist.of(ids, L, clusters).path != CLUSTER_GEMM
    net = make_net()
    logits = torch.randn(ids.shape)
    torch.testing.assert_close(net(logits, ids, clusters), net(logits, ids))
