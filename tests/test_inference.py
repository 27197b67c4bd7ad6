import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lcenet.inference import CsrInputs, EpochBatches, PairedInputs, SplitTensors, TokenInputs, narrowest_int_dtype

CPU = torch.device("cpu")


def random_split(seed=0, docs=37, positions=12, vocab=500, labels=9, features="tokens"):
    """``features``: the input store, ``tokens``, ``tfidf`` (CSR) or ``both`` (PairedInputs)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, positions + 1, size=docs)
    ids = np.zeros((docs, positions), dtype=np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1, vocab, size=length)
    truth = sp.random(docs, labels + 2, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    truth.data[:] = 1  # two extra columns: labels unseen in train, never targets
    csr = CsrInputs(sp.random(docs, vocab, density=0.05, format="csr", random_state=seed, dtype=np.float32))
    inputs = {"tokens": TokenInputs(ids, 0), "tfidf": csr, "both": PairedInputs(TokenInputs(ids, 0), csr)}
    return SplitTensors(inputs[features], truth)


@pytest.mark.parametrize("features", ["tokens", "tfidf", "both"])
def test_device_resident_batches_equal_host_batches(features):
    split = random_split(features=features)
    host = EpochBatches(split, 9, batch_size=8, device=CPU, resident=False)
    resident = EpochBatches(split, 9, batch_size=8, device=CPU, resident=True)
    order = np.random.default_rng([0, 1]).permutation(len(split))
    host.start_epoch(order)
    resident.start_epoch(order)
    for start in range(0, len(order), 8):
        (host_inputs, host_targets), (resident_inputs, resident_targets) = host.get(start), resident.get(start)
        assert len(host_inputs) == len(resident_inputs) == {"tokens": 2, "tfidf": 3, "both": 5}[features]
        for a, b in zip(host_inputs, resident_inputs):
            assert a.dtype == b.dtype and torch.equal(a, b)
        assert torch.equal(host_targets, resident_targets)
        assert host_targets.shape[1] == 9


def test_token_ids_are_kept_in_the_narrowest_dtype():
    assert narrowest_int_dtype(30_000) == torch.int16
    assert narrowest_int_dtype(100_000) == torch.int32
    split = random_split(vocab=500)
    assert split.inputs.resident(CPU).ids.dtype == torch.int16

