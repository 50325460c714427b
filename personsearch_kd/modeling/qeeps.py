# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
QEEPS (Munjal et al., "Query-guided End-to-End Person Search", CVPR 2019) on top of
:class:`PersonSearchRCNN`: the backbone runs over a query image and a gallery image as a Siamese
pair whose residual blocks exchange QSSE excitations; a query-guided RPN (QRPN), on gallery
features re-weighted by the query person's pooled features, adds proposals on the query's person;
QSimNet scores each gallery proposal against the query's ID feature. The blocks and what in them
is reconstructed rather than confirmed: :mod:`personsearch_kd.layers.qeeps`.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.proposal_generator import RPN
from detectron2.structures import Boxes, Instances, pairwise_iou

from ..layers.qeeps import QSSE, QuerySimilarityNet, query_proposal_labels
from .meta_arch import PersonSearchRCNN, as_fp32
from .record import recording

__all__ = ["QEEPS", "SiameseQSSE"]


def _residual_branch(block: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(residual branch, shortcut) of a detectron2 ResNet block: its forward before the sum."""
    if isinstance(block, BottleneckBlock):
        out = block.conv3(F.relu(block.conv2(F.relu(block.conv1(x)))))
    elif isinstance(block, BasicBlock):
        out = block.conv2(F.relu(block.conv1(x)))
    else:
        raise ValueError(f"QSSE: expected Basic or Bottleneck ResNet blocks, got {type(block)}")
    return out, x if block.shortcut is None else block.shortcut(x)


class SiameseQSSE(nn.Module):
    """
    One :class:`QSSE` per residual block of the chosen stages of a detectron2 ResNet; it runs that
    ResNet (held by the caller, so its weights are not registered twice) over query and gallery.

    Args:
        backbone: the ResNet, to size the blocks.
        stages: names of the stages whose blocks exchange excitations, e.g. ["res3", "res4"].
        reduction: the QSSE bottleneck ratio.
    """

    def __init__(self, backbone: nn.Module, stages: List[str], reduction: int = 16):
        super().__init__()
        unknown = set(stages) - set(backbone.stage_names)
        if unknown:
            raise ValueError(
                f"MODEL.QEEPS.QSSE_STAGES: {sorted(unknown)} are not stages of the backbone "
                f"{list(backbone.stage_names)}"
            )
        self.blocks = nn.ModuleDict()
        for name, stage in zip(backbone.stage_names, backbone.stages):
            if name in stages:
                for i, block in enumerate(stage):
                    self.blocks[f"{name}_{i}"] = QSSE(block.out_channels, reduction)

    def forward(self, backbone: nn.Module, query: torch.Tensor, gallery: torch.Tensor):
        """
        Args:
            query, gallery: (N, 3, Hq, Wq), (N, 3, Hg, Wg) normalised images of N pairs.
        Returns:
            (query features, gallery features): dicts of the backbone's output features.
        """
        q, g = backbone.stem(query), backbone.stem(gallery)
        q_out, g_out, wanted = {}, {}, backbone.output_shape()
        for name, stage in zip(backbone.stage_names, backbone.stages):
            for i, block in enumerate(stage):
                qsse = self.blocks[f"{name}_{i}"] if f"{name}_{i}" in self.blocks else None
                if qsse is None:  # a stage without QSSE: the block itself
                    q, g = block(q), block(g)
                    continue
                (q_res, q_short), (g_res, g_short) = (_residual_branch(block, x) for x in (q, g))
                q_res, g_res = qsse(q_res, g_res)
                q, g = F.relu(q_res + q_short), F.relu(g_res + g_short)
            if name in wanted:
                q_out[name], g_out[name] = q, g
        return q_out, g_out


@META_ARCH_REGISTRY.register()
class QEEPS(PersonSearchRCNN):
    """
    Training inputs: pairs ``{"query": mapped image, "gallery": mapped image, "person_id": int}``
    (:func:`personsearch_kd.data.build_query_pair_train_loader`). Losses: the RPN's, the QRPN's
    (``loss_qrpn_cls``, ``loss_qrpn_loc``: anchors on the query's person in the gallery are the
    only positives), the box head's and the re-ID losses on the gallery image, and ``loss_qsim``
    (QSimNet's cross-entropy on the sampled gallery ROIs: 1 where IoU >= MODEL.QEEPS.SIM_IOU with
    the query's person).

    Inference: :meth:`search_pair`. A checkpoint of :class:`PersonSearchRCNN` (the paper starts
    from OIM) initialises everything but the query-guidance blocks; the QRPN starts as a copy of
    the RPN.
    """

    @configurable
    def __init__(self, *, qsse: SiameseQSSE, qrpn: nn.Module, qsim_iou: float, **kwargs):
        super().__init__(**kwargs)
        self.qsse = qsse
        self.qrpn = qrpn
        channels = self.backbone.output_shape()[self.roi_heads.in_features[0]].channels
        self.query_modulation = nn.Sequential(
            nn.Linear(channels, channels // 16), nn.ReLU(), nn.Linear(channels // 16, channels)
        )
        self.qsimnet = QuerySimilarityNet(self.roi_heads.reid_head.norm.num_features)
        self.qsim_iou = qsim_iou
        # Start close to the identity (excitations about 0.95), so the initialising OIM model's
        # features survive the first steps.
        for layer in [q.excite for q in self.qsse.blocks.values()] + [self.query_modulation[2]]:
            nn.init.zeros_(layer.weight)
            nn.init.constant_(layer.bias, 3.0)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        qeeps = cfg.MODEL.QEEPS
        ret["qsse"] = SiameseQSSE(ret["backbone"], list(qeeps.QSSE_STAGES), qeeps.QSSE_REDUCTION)
        # A plain RPN: the student's record holds the RPN's predictions, not the QRPN's.
        ret["qrpn"] = RPN(cfg, ret["backbone"].output_shape())
        ret["qsim_iou"] = qeeps.SIM_IOU
        return ret

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if not any(k.startswith(prefix + "qrpn.") for k in state_dict):
            for key in [k for k in state_dict if k.startswith(prefix + "proposal_generator.")]:
                state_dict[prefix + "qrpn." + key[len(prefix + "proposal_generator.") :]] = (
                    state_dict[key].clone()
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, batched_inputs: List[Dict]):
        """Training: the losses of query-gallery pairs (see the class docstring)."""
        if self.training:
            return self._training_forward(batched_inputs)
        return super().forward(batched_inputs)

    def _inference(self, batched_inputs):
        raise NotImplementedError(
            "QEEPS searches query-gallery pairs: call search_pair(queries, galleries); its "
            "evaluation runs every pair (personsearch_kd.evaluation.pair_search, "
            "tools/evaluate_pairs.py, train_net.py's test)"
        )

    def _pair_features(self, queries: List[Dict], galleries: List[Dict]):
        q_images, g_images = self.preprocess_image(queries), self.preprocess_image(galleries)
        q_feats, g_feats = self.qsse(self.backbone, q_images.tensor, g_images.tensor)
        return q_images, g_images, q_feats, g_feats

    def _pooled(self, features: Dict[str, torch.Tensor], boxes: List[Boxes]) -> torch.Tensor:
        heads = self.roi_heads
        return heads.pooler([features[f] for f in heads.in_features], boxes)

    def _embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """(R, D) ID features of pooled ROI features (one re-ID head for query and gallery)."""
        heads = self.roi_heads
        return heads.reid_head(heads.reid_branch_res5(pooled)).embeddings

    def _modulated(self, q_feats, g_feats, query_boxes: List[Boxes]) -> Dict[str, torch.Tensor]:
        """Gallery features re-weighted channel-wise by each query person's pooled features."""
        name = self.roi_heads.in_features[0]
        query = self._pooled(q_feats, query_boxes).mean(dim=(2, 3))  # (N, C)
        weights = torch.sigmoid(self.query_modulation(query))[:, :, None, None]
        return {name: g_feats[name] * weights}

    def _training_forward(self, batched_inputs: List[Dict]):
        queries = [x["query"] for x in batched_inputs]
        galleries = [x["gallery"] for x in batched_inputs]
        q_images, g_images, q_feats, g_feats = self._pair_features(queries, galleries)
        pids = [int(x["person_id"]) for x in batched_inputs]
        q_gt = [x["instances"].to(self.device) for x in queries]
        g_gt = [x["instances"].to(self.device) for x in galleries]
        query_boxes = [gt.gt_boxes[gt.gt_pids == pid][:1] for gt, pid in zip(q_gt, pids)]
        person_in_gallery = [gt[gt.gt_pids == pid][:1] for gt, pid in zip(g_gt, pids)]

        with recording(self) as record:
            # The record of a distilled QEEPS is of the gallery images.
            record["batched_inputs"] = galleries
            proposals, losses = self.proposal_generator(g_images, g_feats, g_gt)
            modulated = self._modulated(q_feats, g_feats, query_boxes)
            q_proposals, qrpn_losses = self.qrpn(g_images, modulated, person_in_gallery)
            losses.update({k.replace("loss_rpn", "loss_qrpn"): v for k, v in qrpn_losses.items()})
            proposals = [Instances.cat([p, q]) for p, q in zip(proposals, q_proposals)]
            _, detector_losses = self.roi_heads(g_images, g_feats, proposals, g_gt)
            losses.update(detector_losses)
            sampled_rois = record["rois"]

        # QSimNet on every sampled ROI; the query embedded in the same pass (BatchNorm sees all).
        rois = [r.proposal_boxes for r in sampled_rois]
        pooled = cat([self._pooled(q_feats, query_boxes), self._pooled(g_feats, rois)])
        embeddings = self._embed_pooled(pooled)
        query_feats, roi_feats = embeddings[: len(pids)], embeddings[len(pids) :]
        counts = torch.tensor([len(r) for r in rois], device=self.device)
        labels = cat(
            [
                query_proposal_labels(pairwise_iou(r, p.gt_boxes)[:, 0], self.qsim_iou)
                for r, p in zip(rois, person_in_gallery)
            ]
        )
        logits = self.qsimnet(query_feats.repeat_interleave(counts, dim=0), roi_feats)
        losses["loss_qsim"] = F.cross_entropy(logits, labels)
        return losses

    @torch.no_grad()
    def search_pair(self, queries: List[Dict], galleries: List[Dict]) -> List[Dict]:
        """
        Search each query person in its gallery image, conditioned on the pair.

        Args:
            queries: N inputs with ``image`` and ``query_boxes`` (1, 4) XYXY in original-image
                coordinates (and ``height``/``width``), as for query mode.
            galleries: N gallery inputs; pair i is (queries[i], galleries[i]).
        Returns:
            per pair ``{"instances": Instances, "query_feat": (D,)}``: the gallery detections
            (original size) with ``reid_feats`` (R, D) and ``query_similarity`` (R,), QSimNet's
            probability that a detection is the query's person; fp32 whatever
            TEST.PERSON_SEARCH.PRECISION the passes run at (as the gallery inference's).
        """
        assert not self.training
        with self.inference_autocast():
            results = self._search_pair(queries, galleries)
        for result in results:
            as_fp32(result["instances"])
        return results

    def _search_pair(self, queries: List[Dict], galleries: List[Dict]) -> List[Dict]:
        q_images, g_images, q_feats, g_feats = self._pair_features(queries, galleries)
        query_boxes = [
            self._given_boxes(x, "query_boxes", size)[1][:1]
            for x, size in zip(queries, q_images.image_sizes)
        ]
        proposals, _ = self.proposal_generator(g_images, g_feats)
        modulated = self._modulated(q_feats, g_feats, query_boxes)
        q_proposals, _ = self.qrpn(g_images, modulated)
        proposals = [Instances.cat([p, q]) for p, q in zip(proposals, q_proposals)]
        detections, _ = self.roi_heads(g_images, g_feats, proposals)
        query_feats = self._embed_pooled(self._pooled(q_feats, query_boxes))
        results = []
        for det, query, x, size in zip(detections, query_feats, galleries, g_images.image_sizes):
            det.query_similarity = (
                self.qsimnet.similarity(query, det.reid_feats) if len(det) else det.scores[:0]
            )
            height, width = x.get("height", size[0]), x.get("width", size[1])
            results.append(
                {"instances": detector_postprocess(det, height, width), "query_feat": query}
            )
        return results
