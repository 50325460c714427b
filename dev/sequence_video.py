#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
A MOTChallenge sequence's img1 frames, in order, as an MJPG video: footage for indexing
benchmarks (docs/search.md), e.g. the shipped sample's PETS09 frames as a camera video:

    python dev/sequence_video.py datasets/mot15-ps-sample/PETS09-S2L1 cam1.avi --fps 0.7
"""

import argparse
import os
from typing import List

import cv2


def write_sequence_video(seq_dir: str, path: str, fps: float) -> List[str]:
    """Write ``seq_dir/img1``'s images (sorted by name) to ``path``; returns their names."""
    names = sorted(os.listdir(os.path.join(seq_dir, "img1")))
    first = cv2.imread(os.path.join(seq_dir, "img1", names[0]))
    size = (first.shape[1], first.shape[0])
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for name in names:
        writer.write(cv2.imread(os.path.join(seq_dir, "img1", name)))
    writer.release()
    return names


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sequence", help="a MOTChallenge sequence folder (with img1/)")
    parser.add_argument("output", help="the video file (.avi)")
    parser.add_argument("--fps", type=float, default=7.0)
    args = parser.parse_args()
    names = write_sequence_video(args.sequence, args.output, args.fps)
    print(f"{args.output}: {len(names)} frames")
