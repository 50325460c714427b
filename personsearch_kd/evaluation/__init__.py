# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# The metrics are pure numpy; the evaluator needs detectron2.
from importlib.util import find_spec

from .metrics import average_precision, box_iou, detection_metrics, search_metrics

if find_spec("detectron2") is not None:
    from .build import build_person_search_evaluator, build_person_search_test_loader
    from .evaluator import PersonSearchEvaluator
    from .gallery_pass import IndexedGallery
    from .pair_cache import PairCache, pair_cache_key
    from .pair_search import PAIR_SCORES, pair_search, prefilter_search, restricted_search
    from .random_features import RandomFeatureEvaluator
    from .two_step import CropReIDEnsemble, GroundTruthBoxes, TwoStepSearch
