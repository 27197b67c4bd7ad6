"""Pick the best single model or ensemble of trained models on dev, then score that one choice on test.

    python benchmarks/best_ensemble.py --data ../shared/data/EURLEX57K --max-size 3 \
        --models runs/a/model runs/b/model runs/c/model --output benchmarks/results/best_ensemble_cpu.json

Ensembles are scored on the dev split as ``lcenet evaluate`` scores them (an ensemble combines the members'
scores over the union of their top labels; lcenet.ensemble), from one pass of every model over dev: each model's
dev outputs are kept (dense models: N x L floats each) and every ensemble is formed from them (a test checks
that a subset scores as ``lcenet evaluate`` scores it). ``--search exhaustive`` scores every non-empty subset of
``--models`` with at most ``--max-size`` members (2^n of them: minutes for 9 models, hours for 15);
``--search forward`` is greedy forward selection: the best single model on dev, then at each round the model
whose addition makes the best ensemble, until ``--max-size`` members or no addition raises dev nDCG@5 (at most
n x max-size ensembles scored). ``--combine logit sigmoid`` runs the search under each combining rule (the
sigmoid of the members' mean logit, or their mean sigmoid score), so the rule is chosen on dev as well. The
ensemble with the best dev nDCG@5 (ties: P@1, then fewer members, then the first rule given) is the only one
scored on test, by ``lcenet evaluate``'s own path. The record keeps every dev score, the choice, its
test metrics, and the command that reproduces the test number (``lcenet evaluate ... --split test``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lcenet import metrics
from lcenet.ensemble import COMBINE_RULES, DEFAULT_COMBINE, average_over_union
from lcenet.inference import autocast
from lcenet.io import atomic_write_json
from lcenet.output import ModelOutput
from lcenet.pipeline import evaluate_directory, feature_caches, labelled_split, load_models
from lcenet.provenance import provenance
from lcenet.text import default_cache_dir


def run_record(model_dir: Path) -> dict:
    """The experiment's record of the run that wrote ``model_dir`` (it keeps the command), else its metrics.json."""
    run = model_dir.parent
    record = run.parent.parent / "records" / f"{run.name}.json"
    return json.loads((record if record.is_file() else run / "metrics.json").read_text())


Subset = tuple[int, ...]  # members: positions in the list of model directories


@torch.no_grad()
def split_outputs(model_dirs: list[Path], data_dir: Path, split: str, device: str
                  ) -> tuple[list[list[ModelOutput]], list, np.ndarray | None]:
    """Every model's output on every batch of ``split`` (``outputs[batch][model]``, on the CPU), its true labels
    and inverse propensities, from one pass of each model over the split."""
    models = load_models(model_dirs, device)
    first = models[0]
    texts, truth, inv_propensity = labelled_split(first, data_dir, split)
    inputs = [m.encoder.encode(texts) for m in models]
    batch_size, outputs = first.trained["eval_batch_size"], []
    with feature_caches(models, default_cache_dir()):
        for start in range(0, len(texts), batch_size):
            rows = np.arange(start, min(start + batch_size, len(texts)))
            with autocast(first.device, first.trained["bf16"]):
                scored = [m.model.score(*store.batch(rows, first.device)) for m, store in zip(models, inputs)]
            outputs.append([ModelOutput(o.logits.float().cpu(), None if o.label_ids is None else o.label_ids.cpu())
                            for o in scored])
    return outputs, truth, inv_propensity


def ensemble_metrics(outputs: list[list[ModelOutput]], members: Subset, truth, inv_propensity,
                     combine: str = DEFAULT_COMBINE) -> dict:
    """The metrics of the ensemble of ``members`` (combined by ``combine``) from the models' kept outputs."""
    k = max(metrics.DEFAULT_KS)
    top = [average_over_union([batch[i] for i in members], k, combine=combine)[0].numpy() for batch in outputs]
    return metrics.evaluate(np.concatenate(top), truth, inv_propensity=inv_propensity)


