"""Shortlist LCENet: the dense block restricted to each document's candidate labels, with gradients only at the
candidates' rows, padding that takes no part, model files in the old layout, and RowAdam's sparse update."""

from __future__ import annotations

import pytest
import scipy.sparse as sp
import torch
from torch import nn

from lcenet import lcenet as lcenet_module
from lcenet.errors import UserError
from lcenet.lcenet import LCENet, cooccurrence_init_
from lcenet.output import PADDING_LOGIT
from lcenet.row_adam import RowAdam, clip_grad_norm_

L = 12


@pytest.fixture(autouse=True, params=["per-document", "union", "full-tables"])
def compute_path(request, monkeypatch):
    """Every test runs every way a block can be computed (per-document gathers, GEMMs over the batch's labels,
    GEMMs over all labels)."""
    full_tables = request.param == "full-tables"
    monkeypatch.setattr(lcenet_module, "FULL_TABLES_MIN_FRACTION", 0.0 if full_tables else float("inf"))
    monkeypatch.setattr(lcenet_module, "UNION_GEMM_MAX_RATIO", 0 if request.param == "per-document" else 10**9)
    return request.param


ABLATIONS = [
    {},
    {"rank": 3},
    {"rank": 5, "blocks": 3},
    {"blocks": 1, "input_activation": "tanh", "hidden_activation": "relu"},
    {"input_activation": "none", "hidden_activation": "gelu"},
    {"hidden_activation": "none"},
    {"residual": False},
    {"bottleneck": False},
    {"bottleneck": False, "residual": False, "input_activation": "tanh"},
    {"init": "identity"},
    {"init": "cooccurrence"},
    {"aux_loss_weight": 0.5},
    {"sparse_gradients": True},
    {"sparse_gradients": True, "residual": False, "rank": 2},
]


def make_net(seed: int = 0, **kwargs) -> LCENet:
    torch.manual_seed(seed)
    kwargs = {"rank": 4, "init": "xavier", **kwargs}
    if not kwargs.get("bottleneck", True):
        kwargs.pop("rank")
    net = LCENet(L, **kwargs)
    if kwargs.get("init") == "cooccurrence":
        cooccurrence_init_(net, sp.random(40, L, density=0.3, format="csr", random_state=0))
    with torch.no_grad():  # identity and cooccurrence inits leave zeros that would hide gradient mistakes
        for name, param in net.named_parameters():
            if "bias" in name:
                param.add_(0.1 * torch.randn(param.shape))
    return net


def output_and_grads(net: LCENet, logits: torch.Tensor, upstream: torch.Tensor, label_ids=None):
    net.zero_grad(set_to_none=True)
    logits = logits.clone().requires_grad_()
    out = net(logits, label_ids)
    (out * upstream).sum().backward()
    grads = {name: (p.grad.to_dense() if p.grad.is_sparse else p.grad) for name, p in net.named_parameters()}
    return out.detach(), logits.grad, grads


