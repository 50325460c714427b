# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
import torch

from detectron2.evaluation import DatasetEvaluator

__all__ = ["RandomFeatureEvaluator"]


class RandomFeatureEvaluator(DatasetEvaluator):
    """
    The chance baseline of a person-search model: wraps a :class:`PersonSearchEvaluator` and feeds
    it the model's own detections with every ``reid_feats`` row replaced by a random unit vector.
    Detection metrics are unchanged; search metrics show what the detector alone scores, so the
    gap to the real evaluation is what the ID embedding brings. Runs in the same inference pass
    (``DatasetEvaluators([evaluator, RandomFeatureEvaluator(other_evaluator)])``); results are
    under the key ``"person_search_random_features"``.
    """

    def __init__(self, evaluator: DatasetEvaluator, seed: int = 0):
        self._evaluator = evaluator
        self._seed = seed
        self.reset()

    def reset(self):
        self._evaluator.reset()
        self._generator = torch.Generator().manual_seed(self._seed)

    def process(self, inputs, outputs):
        randomized = []
        for out in outputs:
            inst = out["instances"].to("cpu")
            feats = torch.randn(inst.reid_feats.shape, generator=self._generator)
            inst.reid_feats = torch.nn.functional.normalize(feats, dim=1)
            randomized.append(dict(out, instances=inst))
        self._evaluator.process(inputs, randomized)

    def evaluate(self):
        results = self._evaluator.evaluate()
        return {"person_search_random_features": results["person_search"]} if results else {}
