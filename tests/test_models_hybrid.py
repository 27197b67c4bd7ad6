"""The bert_sparse family: [CLS] vectors and a TF-IDF hidden layer side by side."""

import pytest
import scipy.sparse as sp
import torch

from lcenet.errors import UserError
from lcenet.inference import CsrInputs, PairedInputs, TokenInputs
from lcenet.models import build_model

transformers = pytest.importorskip("transformers")

L, FEATURES, VOCAB = 7, 50, 40
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(directory)
    return str(directory)


def make(pretrained, **kw):
    torch.manual_seed(0)
    return build_model("bert_sparse", L, FEATURES, pretrained=pretrained, **{"sparse_hidden": 8, **kw}).eval()


def inputs(ids, tfidf_rows, pad_positions=0):
    ids = torch.nn.functional.pad(torch.tensor(ids), (0, pad_positions)).numpy()
    matrix = sp.csr_matrix(torch.tensor(tfidf_rows, dtype=torch.float32).numpy())
    return PairedInputs(TokenInputs(ids, 0), CsrInputs(matrix)).batch([0, 1], CPU)


IDS = [[2, 5, 9, 11, 3], [2, 7, 3, 0, 0]]
ROWS = [[0.0] * FEATURES, [0.0] * FEATURES]
ROWS[0][3], ROWS[0][17], ROWS[1][40] = 0.6, 0.8, 1.0


def test_scores_read_both_the_tokens_and_the_tfidf_row_and_ignore_padding(pretrained):
    model = make(pretrained)
    with torch.no_grad():
        scores = model(*inputs(IDS, ROWS))
        assert scores.shape == (2, L)
        other_words = [row[:] for row in ROWS]
        other_words[0][3], other_words[0][25] = 0.0, 0.6
        changed = model(*inputs(IDS, other_words))
        assert not torch.allclose(changed[0], scores[0]) and torch.equal(changed[1], scores[1])
        other_tokens = [[2, 5, 9, 12, 3], IDS[1]]
        assert not torch.allclose(model(*inputs(other_tokens, ROWS))[0], scores[0])
        torch.testing.assert_close(model(*inputs(IDS, ROWS, pad_positions=4)), scores)


def test_saved_args_rebuild_the_model_without_the_checkpoint(pretrained):
    model = make(pretrained, num_cls_layers=1, activation="gelu")
    rebuilt = build_model("bert_sparse", L, FEATURES, **model.saved_args()).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(*inputs(IDS, ROWS)), model(*inputs(IDS, ROWS)))
    assert rebuilt.saved_args()["num_cls_layers"] == 1 and "pretrained" not in model.saved_args()


def test_the_capacity_control_widens_the_tfidf_layer(pretrained):
    model = make(pretrained)
    extra = 10 * (FEATURES + 1 + L)
    wider = make(pretrained, **model.widened_args(extra))
    count = [sum(p.numel() for p in m.parameters()) for m in (model, wider)]
    assert wider.saved_args()["sparse_hidden"] == 18 and count[1] - count[0] == extra


@pytest.mark.parametrize("setting, match", [({"sparse_hidden": 0}, "sparse_hidden"),
                                            ({"activation": "swish"}, "activation"),
                                            ({"dropout": 1.0}, "dropout"),
                                            ({"num_cls_layers": 3}, "num_cls_layers")])
def test_bad_settings_are_refused(pretrained, setting, match):
    with pytest.raises(UserError, match=match):
        make(pretrained, **setting)


def test_a_frozen_encoder_trains_only_the_tfidf_layer_and_the_output(pretrained):
    model = make(pretrained, freeze_encoder=True, pooling="mean").train()
    model(*inputs(IDS, ROWS)).sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.sparse_input.weight.grad is not None and model.output.weight.grad is not None
    assert model.saved_args()["freeze_encoder"] and model.saved_args()["pooling"] == "mean"
    rebuilt = build_model("bert_sparse", L, FEATURES, **model.saved_args()).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(*inputs(IDS, ROWS)), model.eval()(*inputs(IDS, ROWS)))