def assert_close_grads(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kwargs", ABLATIONS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_every_label_as_a_candidate_is_the_dense_network(kwargs):
    """K = L in label order: same output and same gradients (logits and every parameter) as dense LCENet."""
    net = make_net(**kwargs)
    logits, upstream = 2 * torch.randn(5, L), torch.randn(5, L)
    ids = torch.arange(L).expand(5, L)
    out, logit_grad, grads = output_and_grads(net, logits, upstream, ids)
    net.sparse_gradients = False  # the dense path has dense gradients
    dense_out, dense_logit_grad, dense_grads = output_and_grads(net, logits, upstream)
    torch.testing.assert_close(out, dense_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logit_grad, dense_logit_grad, atol=1e-5, rtol=1e-5)
    assert_close_grads(grads, dense_grads)


def test_candidates_in_any_order():
    net = make_net(rank=4, blocks=2)
    logits = torch.randn(3, L)
    order = torch.stack([torch.randperm(L) for _ in range(3)])
    dense = net(logits)
    torch.testing.assert_close(net(logits.gather(1, order), order), dense.gather(1, order), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [{}, {"sparse_gradients": True}, {"bottleneck": False}, {"residual": False}])
def test_a_padded_shortlist_is_the_dense_network_on_its_candidates(kwargs):
    """With tanh input (tanh(0) = 0), one dense block on logits that are 0 outside the candidates and supervised
    only at them computes what the shortlist does: same outputs at the candidates, same gradients. Padding (-1,
    anywhere in the list, a different amount per document) takes no part and comes out as PADDING_LOGIT."""
    net = make_net(input_activation="tanh", blocks=1, **kwargs)
    ids = torch.tensor([[3, -1, 0, 7, 11], [-1, -1, 5, 2, -1], [-1, -1, -1, -1, -1], [9, 1, 4, 6, 8]])
    valid = ids >= 0
    logits, upstream = 2 * torch.randn(ids.shape), torch.randn(ids.shape)
    out, logit_grad, grads = output_and_grads(net, logits, upstream, ids)

    rows, cols = valid.nonzero(as_tuple=True)
    dense_logits, dense_upstream = torch.zeros(len(ids), L), torch.zeros(len(ids), L)
    dense_logits[rows, ids[valid]] = logits[valid]
    dense_upstream[rows, ids[valid]] = upstream[valid]
    net.sparse_gradients = False
    dense_out, dense_logit_grad, dense_grads = output_and_grads(net, dense_logits, dense_upstream)

    torch.testing.assert_close(out[valid], dense_out[rows, ids[valid]], atol=1e-5, rtol=1e-5)
    assert torch.all(out[~valid] == PADDING_LOGIT)
    torch.testing.assert_close(logit_grad[valid], dense_logit_grad[rows, ids[valid]], atol=1e-5, rtol=1e-5)
    assert torch.all(logit_grad[~valid] == 0)
    assert_close_grads(grads, dense_grads)


def test_a_batch_of_padding_only_is_all_padding():
    net = make_net()
    logits = torch.randn(2, 3, requires_grad=True)
    assert torch.all(net(logits, torch.full((2, 3), -1)) == PADDING_LOGIT)


def test_padding_changes_nothing_for_the_other_candidates():
    """Through several blocks, a padded batch gives each document what it gets alone with no padding."""
    net = make_net(rank=4, blocks=3)
    ids = torch.tensor([[3, -1, 0, 7, 11], [-1, -1, 5, 2, -1], [9, 1, 4, 6, 8]])
    logits = torch.randn(ids.shape)
    out = net(logits, ids)
    for doc in range(len(ids)):
        keep = ids[doc] >= 0
        alone = net(logits[doc, keep].unsqueeze(0), ids[doc, keep].unsqueeze(0))
        torch.testing.assert_close(out[doc, keep], alone[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_gradients_reach_only_the_candidates_rows(sparse, compute_path):
    """Labels in no candidate list (0 among them, which padding must not stand in for) get no gradient in either
    table or in W2's bias; sparse gradients name exactly the batch's distinct candidates (computed over all
    labels, the gradients are dense: zero outside them)."""
    net = make_net(rank=3, blocks=2, sparse_gradients=sparse)
    sparse = sparse and compute_path != "full-tables"
    ids = torch.tensor([[5, 2, -1, 9], [2, 7, 5, -1]])
    net(torch.randn(ids.shape), ids).sum().backward()
    touched = torch.tensor([2, 5, 7, 9])
    untouched = torch.tensor(sorted(set(range(L)) - set(touched.tolist())))
    for table in net.label_tables():
        assert table.grad.is_sparse == sparse
        grad = table.grad.coalesce() if sparse else table.grad
        if sparse:
            assert torch.equal(grad.indices()[0], touched)
            grad = grad.to_dense()
        assert torch.all(grad[untouched] == 0) and torch.all(grad[touched].abs().sum(1) > 0)
    for block in net.blocks:
        assert torch.all(block.up.bias.grad[untouched] == 0)


PERMUTATION = torch.tensor([7, 2, 11, 0, 5, 9, 1, 4, 10, 3, 8, 6])
TABLES = ("down.weight", "up.weight", "up.bias")


def in_label_order(net: LCENet, grads: dict) -> dict:
    """Parameter gradients with the label tables' rows (stored in ``arrange_rows`` order) back in label order."""
    return {name: grad.index_select(0, net.label_rows) if name.endswith(TABLES) else grad
            for name, grad in grads.items()}


@pytest.mark.parametrize("kwargs", [kwargs for kwargs in ABLATIONS if kwargs.get("bottleneck", True)],
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_tables_stored_in_another_row_order_compute_the_same(kwargs):
    """arrange_rows moves where each label's rows are stored and nothing else: dense and shortlist outputs and
    gradients, the state_dict (label order), and a state_dict loaded into either layout."""
    net, arranged = make_net(**kwargs), make_net(**kwargs)
    arranged.arrange_rows(PERMUTATION)
    arranged.arrange_rows(PERMUTATION.flip(0))  # from one arrangement to another
    state = net.state_dict()
    assert all(torch.equal(arranged.state_dict()[name], value) for name, value in state.items())
    ids = torch.tensor([[5, 2, -1, 9], [2, 7, 5, -1], [11, 0, 3, 4]])
    for label_ids in (None, ids):
        logits = 2 * torch.randn(3, L if label_ids is None else ids.shape[1])
        upstream = torch.randn(logits.shape)
        out, logit_grad, grads = output_and_grads(arranged, logits, upstream, label_ids)
        expected_out, expected_logit_grad, expected_grads = output_and_grads(net, logits, upstream, label_ids)
        torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logit_grad, expected_logit_grad, atol=1e-5, rtol=1e-5)
        assert_close_grads(in_label_order(arranged, grads), expected_grads)
    other = make_net(seed=1, **kwargs)
    other.arrange_rows(PERMUTATION)
    other.load_state_dict(state)
    logits = torch.randn(3, L)
    torch.testing.assert_close(other(logits), net(logits))


def test_cooccurrence_init_fills_arranged_tables_by_label():
    labels = sp.random(40, L, density=0.3, format="csr", random_state=0)
    net, arranged = make_net(), make_net()
    arranged.arrange_rows(PERMUTATION)
    for one in (net, arranged):
        cooccurrence_init_(one, labels)
    assert all(torch.equal(arranged.state_dict()[name], value) for name, value in net.state_dict().items())


@pytest.mark.parametrize("order, match", [(torch.arange(L - 1), "permutation"), (torch.zeros(L, dtype=torch.long),
                                                                                   "permutation")])
def test_a_row_order_that_is_not_a_permutation_is_refused(order, match):
    with pytest.raises(UserError, match=match):
        make_net().arrange_rows(order)
    with pytest.raises(UserError, match="bottleneck"):
        make_net(bottleneck=False).arrange_rows(PERMUTATION)


def test_model_files_keep_the_nn_linear_layout():
    """blocks.N.down.weight is [R, L] in the state_dict (W1ᵀ is stored as [L, R]); a state_dict in that layout,
    as files from before the change hold, loads and computes W1 h as nn.Linear did; a seed gives the same
    weights as when down was an nn.Linear."""
    net = make_net(rank=4, blocks=2)
    state = net.state_dict()
    assert state["blocks.0.down.weight"].shape == (4, L) and state["blocks.0.up.weight"].shape == (L, 4)
    assert set(state) == {f"blocks.{i}.{layer}.{kind}" for i in range(2) for layer in ("down", "up")
                          for kind in ("weight", "bias")}

    old = {name: torch.randn(value.shape) for name, value in state.items()}
    net.load_state_dict(old)
    z = torch.randn(3, L)
    block = net.blocks[0]
    down = nn.Linear(L, 4)
    down.load_state_dict({"weight": old["blocks.0.down.weight"], "bias": old["blocks.0.down.bias"]})
    torch.testing.assert_close(block.down(z), down(z))
    assert all(torch.equal(net.state_dict()[name], old[name]) for name in old)

    torch.manual_seed(0)
    first_down, first_up = nn.Linear(L, 4), nn.Linear(4, L)
    nn.init.xavier_uniform_(first_down.weight)
    nn.init.xavier_uniform_(first_up.weight)
    torch.manual_seed(0)
    fresh = LCENet(L, rank=4, blocks=1, init="xavier").state_dict()
    assert torch.equal(fresh["blocks.0.down.weight"], first_down.weight)
    assert torch.equal(fresh["blocks.0.up.weight"], first_up.weight)


def test_row_adam_is_sparse_adam_touching_only_the_batch_rows(compute_path):
    if compute_path == "full-tables":
        pytest.skip("computed over all labels, the tables' gradients are dense: AdamW's update (tested below)")
    nets = [make_net(rank=3, blocks=2, sparse_gradients=True) for _ in range(2)]
    optimizers = [RowAdam(nets[0].label_tables(), lr=0.01), torch.optim.SparseAdam(nets[1].label_tables(), lr=0.01)]
    before = [table.detach().clone() for table in nets[0].label_tables()]
    for step in range(3):
        ids = torch.tensor([[1, 4, 6], [4, 8, -1]]) if step < 2 else torch.tensor([[6, 10, -1], [1, -1, -1]])
        logits = torch.randn(ids.shape)
        for net, optimizer in zip(nets, optimizers):
            optimizer.zero_grad()
            net(logits, ids).pow(2).sum().backward()
            optimizer.step()
    for ours, theirs, start in zip(nets[0].label_tables(), nets[1].label_tables(), before):
        torch.testing.assert_close(ours, theirs)
        moved = (ours != start).any(1)
        assert moved.nonzero().flatten().tolist() == [1, 4, 6, 8, 10]


def test_candidates_covering_most_labels_use_the_whole_tables(monkeypatch):
    """At the shipped thresholds a batch whose candidates cover most labels computes over the whole tables (dense
    gradients); one that covers few gathers its rows (row-sparse). RowAdam keeps one step count and one pair of
    moments per table across the two: a sparse step after a dense one leaves the untouched rows' moments as the
    dense step left them."""
    monkeypatch.setattr(lcenet_module, "FULL_TABLES_MIN_FRACTION", 0.75)
    monkeypatch.setattr(lcenet_module, "UNION_GEMM_MAX_RATIO", 16)
    net = make_net(rank=3, blocks=1, sparse_gradients=True)
    optimizer = RowAdam(net.label_tables(), lr=0.01)
    wide = torch.arange(L).view(2, L // 2)  # every label a candidate
    narrow = torch.tensor([[1, 4], [4, 7]])
    for ids in (wide, narrow):
        optimizer.zero_grad()
        net(torch.randn(ids.shape), ids).pow(2).sum().backward()
        assert all(table.grad.is_sparse == (ids is narrow) for table in net.label_tables())
        before = {id(t): optimizer.state[t]["exp_avg"].clone() for t in net.label_tables() if optimizer.state[t]}
        optimizer.step()
    untouched = torch.tensor(sorted(set(range(L)) - {1, 4, 7}))
    for table in net.label_tables():
        state = optimizer.state[table]
        assert float(state["step"]) == 2
        assert torch.equal(state["exp_avg"][untouched], before[id(table)][untouched])
        assert not torch.equal(state["exp_avg"][[1, 4, 7]], before[id(table)][[1, 4, 7]])


def test_row_adam_sums_repeated_rows():
    """A gradient with a row twice (F.embedding's sparse gradient) is summed first, as SparseAdam does."""
    params = [nn.Parameter(torch.ones(4, 2)) for _ in range(2)]
    optimizers = [RowAdam([params[0]], lr=0.1), torch.optim.SparseAdam([params[1]], lr=0.1)]
    for param, optimizer in zip(params, optimizers):
        nn.functional.embedding(torch.tensor([2, 0, 2]), param, sparse=True).sum().backward()
        optimizer.step()
    torch.testing.assert_close(params[0], params[1])
    assert torch.all(params[0][[1, 3]] == 1)


def test_row_adam_on_dense_gradients_is_adamw_and_on_all_rows_the_sparse_update_is_the_same():
    """The rest of a model (dense gradients) trains in the same optimizer: AdamW's result (to its placement of
    eps), and a sparse gradient naming every row gives the dense update, weight decay included."""
    torch.manual_seed(0)
    grads = [torch.randn(4, 3) for _ in range(3)]
    params = [nn.Parameter(torch.ones(4, 3)) for _ in range(3)]
    optimizers = [RowAdam([params[0]], lr=0.1, weight_decay=0.5), torch.optim.AdamW([params[1]], lr=0.1,
                                                                                     weight_decay=0.5),
                  RowAdam([params[2]], lr=0.1, weight_decay=0.5)]
    for grad in grads:
        params[0].grad, params[1].grad = grad.clone(), grad.clone()
        params[2].grad = torch.sparse_coo_tensor(torch.arange(4).unsqueeze(0), grad.clone(), (4, 3),
                                                 check_invariants=True)
        for optimizer in optimizers:
            optimizer.step()
    torch.testing.assert_close(params[0], params[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(params[0], params[2])


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_row_adam_resumes_from_a_state_dict_on_any_device(device):
    """A reloaded RowAdam (from the host, as checkpoints load; or from an older checkpoint's int step count)
    continues exactly as the one that kept running, for dense and row-sparse gradients alike; on CUDA the fused
    kernel needs the step count beside the parameters."""
    torch.manual_seed(0)
    grads = [torch.randn(4, 3, device=device) for _ in range(4)]

    def gradient(step):  # dense and row-sparse steps in turn, as a shortlist table gets them
        if step % 2:
            return grads[step].clone()
        return torch.sparse_coo_tensor(torch.tensor([[0, 2]], device=device), grads[step][[0, 2]], (4, 3))

    running, reloaded = (nn.Parameter(torch.ones(4, 3, device=device)) for _ in range(2))
    optimizer = RowAdam([running], lr=0.1, weight_decay=0.1)
    for step in range(2):
        running.grad = gradient(step)
        optimizer.step()
    saved = optimizer.state_dict()
    saved["state"] = {index: {"step": int(state["step"]), **{name: state[name].cpu().clone()  # as read from a file
                                                              for name in ("exp_avg", "exp_avg_sq")}}
                      for index, state in saved["state"].items()}
    with torch.no_grad():
        reloaded.copy_(running)
    resumed = RowAdam([reloaded], lr=0.1, weight_decay=0.1)
    resumed.load_state_dict(saved)
    for step in range(2, 4):
        for param, opt in ((running, optimizer), (reloaded, resumed)):
            param.grad = gradient(step)
            opt.step()
    torch.testing.assert_close(reloaded, running)
    assert resumed.state[reloaded]["step"].device == reloaded.device


def test_clipping_counts_sparse_and_dense_gradients_together():
    dense, table = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(5, 2))
    dense.grad = torch.tensor([3.0, 0.0])
    table.grad = torch.sparse_coo_tensor(torch.tensor([[1, 1]]), torch.tensor([[2.0, 0.0], [2.0, 0.0]]), (5, 2),
                                         check_invariants=True)
    total = clip_grad_norm_([dense, table], max_norm=1.0)
    assert float(total) == pytest.approx(5.0)  # the repeated row sums to 4: sqrt(3² + 4²)
    assert float(torch.cat([dense.grad, table.grad.coalesce().values().flatten()]).norm()) == pytest.approx(1.0)


@pytest.mark.parametrize("ids, match", [
    (torch.tensor([[0, 1, 12]]), r"\[0, 12\)"),
    (torch.tensor([[0, -2, 1]]), r"\[0, 12\)"),
    (torch.tensor([[0.0, 1.0, 2.0]]), "integer"),
    (torch.tensor([[0, 1]]), "shaped"),
])
def test_bad_label_ids_are_refused(ids, match):
    with pytest.raises(UserError, match=match):
        make_net()(torch.randn(1, 3), ids)


def test_sparse_gradients_need_the_bottleneck_and_stay_out_of_the_config():
    with pytest.raises(UserError, match="bottleneck"):
        LCENet(L, bottleneck=False, sparse_gradients=True)
    assert "sparse_gradients" not in LCENet(L, sparse_gradients=True).config
