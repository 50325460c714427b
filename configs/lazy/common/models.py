# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The models of personsearch_kd as LazyConfig trees, one function per kind. Each returns a plain
``L(...)`` tree of the classes the yacs builders construct (detectron2's ResNet, RPN, matchers,
poolers; this package's OIMROIHeads, EmbeddingHead, re-ID losses, CropReIDNet, QEEPS), with the
values of configs/Base-OIM-C4.yaml and Base-ReID-Crop.yaml: the method configs under
configs/lazy/mot15/ call them and then edit fields, as any user can (``model.roi_heads.reid_head
.embed_dim = 128``). tests/test_lazy_configs.py checks that each method's tree builds the same
network as its yacs config.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import BasicStem, BottleneckBlock, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNOutputLayers

from personsearch_kd.layers.crops import parse_view
from personsearch_kd.modeling import EmbeddingHead, OIMROIHeads, PersonSearchRCNN
from personsearch_kd.modeling.crop_reid import CropReIDNet
from personsearch_kd.modeling.reid_losses import (
    IdentityCrossEntropyLoss,
    OIMReIDLoss,
    TripletReIDLoss,
)
from personsearch_kd.modeling.rpn import RecordingRPN

# ImageNet statistics as torchvision's R-18 (RGB) and detectron2's MSRA R-50 (BGR, caffe) use them.
RGB_MEAN, RGB_STD = [123.675, 116.280, 103.530], [58.395, 57.120, 57.375]
BGR_MEAN, BGR_STD = [103.530, 116.280, 123.675], [1.0, 1.0, 1.0]


def _channels(depth: int):
    """(res4 channels, res5 channels) of a detectron2 ResNet of ``depth`` (res2 64 / 256 wide)."""
    return (256, 512) if depth in (18, 34) else (1024, 2048)


def res5_stage(depth: int, norm: str):
    """
    res5 as the box head of a C4 model (``build_res5_for_depth``): BasicBlocks for R18/34,
    Bottlenecks for R50+, stride 2 in its first block.
    """
    res4, res5 = _channels(depth)
    if depth in (18, 34):
        blocks = {18: 2, 34: 3}[depth]
        return L(ResNet.make_stage)(
            block_class=BasicBlock,
            num_blocks=blocks,
            stride_per_block=[2] + [1] * (blocks - 1),
            in_channels=res4,
            out_channels=res5,
            norm=norm,
        )
    return L(ResNet.make_stage)(
        block_class=BottleneckBlock,
        num_blocks=3,
        stride_per_block=[2, 1, 1],
        in_channels=res4,
        bottleneck_channels=res5 // 4,
        out_channels=res5,
        norm=norm,
        stride_in_1x1=True,
    )


def resnet_c4(depth: int, norm: str, freeze_at: int, out_features=("res4",)):
    """detectron2's ResNet up to ``out_features`` (res2-res4 for C4), its stem 64 wide."""
    return L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm=norm),
        stages=L(ResNet.make_default_stages)(
            depth=depth, norm=norm, **({} if depth in (18, 34) else {"stride_in_1x1": True})
        ),
        out_features=list(out_features),
        freeze_at=freeze_at,
    )


def reid_losses(names, num_ids: int, embed_dim: int = 256):
    """
    The re-ID losses of MODEL.REID.LOSSES, by name, with MODEL.OIM / MODEL.REID defaults:
    "OIMReIDLoss", "IdentityCrossEntropyLoss", "TripletReIDLoss".
    """
    made = {
        "OIMReIDLoss": lambda: L(OIMReIDLoss)(
            feat_dim=embed_dim,
            num_ids=num_ids,
            queue_size=5000,
            scalar=30.0,
            momentum=0.5,
            freeze_lut=False,
            weight=1.0,
        ),
        "IdentityCrossEntropyLoss": lambda: L(IdentityCrossEntropyLoss)(
            weight=1.0, label_smoothing=0.1
        ),
        "TripletReIDLoss": lambda: L(TripletReIDLoss)(weight=1.0, margin=0.3),
    }
    return [made[name]() for name in names]