def subset_scores(model_dirs: list[Path], subsets: list[Subset], data_dir: Path, split: str, device: str,
                  combine: str = DEFAULT_COMBINE) -> list[dict]:
    """The metrics of every subset's ensemble on ``split``, as ``lcenet evaluate --combine`` computes them."""
    outputs, truth, inv_propensity = split_outputs(model_dirs, data_dir, split, device)
    return [ensemble_metrics(outputs, members, truth, inv_propensity, combine) for members in subsets]


def rank(members: Subset, scores: dict) -> tuple:
    """The order ensembles are chosen in: dev nDCG@5, then P@1, then fewer members."""
    return scores["nDCG@5"], scores["P@1"], -len(members)


def forward_selection(score: Callable[[Subset], dict], count: int, max_size: int) -> dict[Subset, dict]:
    """Greedy forward selection over ``count`` models: every ensemble it scored (``score(members)``), starting
    from each single model; each round adds the model that makes the best ensemble with those chosen, and the
    search stops at ``max_size`` members or when the best addition ranks no higher than the ensemble before it."""
    scored: dict[Subset, dict] = {}
    chosen: Subset = ()
    while len(chosen) < max_size:
        tries = [tuple(sorted((*chosen, i))) for i in range(count) if i not in chosen]
        for members in tries:
            scored[members] = score(members)
        pick = max(tries, key=lambda members: rank(members, scored[members]))
        if chosen and rank(pick, scored[pick]) <= rank(chosen, scored[chosen]):
            break
        chosen = pick
    return scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="saved model directories")
    parser.add_argument("--max-size", type=int, default=3)
    parser.add_argument("--search", choices=("exhaustive", "forward"), default="exhaustive",
                        help="every subset, or greedy forward selection (for many models)")
    parser.add_argument("--combine", choices=COMBINE_RULES, nargs="+", default=[DEFAULT_COMBINE],
                        help="the combining rules to search (lcenet.ensemble); the best on dev is chosen")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    outputs, truth, inv_propensity = split_outputs(args.models, args.data, "dev", args.device)

    max_size = min(args.max_size, len(args.models))
    candidates = []
    for combine in dict.fromkeys(args.combine):
        def score(members: Subset, combine: str = combine) -> dict:
            dev = ensemble_metrics(outputs, members, truth, inv_propensity, combine)
            print(f"{combine}: dev nDCG@5 {100 * dev['nDCG@5']:.2f} P@1 {100 * dev['P@1']:.2f}: "
                  f"{' + '.join(str(args.models[i]) for i in members)}", flush=True)
            return dev

        if args.search == "forward":
            scored = forward_selection(score, len(args.models), max_size)
        else:
            scored = {members: score(members) for size in range(1, max_size + 1)
                      for members in itertools.combinations(range(len(args.models)), size)}
        candidates += [{"members": [str(args.models[i]) for i in members], "combine": combine, "dev": dev}
                       for members, dev in scored.items()]
    # max keeps the first of equals: on a full tie the rule given first wins
    best = max(candidates, key=lambda c: rank(c["members"], c["dev"]))
    test = evaluate_directory(best["members"], args.data, "test", args.device, combine=best["combine"])
    members = {m: run_record(Path(m)) for m in best["members"]}
    record = {"benchmark": "best_ensemble", "command": " ".join(["python", *sys.argv]), **provenance(),
              "data": str(args.data), "selected_on": "dev nDCG@5", "search": args.search, "candidates": candidates,
              "best": {"members": best["members"], "combine": best["combine"], "dev": best["dev"], "test": test,
                       "reproduce": f"lcenet evaluate {' '.join(best['members'])} --data {args.data} --split test "
                                    f"--combine {best['combine']}"},
              "member_runs": {m: {"command": r.get("command"), "test_P@1": r["test"]["P@1"],
                                  "test_nDCG@5": r["test"]["nDCG@5"], "converged": r.get("converged"),
                                  "git_commit": r.get("git_commit")} for m, r in members.items()},
              "wall_seconds": time.perf_counter() - started}
    atomic_write_json(args.output, record)
    print(f"best on dev: {' + '.join(best['members'])} ({best['combine']}); test P@1 {100 * test['P@1']:.2f} "
          f"nDCG@5 {100 * test['nDCG@5']:.2f}\nwrote {args.output}")


if __name__ == "__main__":
    main()
