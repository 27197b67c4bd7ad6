"""benchmarks/best_ensemble.py scores every subset in one pass exactly as ``lcenet evaluate`` scores it, under
either combining rule."""

import itertools
import json
import sys

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
    for combine in ("logit", "sigmoid"):
        scores = load_benchmark("best_ensemble").subset_scores(dirs, subsets, data, "dev", "cpu", combine)
        for members, found in zip(subsets, scores):
            expected = evaluate_directory([dirs[i] for i in members], data, "dev", "cpu", combine=combine)
            assert found == pytest.approx(expected, abs=1e-12), (members, combine)
        assert len({round(s["nDCG@5"], 9) for s in scores}) > 1  # the subsets differ, so the match is not vacuous

    # the script searches both rules and scores only the best on dev on test, by lcenet evaluate's path
    output = tmp_path / "best.json"
    monkeypatch.setattr(sys, "argv", ["best_ensemble.py", "--data", str(data), "--models", *map(str, dirs),
                                      "--combine", "logit", "sigmoid", "--device", "cpu", "--output", str(output)])
    load_benchmark("best_ensemble").main()
    record = json.loads(output.read_text())
    assert {c["combine"] for c in record["candidates"]} == {"logit", "sigmoid"}
    assert len(record["candidates"]) == 2 * len(subsets)
    best = record["best"]
    assert best["dev"]["nDCG@5"] == max(c["dev"]["nDCG@5"] for c in record["candidates"])
    assert best["reproduce"].endswith(f"--split test --combine {best['combine']}")
    assert best["test"] == pytest.approx(evaluate_directory(best["members"], data, "test", "cpu",
                                                            combine=best["combine"]), abs=1e-12)


def test_forward_selection_adds_the_best_model_each_round_and_stops_when_nothing_helps():
    ndcg = {(0,): .50, (1,): .60, (2,): .40, (3,): .55, (0, 1): .62, (1, 2): .65, (1, 3): .61,
            (0, 1, 2): .64, (1, 2, 3): .66, (0, 1, 2, 3): .65}
    select = load_benchmark("best_ensemble").forward_selection
    scored = select(lambda members: {"nDCG@5": ndcg[members], "P@1": 0.0}, count=4, max_size=4)
    assert set(scored) == set(ndcg)  # (0, 2), (0, 3), ... are never tried: they do not extend the round's best
    best = max(scored, key=lambda members: scored[members]["nDCG@5"])
    assert best == (1, 2, 3)
    assert set(select(lambda members: {"nDCG@5": ndcg[members], "P@1": 0.0}, count=4, max_size=2)) == {
        (0,), (1,), (2,), (3,), (0, 1), (1, 2), (1, 3)}


def test_forward_selection_keeps_the_smaller_ensemble_on_a_tie():
    select = load_benchmark("best_ensemble").forward_selection
    scored = select(lambda members: {"nDCG@5": 0.7, "P@1": 0.9}, count=3, max_size=3)
    assert set(scored) == {(0,), (1,), (2,), (0, 1), (0, 2)}  # a tie adds nothing, so the second round is last
