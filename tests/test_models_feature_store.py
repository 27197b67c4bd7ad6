import gc
import shutil

import torch

from lcenet.models.feature_store import FeatureStore, VectorMemo, document_keys, store_name


def test_document_keys_ignore_padding_and_tell_documents_apart():
    ids = torch.tensor([[2, 5, 6, 0], [2, 5, 7, 0], [2, 5, 6, 0]])
    mask = ids != 0
    wider_ids, wider_mask = torch.nn.functional.pad(ids, (0, 3)), torch.nn.functional.pad(mask, (0, 3))
    keys = document_keys(ids, mask)
    assert keys == document_keys(wider_ids, wider_mask)
    assert keys[0] == keys[2] != keys[1] and all(len(key) == 16 for key in keys)


def test_shards_are_written_as_they_fill_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setattr(FeatureStore, "SHARD_DOCUMENTS", 2)
    store = FeatureStore(tmp_path)
    keys = [bytes([i]) * 16 for i in range(3)]
    vectors = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    store.add(keys[:1], vectors[:1])
    assert not list(tmp_path.glob("*.safetensors"))
    store.add(keys[1:], vectors[1:])  # reaches 2 pending: a killed process keeps these
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    store.add(keys[:1], vectors[:1])  # another process encoded it too
    store.flush()
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    reopened = FeatureStore(tmp_path)
    for key, vector in zip(keys, vectors):
        torch.testing.assert_close(reopened.get(key), vector)
    assert reopened.get(bytes([9]) * 16) is None


def test_an_unreadable_shard_is_skipped_with_a_warning(tmp_path, caplog):
    store = FeatureStore(tmp_path)
    store.add([bytes([1]) * 16], torch.ones(1, 4))
    store.flush()
    (tmp_path / "broken.safetensors").write_bytes(b"not a shard")
    with caplog.at_level("WARNING", logger="lcenet"):
        reopened = FeatureStore(tmp_path)
    assert "broken.safetensors: skipped" in caplog.text
    torch.testing.assert_close(reopened.get(bytes([1]) * 16), torch.ones(4))


def test_a_process_opens_one_store_per_directory_until_it_is_removed(tmp_path):
    directory = tmp_path / "store"
    store = FeatureStore.open(directory)
    assert FeatureStore.open(directory) is store
    store.add([bytes([1]) * 16], torch.ones(1, 4))
    assert FeatureStore.open(directory).get(bytes([1]) * 16) is not None  # added, not yet written
    store.flush()
    shutil.rmtree(directory)  # the cache was cleared: what the process knew of it is gone too
    assert FeatureStore.open(directory).get(bytes([1]) * 16) is None


def test_store_names_follow_the_weights_and_the_settings():
    encoder = torch.nn.Linear(3, 2)
    name = store_name(encoder, {"pooling": "mean"}, "cpu")
    assert name == store_name(encoder, {"pooling": "mean"}, "cpu")
    assert name != store_name(encoder, {"pooling": "cls"}, "cpu") != store_name(encoder, {"pooling": "mean"}, "cuda")
    with torch.no_grad():
        encoder.bias.add_(1e-3)
    assert name != store_name(encoder, {"pooling": "mean"}, "cpu")


def test_a_memo_is_shared_by_name_forgets_the_least_recently_used_and_lasts_while_held(monkeypatch):
    monkeypatch.setattr(VectorMemo, "documents", 3)
    memo = VectorMemo.shared("a")
    assert VectorMemo.shared("a") is memo and VectorMemo.shared("b") is not memo
    keys = [bytes([i]) * 16 for i in range(4)]
    for key in keys[:3]:
        memo.add(key, torch.full((2,), float(key[0])))
    torch.testing.assert_close(memo.get(keys[0]), torch.zeros(2))  # now the most recently used
    memo.add(keys[3], torch.ones(2))
    assert memo.get(keys[1]) is None and memo.get(keys[0]) is not None and len(memo) == 3
    VectorMemo.bound(1)  # a server's bound, applied to the memos already held
    assert len(memo) == 1 and memo.get(keys[0]) is not None
    del memo
    gc.collect()
    assert len(VectorMemo.shared("a")) == 0  # nobody held it: a new one
