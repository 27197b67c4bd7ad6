"""Shortlist recall on real data: how many true test labels the top clusters hold, before any model is trained.

    python benchmarks/cluster_recall.py --data /work/shared/data/EURLEX57K

TF-IDF features are fitted on the train split (unigrams + bigrams, ``--max-features``); label features are
:func:`lcenet.candidates.label_features` of the train truth; clusters come from
:func:`lcenet.candidates.cluster_labels`. Clusters are scored for each test document by a training-free scorer,
the cosine of its TF-IDF row with each cluster's centroid (the normalised sum of its labels' features), and
:func:`lcenet.candidates.candidate_recall` gives recall@K of the top ``c`` clusters' labels, for several ``c``.
The same with random clusters of the same sizes shows what the clustering itself contributes. A trained cluster
scorer (the model's, issue #11) should do better than this centroid scorer; it is a floor, not a target.
Writes benchmarks/results/cluster_recall_<data>_cpu.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.preprocessing import normalize

from lcenet.candidates import LabelClusters, candidate_recall, candidates, cluster_labels, label_features
from lcenet.data import load_dataset
from lcenet.features import TfidfFeatures
from lcenet.io import atomic_write_json
from lcenet.provenance import provenance


def centroid_recall(clusters: LabelClusters, features: sp.csr_matrix, docs: sp.csr_matrix, truth: sp.csr_matrix,
                    top: list[int]) -> dict[str, float]:
    """Recall@K of the top-c clusters by cosine(document, cluster centroid), for each c in ``top``."""
    membership = sp.csr_matrix((np.ones(clusters.num_labels, dtype=np.float32),
                                (clusters.cluster_of_label, np.arange(clusters.num_labels))),
                               shape=(clusters.num_clusters, clusters.num_labels))
    centroids = normalize(membership @ features)
    scores = torch.from_numpy((docs @ centroids.T).toarray())
    tables = clusters.tables()
    size = tables.members.shape[1]
    return {f"top_{c}_K_{c * size}": candidate_recall(candidates(scores, tables, c).labels, truth) for c in top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--max-cluster-size", type=int, default=100)
    parser.add_argument("--max-features", type=int, default=100_000)
    parser.add_argument("--top", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    data = load_dataset(args.data)
    tfidf, train = TfidfFeatures.fit_transform(data.train.texts, max_features=args.max_features)
    test = tfidf.transform(data.test.texts)
    prepared = time.perf_counter()
    features = label_features(data.train.labels, train)
    clustered = time.perf_counter()
    clusters = cluster_labels(features, args.max_cluster_size, seed=args.seed)
    cluster_seconds = time.perf_counter() - clustered
    shuffled = LabelClusters(clusters.indptr, np.random.default_rng(args.seed).permutation(clusters.num_labels))
    record = {"benchmark": "cluster_recall", "command": " ".join(["python", *sys.argv]), **provenance(),
              "data": args.data.name, "labels": data.num_labels, "train_docs": len(data.train),
              "test_docs": len(data.test), "tfidf_features": tfidf.num_features,
              "label_feature_nnz": int(features.nnz), "clusters": clusters.num_clusters,
              "cluster_sizes": [int(clusters.sizes.min()), int(clusters.sizes.max())],
              "seconds": {"load_and_tfidf": prepared - started, "label_features": clustered - prepared,
                          "clustering": cluster_seconds},
              "recall_balanced_2means": centroid_recall(clusters, features, test, data.test.labels, args.top),
              "recall_random_clusters": centroid_recall(shuffled, features, test, data.test.labels, args.top)}
    output = args.output or Path(__file__).parent / "results" / f"cluster_recall_{args.data.name.lower()}_cpu.json"
    atomic_write_json(output, record)
    for name in ("recall_balanced_2means", "recall_random_clusters"):
        print(name, {key: round(value, 4) for key, value in record[name].items()})
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
