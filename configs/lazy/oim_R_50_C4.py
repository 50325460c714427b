# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
OIM R50-C4 as a LazyConfig model, the counterpart of configs/oim_R_50_C4.yaml for users of
detectron2's LazyConfig system: ``instantiate(LazyConfig.load(this_file).model)``.
Identity settings live in ``model.roi_heads.oim_loss`` (num_ids, queue_size, ...).
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import BasicStem, BottleneckBlock, ResNet
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNOutputLayers

from personsearch_kd.modeling import EmbeddingHead, OIMReIDLoss, OIMROIHeads, PersonSearchRCNN

model = L(PersonSearchRCNN)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
        out_features=["res4"],
        freeze_at=2,
    ),
    proposal_generator=L(RPN)(
        in_features=["res4"],
        head=L(StandardRPNHead)(in_channels=1024, num_anchors=15),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32, 64, 128, 256, 512]], aspect_ratios=[0.5, 1.0, 2.0], strides=[16], offset=0.0
        ),
        anchor_matcher=L(Matcher)(
            thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True
        ),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(12000, 6000),
        post_nms_topk=(2000, 300),
        nms_thresh=0.7,
    ),
    roi_heads=L(OIMROIHeads)(
        num_classes=1,
        batch_size_per_image=128,
        positive_fraction=0.5,
        proposal_matcher=L(Matcher)(
            thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False
        ),
        in_features=["res4"],
        pooler=L(ROIPooler)(
            output_size=14, scales=(1.0 / 16,), sampling_ratio=0, pooler_type="ROIAlignV2"
        ),
        res5=L(ResNet.make_stage)(
            block_class=BottleneckBlock,
            num_blocks=3,
            stride_per_block=[2, 1, 1],
            in_channels=1024,
            bottleneck_channels=512,
            out_channels=2048,
            norm="FrozenBN",
            stride_in_1x1=True,
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=L(ShapeSpec)(channels="${...res5.out_channels}", height=1, width=1),
            test_score_thresh=0.01,
            test_nms_thresh=0.4,
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
        ),
        reid_head=L(EmbeddingHead)(in_channels="${..res5.out_channels}", embed_dim=256),
        reid_losses=[
            L(OIMReIDLoss)(
                feat_dim=256, num_ids=5532, queue_size=5000, scalar=30.0, momentum=0.5, weight=1.0
            )
        ],
    ),
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)