def oim_c4(
    depth: int = 50,
    norm: str = "FrozenBN",
    freeze_at: int = 2,
    num_ids: int = 5532,
    losses=("OIMReIDLoss",),
    rgb: bool = False,
):
    """
    OIM on ResNet-``depth`` C4 (configs/Base-OIM-C4.yaml with oim_R_<depth>_C4.yaml): a
    PersonSearchRCNN whose RPN records its predictions (RecordingRPN, for KD_det), OIMROIHeads
    with res5 as box head, one class, an EmbeddingHead (identity logits when the losses have
    "IdentityCrossEntropyLoss") and the re-ID ``losses``. ``rgb``: torchvision's RGB
    normalisation (R-18) instead of detectron2's caffe BGR one (R-50).
    """
    res4, res5 = _channels(depth)
    embed_dim = 256
    return L(PersonSearchRCNN)(
        backbone=resnet_c4(depth, norm, freeze_at),
        proposal_generator=L(RecordingRPN)(
            in_features=["res4"],
            head=L(StandardRPNHead)(in_channels=res4, num_anchors=15),
            anchor_generator=L(DefaultAnchorGenerator)(
                sizes=[[32, 64, 128, 256, 512]],
                aspect_ratios=[0.5, 1.0, 2.0],
                strides=[16],
                offset=0.0,
            ),
            anchor_matcher=L(Matcher)(
                thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True
            ),
            box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
            batch_size_per_image=256,
            positive_fraction=0.5,
            # (training, test)
            pre_nms_topk=(12000, 6000),
            post_nms_topk=(2000, 300),
            nms_thresh=0.7,
            smooth_l1_beta=0.0,
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
            res5=res5_stage(depth, norm),
            box_predictor=L(FastRCNNOutputLayers)(
                input_shape=L(ShapeSpec)(channels=res5, height=1, width=1),
                box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
                num_classes="${..num_classes}",
                smooth_l1_beta=0.0,
                loss_weight={"loss_box_reg": 1.0},
                # Low for detection AP; the search applies its own 0.5. NMS as in the literature.
                test_score_thresh=0.01,
                test_nms_thresh=0.4,
            ),
            reid_head=L(EmbeddingHead)(
                in_channels=res5,
                embed_dim=embed_dim,
                num_classes=num_ids if "IdentityCrossEntropyLoss" in losses else 0,
            ),
            reid_losses=reid_losses(losses, num_ids, embed_dim),
            # MODEL.REID.SEPARATE_RES5: L(ResNet.make_stage)(...) as res5 above.
            reid_res5=None,
            reid_on_proposals=False,
        ),
        pixel_mean=RGB_MEAN if rgb else BGR_MEAN,
        pixel_std=RGB_STD if rgb else BGR_STD,
        input_format="RGB" if rgb else "BGR",
        inference_precision="fp32",
    )


def crop_reid_net(depth: int = 18, num_ids: int = 13, crop_size=(256, 128), view="holistic"):
    """
    A re-ID network on person crops (configs/Base-ReID-Crop.yaml, from scratch): the whole
    ResNet-``depth`` with BatchNorm, pooled res5 -> EmbeddingHead (BNNeck) with identity
    cross-entropy (label smoothing 0.1) and batch-hard triplet, torchvision's RGB normalisation.
    ``view``: the rows of the box the crops show (INPUT.REID_CROP.VIEW).
    """
    _, res5 = _channels(depth)
    return L(CropReIDNet)(
        backbone=resnet_c4(depth, "BN", 0, out_features=("res5",)),
        in_feature="res5",
        reid_head=L(EmbeddingHead)(in_channels=res5, embed_dim=256, num_classes=num_ids),
        reid_losses=reid_losses(("IdentityCrossEntropyLoss", "TripletReIDLoss"), num_ids),
        pixel_mean=RGB_MEAN,
        pixel_std=RGB_STD,
        input_format="RGB",
        crop_size=list(crop_size),
        view=L(parse_view)(view=view),
    )
