import gzip
import json

import pytest

from lcenet.errors import DataError
from lcenet.predict import read_label_names


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
