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


def test_results_section_compares_the_rules_and_spells_out_the_rule_of_older_records(tmp_path):
    make_results = load_benchmark("make_results")

    def candidate(members, combine, ndcg):
        return {"members": [f"runs/{m}/model" for m in members], "combine": combine,
                "dev": {"P@1": 0.9, "nDCG@5": ndcg}}

    candidates = [candidate("a", "logit", .80), candidate("b", "logit", .79), candidate("ab", "logit", .83),
                  candidate("a", "sigmoid", .80), candidate("b", "sigmoid", .79), candidate("ab", "sigmoid", .82),
                  candidate("ba", "sigmoid", .81)]
    test = {"P@1": 0.91, "P@3": 0.8, "P@5": 0.7, "nDCG@5": 0.82}
    record = {"data": "d", "selected_on": "dev nDCG@5", "search": "forward", "candidates": candidates,
              "best": {"members": candidates[2]["members"], "combine": "logit", "dev": candidates[2]["dev"],
                       "test": test, "reproduce": "lcenet evaluate runs/a/model runs/b/model --combine logit"},
              "member_runs": {}, "command": "python benchmarks/best_ensemble.py", "wall_seconds": 1.0}
    (tmp_path / "new.json").write_text(json.dumps(record))
    old = json.loads(json.dumps(record))
    for c in old["candidates"]:
        del c["combine"]
    del old["best"]["combine"]
    old["candidates"] = old["candidates"][:3]
    old["best"]["reproduce"] = "lcenet evaluate runs/a/model runs/b/model --split test"
    (tmp_path / "old.json").write_text(json.dumps(old))

    new_lines = "\n".join(make_results.best_ensemble_section([tmp_path / "new.json"]))
    assert new_lines.count("| a |") == 1  # a single model scores alike under both rules: shown once
    assert "The 1 ensembles scored under both rules: dev nDCG@5 by logit minus by sigmoid: mean +1.00" in new_lines
    assert "(combined by logit)" in new_lines and "`lcenet evaluate runs/a/model runs/b/model --combine logit`" \
        in new_lines
    old_lines = "\n".join(make_results.best_ensemble_section([tmp_path / "old.json"]))
    assert "(combined by sigmoid)" in old_lines and "--split test --combine sigmoid`" in old_lines
    assert "under both rules" not in old_lines
