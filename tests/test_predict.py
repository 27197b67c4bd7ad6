import gzip
import json
import math

import pytest

from lcenet.errors import DataError
from lcenet.predict import Predictor, read_label_names


def test_label_names_from_tsv_and_eurovoc_style_json(tmp_path):
    tsv = tmp_path / "names.tsv"
    tsv.write_text("1025\tfisheries policy\n\n539\tmilk\n")
    assert read_label_names(tsv) == {"1025": "fisheries policy", "539": "milk"}
    concepts = tmp_path / "concepts.json.gz"  # the layout of EURLEX57K's eurovoc_concepts.json.gz
    with gzip.open(concepts, "wt", encoding="utf-8") as handle:
        json.dump({"1025": {"concept_id": "1025", "label": "fisheries policy"}, "539": "milk"}, handle)
    assert read_label_names(concepts) == {"1025": "fisheries policy", "539": "milk"}


@pytest.mark.parametrize("name, content, where", [("bad.tsv", "1025 no tab\n", "bad.tsv:1"),
                                                  ("bad.json", "{\n  nope\n}", "bad.json:2"),
                                                  ("list.json", "[1, 2]", "list.json")])
def test_malformed_label_name_files(tmp_path, name, content, where):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=where):
        read_label_names(path)


def combined(p: float, q: float, combine: str) -> float:
    """Two members' scores of a label, combined as lcenet.ensemble does."""
    if combine == "sigmoid":
        return (p + q) / 2
    mean_logit = (math.log(p / (1 - p)) + math.log(q / (1 - q))) / 2
    return 1 / (1 + math.exp(-mean_logit))


def test_an_ensemble_of_two_families_combines_their_scores_and_refuses_other_labels(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from conftest import tiny_config, write_tiny_dataset
    from lcenet.cli import app
    from lcenet.pipeline import run_training

    monkeypatch.setenv("LCENET_CACHE", str(tmp_path / "cache"))
    data = write_tiny_dataset(tmp_path / "data")
    sparse = tiny_config("sparse", epochs=3, lr=2e-2)
    sparse.model_args, sparse.data.tfidf_min_df = {"hidden_dims": [16]}, 1
    run_training(tiny_config(epochs=3, lr=2e-2), data, tmp_path / "cnn", progress=False)
    run_training(sparse, data, tmp_path / "tfidf", progress=False)
    dirs = [tmp_path / "cnn" / "model", tmp_path / "tfidf" / "model"]
    texts = ["milk cheese cow", "fishing quota sea tax", ""]
    one, two = (Predictor.load(d, device="cpu").predict(texts, k=30) for d in dirs)  # every label, with scores
    for combine in ("logit", "sigmoid"):
        both = Predictor.load(dirs, device="cpu", combine=combine).predict(texts, k=3)
        for a, b, ensemble in zip(one, two, both):
            scores = {label: combined(a["scores"][a["labels"].index(label)], b["scores"][b["labels"].index(label)],
                                      combine) for label in a["labels"]}
            expected = sorted(scores.items(), key=lambda item: -item[1])[:3]
            assert ensemble["labels"] == [label for label, _ in expected], combine
            assert ensemble["scores"] == pytest.approx([score for _, score in expected], abs=2e-6), combine
    runner = CliRunner()
    for combine in ("logit", "sigmoid"):
        result = runner.invoke(app, ["evaluate", *map(str, dirs), "--data", str(data), "--device", "cpu",
                                     "--combine", combine])
        assert result.exit_code == 0, result.output
        assert 0 <= json.loads(result.stdout)["P@1"] <= 1
    result = runner.invoke(app, ["predict", *map(str, dirs), "--combine", "max"], input="milk\n")
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        "error: an ensemble combines by logit or sigmoid (got 'max')"]
    assert result.stdout == ""

    other = write_tiny_dataset(tmp_path / "other", seed=3)
    (other / "train_labels.txt").write_text((other / "train_labels.txt").read_text().replace("milk", "dairy"))
    run_training(tiny_config(epochs=1), other, tmp_path / "other_run", progress=False)
    result = runner.invoke(app, ["predict", str(dirs[0]), str(tmp_path / "other_run" / "model")], input="milk\n")
    assert result.exit_code == 2 and "different label vocabularies" in result.stderr
