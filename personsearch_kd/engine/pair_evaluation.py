# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The search evaluation of a query-guided model (tools/evaluate_pairs.py) over several test sets,
with its optional query-agnostic baselines searched on the same gallery images.
"""

from typing import Dict, Optional, Sequence, Tuple

from detectron2.data import DatasetMapper

from ..evaluation import PairCache, pair_cache_key, pair_search, prefilter_search, restricted_search

__all__ = ["BASELINE", "PREFILTER", "evaluate_query_guided"]

# The row of the pre-filter's own search of the images it keeps (top_n): the baseline that the
# restricted pair evaluation compares with, the same candidates without the query's guidance.
PREFILTER = "prefilter (query-agnostic)"
# The row of a second query-agnostic model's search of the same images (all without top_n).
BASELINE = "baseline (query-agnostic)"


def evaluate_query_guided(
    cfg,
    model,
    weights: str,
    datasets: Sequence[str],
    scores: Sequence[str] = ("query_similarity",),
    batch_size: int = 4,
    cache_dir: Optional[str] = None,
    top_n: int = 0,
    prefilter: Optional[Tuple] = None,
    baseline: Optional[Tuple] = None,
) -> Dict[Tuple[str, str], Dict]:
    """
    Args:
        cfg, model, weights: the query-guided model, its config and checkpoint (``weights``
            names the pair cache's model).
        datasets: registered test sets.
        scores: pair scores to rank by (:data:`PAIR_SCORES`), all from the same pair passes.
        cache_dir: keep the pair results there as they come; a rerun resumes from them.
        top_n: run only the gallery images that ``prefilter`` ranks first per query (0: all).
        prefilter, baseline: ``(cfg, model)`` of query-agnostic models; ``baseline`` is searched
            on the images of each query's pairs.

    Returns:
        ``{(dataset, score): pair_search's results}``, with ``(dataset, PREFILTER)`` where
        ``top_n`` and ``(dataset, BASELINE)`` where ``baseline`` is given; on the main process
        (the others' results are empty).
    """
    mapper = DatasetMapper(cfg, False)
    # The evaluator's score thresholds: (search, detection AP).
    search = cfg.TEST.PERSON_SEARCH
    thresh = (search.SEARCH_SCORE_THRESH, search.DETECTION_SCORE_THRESH)
    key = pair_cache_key(cfg, weights, batch_size) if cache_dir else None
    results = {}
    for dataset in datasets:
        cache = PairCache(cache_dir, dataset, key) if cache_dir else None
        top = None
        if top_n:
            pre_cfg, pre_model = prefilter
            top, results[(dataset, PREFILTER)] = prefilter_search(
                pre_model, dataset, DatasetMapper(pre_cfg, False), top_n, *thresh
            )
        if baseline:
            base_cfg, base_model = baseline
            results[(dataset, BASELINE)] = restricted_search(
                base_model, dataset, DatasetMapper(base_cfg, False), top, *thresh
            )
        found = pair_search(
            model, dataset, mapper, scores, batch_size, thresh[0], top, thresh[1], cache
        )
        results.update({(dataset, score): r for score, r in found.items()})
    return results
