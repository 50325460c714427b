#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
What the unchanged-frame gate (GALLERY_INDEX.UNCHANGED_FRAME_SHARE) costs in recall: a MOT
sequence's frames written as a video, indexed once per threshold, and per threshold the share
of frames the model ran on, the indexing time, and the recall of the ground-truth persons by the
indexed boxes (IoU >= 0.5, every frame, a gated frame counted with the boxes it took over).

    python dev/frame_gate_recall.py --sequence ../shared/data/mot15-ps-mini/PETS09-S2L1 \\
        --config-file configs/mot15/fd_R_18.yaml --override configs/index_fast.yaml \\
        --thresholds 0 0.005 0.01 0.02 0.04 -- MODEL.WEIGHTS output/mot15_fd_R_18/model_final.pth
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from detectron2.structures import Boxes, pairwise_iou

from personsearch_kd import load_config
from personsearch_kd.data.datasets.mot import read_mot_gt, read_seqinfo
from personsearch_kd.engine import PersonSearchPredictor
from personsearch_kd.search import GalleryIndex, index_gallery, indexing_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sequence_video import write_sequence_video  # noqa: E402


def recall(index: GalleryIndex, names, gt: np.ndarray) -> float:
    """Share of ground-truth boxes of the indexed frames matched at IoU >= 0.5."""
    records = index.arrays()
    found = total = 0
    for source, name in enumerate(names):
        truth = gt[gt[:, 0] == int(os.path.splitext(name)[0])][:, 2:6]
        boxes = records["box"][records["source"] == source]
        total += len(truth)
        if len(truth) and len(boxes):
            iou = pairwise_iou(Boxes(truth.astype(np.float32)), Boxes(boxes))
            found += int((iou.max(dim=1).values >= 0.5).sum())
    return found / max(total, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequence", required=True, help="a MOTChallenge sequence folder")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=[0.0, 0.005, 0.01, 0.02, 0.04],
        help="shares of changed pixels in [0, 1] (GALLERY_INDEX.UNCHANGED_FRAME_SHARE)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    args.opts = [o for o in args.opts if o != "--"]  # "--" ends --thresholds
    info = read_seqinfo(args.sequence)
    gt = read_mot_gt(os.path.join(args.sequence, "gt", "gt.txt"), info["width"], info["height"])
    print("| UNCHANGED_FRAME_SHARE | frames | model runs | s | frames/s | boxes | recall |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        video = os.path.join(scratch, "sequence.avi")
        names = write_sequence_video(args.sequence, video, 7.0)
        for threshold in args.thresholds:
            opts = list(args.opts) + ["GALLERY_INDEX.UNCHANGED_FRAME_SHARE", str(threshold)]
            cfg = indexing_config(load_config(args.config_file, opts, overrides=args.override))
            predictor = PersonSearchPredictor(cfg)
            runs = {"images": 0}
            detect_batch = predictor.detect_batch

            def counted(images, detect_batch=detect_batch, runs=runs):
                runs["images"] += len(images)
                return detect_batch(images)

            predictor.detect_batch = counted
            output = os.path.join(scratch, f"index-{threshold}")
            start = time.perf_counter()
            index = index_gallery(cfg, predictor, [video], output)
            seconds = time.perf_counter() - start
            print(
                f"| {threshold:g} | {index.num_sources} | {runs['images']} | {seconds:.1f} | "
                f"{index.num_sources / seconds:.2f} | {len(index)} | "
                f"{100 * recall(index, names, gt):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
