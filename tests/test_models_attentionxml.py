import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lcenet import with_lcenet
from lcenet.errors import UserError
from lcenet.models import build_model, model_class
from lcenet.models.attentionxml import AttentionXML

L, V = 11, 40
TINY = {"embedding_dim": 8, "hidden_size": 6, "linear_sizes": [5]}


def make(**kw) -> AttentionXML:
    torch.manual_seed(0)
    return build_model("attentionxml", L, V, **{**TINY, **kw})


def batch(lengths, positions, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), positions, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, V, (n,), generator=g)
    return ids, ids != 0


def test_registered_and_shapes():
    assert model_class("attentionxml") is AttentionXML
    model = make()
    ids, mask = batch([5, 9, 1], 9)
    out = model(ids, mask)
    assert out.shape == (3, L) and out.dtype == torch.float32
    assert model.embedding.padding_idx == 0 and model.embedding.weight.shape == (V, 8)


def test_padding_never_changes_scores():
    model = make(label_chunk_size=4).eval()
    ids, mask = batch([7, 3, 5], 7)
    with torch.no_grad():
        short = model(ids, mask)
        padded = model(torch.nn.functional.pad(ids, (0, 13)), torch.nn.functional.pad(mask, (0, 13)))
        alone = model(ids[1:2, :3], mask[1:2, :3])
    torch.testing.assert_close(padded, short, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, short[1:2], atol=1e-5, rtol=0)


def test_empty_document_gives_finite_scores():
    model = make().eval()
    ids, mask = batch([0, 4], 6)
    assert torch.isfinite(model(ids, mask)).all()


@pytest.mark.parametrize("chunk", [1, 4, 11, 100])
def test_label_chunking_matches_all_labels(chunk):
    whole = make(label_chunk_size=None).eval()
    chunked = make(label_chunk_size=chunk).eval()
    chunked.load_state_dict(whole.state_dict())
    ids, mask = batch([6, 2], 6)
    with torch.no_grad():
        torch.testing.assert_close(chunked(ids, mask), whole(ids, mask), atol=1e-6, rtol=0)


def test_checkpointed_chunks_give_the_same_gradients():
    plain = make(label_chunk_size=4, dropout=0.0, embedding_dropout=0.0)
    ckpt = make(label_chunk_size=4, dropout=0.0, embedding_dropout=0.0, checkpoint_chunks=True)
    ckpt.load_state_dict(plain.state_dict())
    ids, mask = batch([6, 3], 6)
    for model in (plain, ckpt):
        model(ids, mask).pow(2).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_with_lcenet_gradients_reach_the_base():
    model = with_lcenet(make(), L, rank=3)
    ids, mask = batch([5, 4], 5)
    model(ids, mask).sum().backward()
    base = model.base
    for param in (base.embedding.weight, base.lstm.weight_ih_l0, base.attention, base.output.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_freeze_embeddings():
    model = make(freeze_embeddings=True)
    ids, mask = batch([3], 3)
    model(ids, mask).sum().backward()
    assert not model.embedding.weight.requires_grad and model.lstm.weight_ih_l0.grad is not None


def test_safetensors_round_trip(tmp_path):
    args = {**TINY, "num_layers": 2, "label_chunk_size": 5}
    model = with_lcenet(build_model("attentionxml", L, V, **args), L, rank=3).eval()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    saved = json.loads(json.dumps(args))
    torch.manual_seed(123)
    rebuilt = with_lcenet(build_model("attentionxml", L, V, **saved), L, rank=3).eval()
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"))
    ids, mask = batch([4, 2], 4)
    with torch.no_grad():
        assert torch.equal(rebuilt(ids, mask), model(ids, mask))


def test_bf16_autocast_runs():
    model = make(label_chunk_size=4).eval()
    ids, mask = batch([5, 2], 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask)
    assert out.shape == (2, L) and torch.isfinite(out.float()).all()


def test_bad_hyper_parameters():
    with pytest.raises(UserError, match="label_chunk_size"):
        make(label_chunk_size=0)
    with pytest.raises(UserError, match="nonsense"):
        build_model("attentionxml", L, V, nonsense=1)


def test_auto_chunking_loops_over_labels_only_where_memory_forces_it(monkeypatch):
    import lcenet.models.attentionxml as module

    model = make()  # label_chunk_size "auto"
    assert model.chunk_size(batch=16, positions=500) == model.num_labels  # fits: one pass over all labels
    monkeypatch.setattr(module, "CHUNK_BUDGET_BYTES", 3 * 16 * 500 * 4 * 2)  # room for two labels at a time
    assert model.chunk_size(batch=16, positions=500) == 2
