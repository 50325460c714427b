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
import json
import os
import shutil

from PIL import Image

from personsearch_kd.data.datasets.mot import read_seqinfo
from personsearch_kd.engine.command_line import one_line_errors


def make_sample(src: str, dst: str, every: int, quality: int) -> dict:
    """Returns {sequence: number of frames kept}."""
    with open(os.path.join(src, "split.json")) as f:
        sequences = json.load(f)["sequences"]
    kept = {}
    for seq in sequences:
        info = read_seqinfo(os.path.join(src, seq))
        image_dir = os.path.join(src, seq, info["im_dir"])
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
        with open(os.path.join(src, seq, "gt", "gt.txt")) as fin, open(
            os.path.join(dst, seq, "gt", "gt.txt"), "w"
        ) as fout:
            fout.writelines(line for line in fin if int(line.split(",")[0]) in keep)
        shutil.copy(os.path.join(src, seq, "seqinfo.ini"), os.path.join(dst, seq, "seqinfo.ini"))
        kept[seq] = len(frames)
    shutil.copy(os.path.join(src, "split.json"), os.path.join(dst, "split.json"))
    return kept


def main(argv=None):
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--src", required=True, help="MOTChallenge person-search folder")
    parser.add_argument("--dst", required=True, help="output folder")
    parser.add_argument("--every", type=int, default=2, help="keep every N-th frame")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of the copies")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.src, "split.json")):
        parser.error(f"--src {args.src}: no split.json, not a MOTChallenge person-search folder")
    if args.every < 1:
        parser.error("--every must be at least 1")
    for seq, count in make_sample(args.src, args.dst, args.every, args.quality).items():
        print(f"{seq}: {count} frames")


if __name__ == "__main__":
    main()
