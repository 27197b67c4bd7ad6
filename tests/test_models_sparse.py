"""Tests for the sparse family: the EmbeddingBag network equals its dense formula, and it trains."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from lcenet.errors import UserError
from lcenet.inference import CsrInputs
from lcenet.lcenet import with_lcenet
from lcenet.models import build_model, model_class

CPU = torch.device("cpu")


def random_features(rows: int, cols: int, seed: int = 0) -> sp.csr_matrix:
    matrix = sp.random(rows, cols, density=0.2, format="csr", dtype=np.float32, random_state=seed)
    keep = np.ones(rows, dtype=np.float32)
    keep[1] = 0  # one document without any feature
    matrix = sp.csr_matrix(sp.diags(keep) @ matrix)
    matrix.eliminate_zeros()
    return matrix


def test_output_equals_dense_reference():
    torch.manual_seed(0)
    model = build_model("sparse", num_labels=7, vocab_size=30, hidden_dims=[16, 8], activation="elu", dropout=0.3)
    model.eval()
    features = random_features(5, 30)
    dense = torch.from_numpy(features.toarray())
    expected = F.elu(dense @ model.input.weight + model.input_bias)
    expected = F.elu(model.hidden[0](expected))
    expected = model.output(expected)
    out = model(*CsrInputs(features).batch(np.arange(5), CPU))
    assert out.shape == (5, 7)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], model.output(F.elu(model.hidden[0](F.elu(model.input_bias)))))


def test_first_layer_starts_at_unit_scale_on_normalised_rows():
    """TF-IDF rows have unit l2 norm; the first pre-activations should then have about unit variance (a 1/sqrt(F)
    init left them ~500x smaller and the network never left the label prior)."""
    torch.manual_seed(0)
    model = build_model("sparse", num_labels=3, vocab_size=5000, hidden_dims=[256])
    features = sp.random(64, 5000, density=0.05, format="csr", dtype=np.float32, random_state=0)
    features = sp.csr_matrix(sp.diags(1 / sp.linalg.norm(features, axis=1)) @ features, dtype=np.float32)
    indices, offsets, weights = CsrInputs(features).batch(np.arange(64), CPU)
    pre = model.input(indices, offsets, per_sample_weights=weights) + model.input_bias
    assert 0.8 < pre.std().item() < 1.2


def test_registered_saved_args_rebuild_the_same_network():
    assert model_class("sparse").input_kind == "tfidf"
    torch.manual_seed(0)
    model = build_model("sparse", num_labels=4, vocab_size=20, hidden_dims=[8])
    assert model.saved_args() == {"hidden_dims": [8], "activation": "relu", "dropout": 0.5}
    rebuilt = build_model("sparse", num_labels=4, vocab_size=20, **model.saved_args())
    rebuilt.load_state_dict(model.state_dict())
    batch = CsrInputs(random_features(3, 20)).batch(np.arange(3), CPU)
    torch.testing.assert_close(rebuilt.eval()(*batch), model.eval()(*batch))


@pytest.mark.parametrize("kwargs", [{"hidden_dims": []}, {"hidden_dims": [0]}, {"activation": "tanh"},
                                    {"dropout": 1.0}, {"width": 3}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(UserError):
        build_model("sparse", num_labels=4, vocab_size=20, **kwargs)


def test_learns_a_toy_task_with_lcenet():
    """Label j is on when feature j is present; after a few Adam steps the top label is right."""
    torch.manual_seed(0)
    features = sp.csr_matrix(np.eye(6, dtype=np.float32))
    targets = torch.eye(6)
    model = with_lcenet(build_model("sparse", num_labels=6, vocab_size=6, hidden_dims=[16], dropout=0.0), 6, rank=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, fused=True)
    batch = CsrInputs(features).batch(np.arange(6), CPU)
    for _ in range(60):
        loss = F.binary_cross_entropy_with_logits(model(*batch), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model(*batch).argmax(dim=1).tolist() == list(range(6))
