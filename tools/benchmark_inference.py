#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Gallery inference speed of person-search configs: images per second and the time of each stage
(backbone, RPN, ROI pooling, res5 for detection, res5 and embedding for re-ID, box predictor, the
rest = postprocess), with peak memory, for a batch of images at a given size, precision and
memory format; one Markdown row per config and setting. Settings alternate in one process, so a
change in the machine's load hits all alike.

    python tools/benchmark_inference.py --config-files configs/mot15/oim_R_50.yaml \
        --height 576 --width 768 --precision fp32 bf16 --iters 5 MODEL.DEVICE cpu
    python tools/benchmark_inference.py --config-files configs/mot15/oim_R_18.yaml \
        --reid-on-proposals 0 1 MODEL.WEIGHTS output/mot15_oim_R_18/model_final.pth

--seqnet-root PATH (a checkout of serend1p1ty/SeqNet) adds SeqNet, fp32 with random weights and
its default settings, as one more alternated row (personsearch_kd/utils/seqnet_reference.py);
give our configs the same settings to compare, e.g. for R50-C4:

    python tools/benchmark_inference.py --config-files configs/scratch/oim_R_50_C4_scratch.yaml \
        --height 900 --width 1500 --precision fp32 bf16 --reid-on-proposals 0 1 \
        --seqnet-root ../SeqNet --score-thresh 0 --calibrate-bn 2 --seqnet-detections 100 \
        MODEL.DEVICE cpu MODEL.RPN.PRE_NMS_TOPK_TEST 6000 MODEL.RPN.POST_NMS_TOPK_TEST 300 \
        TEST.DETECTIONS_PER_IMAGE 100
"""

import argparse

from personsearch_kd.engine.command_line import one_line_errors, require_dir, require_file, run_cli
from personsearch_kd.engine.inference_benchmark import (
    PRECISIONS,
    STAGES,
    InferenceOptions,
    measure_inference,
)


def main(argv=None):
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--config-files", nargs="+", required=True)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--batch", type=int, default=1, help="gallery images per forward")
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        # int8 calibrates on the first images it runs: random pixels would set its ranges.
        choices=[p for p in PRECISIONS if p != "int8"],
        help="each only where the device computes it natively; auto: the fastest native one "
        "(int8, calibrated on real frames: tools/benchmark_indexing.py)",
    )
    parser.add_argument("--channels-last", nargs="+", type=int, default=[0], choices=[0, 1])
    parser.add_argument("--reid-on-proposals", nargs="+", type=int, default=[0], choices=[0, 1])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument(
        "--score-thresh",
        type=float,
        help="MODEL.ROI_HEADS.SCORE_THRESH_TEST of every model, SeqNet's too (random weights "
        "score near 0.5: 0 gives every model its maximum of detections)",
    )
    parser.add_argument(
        "--calibrate-bn",
        type=int,
        default=0,
        help="random weights: set every model's BatchNorm statistics from this many forwards "
        "first, so that it finds proposals and detections as a trained model does",
    )
    parser.add_argument("--seqnet-root", help="a checkout of serend1p1ty/SeqNet: time it too")
    parser.add_argument("--seqnet-device", default="cpu")
    parser.add_argument(
        "--seqnet-detections",
        type=int,
        default=300,
        help="SeqNet's DETECTIONS_PER_IMAGE_TEST (ours: TEST.DETECTIONS_PER_IMAGE); with "
        "--score-thresh 0 both reach an equal cap, so both embed as many boxes",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE for every config")
    args = parser.parse_args(argv)
    for config_file in args.config_files:
        require_file(parser, "--config-files", config_file, "config .yaml files")
    require_dir(parser, "--seqnet-root", args.seqnet_root, "a checkout of serend1p1ty/SeqNet")
    for name in ("height", "width", "batch", "iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: expected an integer >= 1")
    options = vars(args)
    options.pop("debug")  # run_cli's, not a measurement setting
    rows = measure_inference(InferenceOptions(**options))
    print(
        "| config | re-ID on proposals | precision | channels_last | images/s | s/forward "
        "| detections/image | " + " | ".join(f"{s} %" for s in STAGES) + " | peak GB |"
    )
    print("|" + "---|" * (8 + len(STAGES)))
    for config_file, on_proposals, precision, cl, rate, median, found, shares, gb in rows:
        cells = " | ".join(f"{100 * shares.get(s, 0.0):.1f}" if shares else "-" for s in STAGES)
        print(
            f"| {config_file} | {on_proposals} | {precision} | {cl} | {rate:.2f} | {median:.3f} "
            f"| {found:.1f} | {cells} | {gb:.2f} |"
        )
    return rows


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
