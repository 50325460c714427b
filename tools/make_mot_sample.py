#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Make a smaller copy of a MOTChallenge person-search folder (``<seq>/img1``, ``<seq>/gt/gt.txt``,
``<seq>/seqinfo.ini``, ``split.json``): keep every N-th frame of each sequence, re-encode the
JPEGs at a given quality, and keep only the gt rows of kept frames. This is how
``datasets/mot15-ps-sample`` was made from mot15-ps-mini:

    python tools/make_mot_sample.py --src /path/to/datasets/mot15-ps-mini \
        --dst datasets/mot15-ps-sample --every 2 --quality 80

Copy the data's licence notice into the new folder yourself (its README).
"""

import argparse
import os
import shutil

from PIL import Image

from personsearch_kd.data.datasets.checks import load_json_object
from personsearch_kd.data.datasets.mot import read_mot_gt, read_seqinfo
from personsearch_kd.engine.command_line import one_line_errors, run_cli


def make_sample(src: str, dst: str, every: int, quality: int) -> dict:
    """Returns {sequence: number of frames kept}."""
    split_file = os.path.join(src, "split.json")
    sequences = load_json_object(split_file).get("sequences")
    if not isinstance(sequences, dict) or not sequences:
        raise ValueError(f"{split_file}: sequences: expected an object naming the sequences")
    kept = {}
    for seq in sequences:
        info = read_seqinfo(os.path.join(src, seq))
        image_dir = os.path.join(src, seq, info["im_dir"])
        gt_file = os.path.join(src, seq, "gt", "gt.txt")
        # Checked first (the file named in any error); rows are then copied as they are.
        read_mot_gt(gt_file, info["width"], info["height"], os.path.join(src, seq, "seqinfo.ini"))
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(
                f"{image_dir}: missing image folder (imDir of {seq}/seqinfo.ini)"
            )
        names = sorted(n for n in os.listdir(image_dir) if n.endswith(info["ext"]))
        frames = [int(os.path.splitext(n)[0]) for n in names[::every]]
        os.makedirs(os.path.join(dst, seq, info["im_dir"]), exist_ok=True)
        os.makedirs(os.path.join(dst, seq, "gt"), exist_ok=True)
        for frame in frames:
            name = f"{frame:06d}{info['ext']}"
            Image.open(os.path.join(image_dir, name)).save(
                os.path.join(dst, seq, info["im_dir"], name), quality=quality
            )
        keep = set(frames)
        with open(gt_file) as fin, open(os.path.join(dst, seq, "gt", "gt.txt"), "w") as fout:
            fout.writelines(line for line in fin if _frame(line) in keep)
        shutil.copy(os.path.join(src, seq, "seqinfo.ini"), os.path.join(dst, seq, "seqinfo.ini"))
        kept[seq] = len(frames)
    shutil.copy(os.path.join(src, "split.json"), os.path.join(dst, "split.json"))
    return kept


def _frame(line: str):
    """The frame of a gt.txt row (checked by read_mot_gt); None for a blank or comment line."""
    row = line.split("#", 1)[0].strip()
    return int(float(row.split(",")[0])) if row else None


def main(argv=None):
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--src", required=True, help="MOTChallenge person-search folder")
    parser.add_argument("--dst", required=True, help="output folder")
    parser.add_argument("--every", type=int, default=2, help="keep every N-th frame")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of the copies")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.src, "split.json")):
        parser.error(
            f"--src {args.src}: no split.json (expected a MOTChallenge person-search folder)"
        )
    if args.every < 1:
        parser.error(f"--every {args.every}: expected an integer >= 1")
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality {args.quality}: expected a JPEG quality in [1, 100]")
    if os.path.abspath(args.dst) == os.path.abspath(args.src):
        parser.error(f"--dst {args.dst}: expected another folder than --src")
    for seq, count in make_sample(args.src, args.dst, args.every, args.quality).items():
        print(f"{seq}: {count} frames")


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
