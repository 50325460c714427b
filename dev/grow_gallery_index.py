#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Grow a small gallery index to a given number of boxes for the web app's load benchmark
(tools/benchmark_serve.py): the index's own sources and features first, then copies of its
sources under new names (symbolic links in OUTPUT/copies, so the app can read their frames) with
the same boxes and synthetic features (personsearch_kd.search.index_benchmark.synthetic_features,
the structureless kind). The copy is an exact (Flat) index of the same model.

    python dev/grow_gallery_index.py --index gallery_index --output gallery_index_10k --boxes 10000
"""

import argparse
import os

import numpy as np

from personsearch_kd.engine.command_line import one_line_errors, require_dir, run_cli
from personsearch_kd.search import GalleryIndex
from personsearch_kd.search.index_benchmark import synthetic_features


def grow(index: GalleryIndex, output: str, boxes: int, seed: int) -> GalleryIndex:
    records = index.arrays()
    grown = GalleryIndex(index.dim, index.model)
    counts = np.bincount(records["source"], minlength=index.num_sources)
    fields = ("path", "frame", "time", "camera")
    sources = [records[k].tolist() for k in fields]
    grown.add_sources(index.features(), records["box"], records["det_score"], counts, *sources)
    copies = os.path.join(output, "copies")
    os.makedirs(copies, exist_ok=True)
    copy = 0
    while len(grown) < boxes:
        copy += 1
        paths = []
        for path in dict.fromkeys(sources[0]):  # each file once, in order
            link = os.path.join(copies, f"{copy:05d}_{os.path.basename(path)}")
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(path), link)
            paths.append(link)
        renamed = dict(zip(dict.fromkeys(sources[0]), paths))
        features = synthetic_features(len(records["box"]), index.dim, seed + copy)
        grown.add_sources(features, records["box"], records["det_score"], counts,
                          [renamed[p] for p in sources[0]], *sources[1:])  # fmt: skip
    grown.save(output)
    return grown


def main(argv=None):
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--index", required=True, help="a gallery index made by index_gallery.py")
    parser.add_argument("--output", required=True, help="the grown index's folder")
    parser.add_argument("--boxes", type=int, default=10000, help="at least this many boxes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    require_dir(parser, "--index", args.index, "a gallery index folder")
    grown = grow(GalleryIndex.load(args.index), args.output, args.boxes, args.seed)
    print(f"{args.output}: {len(grown)} boxes in {grown.num_sources} images and frames")


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
