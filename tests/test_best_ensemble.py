"""benchmarks/best_ensemble.py scores every subset in one pass exactly as ``lcenet evaluate`` scores it."""

import itertools

import pytest

from conftest import load_benchmark, tiny_config, write_tiny_dataset
from lcenet.pipeline import evaluate_directory, run_training


def test_every_subset_scores_as_lcenet_evaluate_does(tmp_path, monkeypatch):
    monkeypatch.setenv("LCENET_CACHE", str(tmp_path / "cache"))
    data = write_tiny_dataset(tmp_path / "data")
    sparse = tiny_config("sparse", epochs=2, lr=2e-2)
    sparse.model_args, sparse.data.tfidf_min_df = {"hidden_dims": [16]}, 1
    configs = [tiny_config(epochs=2, lr=2e-2), tiny_config(epochs=2, lr=2e-2, seed=1), sparse]
    dirs = []
    for index, config in enumerate(configs):
        run_training(config, data, tmp_path / f"run{index}", progress=False)
        dirs.append(tmp_path / f"run{index}" / "model")
    subsets = [s for size in (1, 2, 3) for s in itertools.combinations(range(3), size)]
    scores = load_benchmark("best_ensemble").subset_scores(dirs, subsets, data, "dev", "cpu")
    for members, found in zip(subsets, scores):
        expected = evaluate_directory([dirs[i] for i in members], data, "dev", "cpu")
        assert found == pytest.approx(expected, abs=1e-12), members
    assert len({round(s["nDCG@5"], 9) for s in scores}) > 1  # the subsets differ, so the match is not vacuous
