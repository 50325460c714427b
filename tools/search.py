#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Search a gallery index (tools/index_gallery.py) for the person in a query box or a query crop:
the ranked matches as a table or JSON, and the ranked-match picture (the query beside its top-k,
each captioned with its source, frame and time). One line before the table says how far the
index's results can be trusted: exact search, or the recall@10 its self-check recorded (with
--json that line goes to stderr; stdout stays the JSON list of matches).

    python tools/search.py --config-file configs/mot15/oim_R_18.yaml --index gallery_index \
        --query-image q.jpg --query-box 100 50 160 220 --topk 10 --output matches.jpg \
        MODEL.WEIGHTS output/mot15_oim_R_18/model_final.pth
"""

import argparse
import json
import os
import sys

import cv2
from tabulate import tabulate

from personsearch_kd import load_config
from personsearch_kd.engine import PersonSearchPredictor
from personsearch_kd.engine.command_line import (
    one_line_errors,
    query_box_problem,
    require_dir,
    require_file,
    require_weights,
    run_cli,
)
from personsearch_kd.search import (
    GalleryIndex,
    model_fingerprint,
    read_source_image,
    source_caption,
)
from personsearch_kd.search.recall_check import describe_recall
from personsearch_kd.utils import draw_ranked_matches


def build_parser():
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--config-file", required=True, help="the model the index was built with")
    parser.add_argument("--index", required=True, help="the index directory")
    parser.add_argument("--query-image", required=True, help="an image, or a crop of the person")
    parser.add_argument(
        "--query-box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
        help="the person's box in --query-image (default: the whole image is the crop)",
    )  # fmt: skip
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--all-boxes", action="store_true", help="several matches per image")
    parser.add_argument("--camera", nargs="+", help="only these cameras")
    parser.add_argument("--time-range", nargs=2, type=float, metavar=("START", "END"))
    parser.add_argument(
        "--search-params", default="", help='faiss parameters for this search, e.g. "nprobe=64"'
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--output", help="draw the ranked matches into this picture")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def _caption(match):
    return source_caption(match["path"], match["frame"], match["time"])


def search(args, query_image, box):
    cfg = load_config(args.config_file, args.opts)
    require_weights(cfg, args.config_file)
    model = model_fingerprint(cfg)
    index = GalleryIndex.load(args.index, model)
    if cfg.GALLERY_INDEX.GPU:
        index.to_gpus()
    index.set_search_params(args.search_params)
    feature = PersonSearchPredictor(cfg).embed_query(query_image, box).numpy()
    (matches,) = index.search(
        feature, model, args.topk, per_image=not args.all_boxes, cameras=args.camera,
        time_range=args.time_range,
    )  # fmt: skip
    print(describe_recall(index), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(matches, indent=1))
    else:
        rows = [
            (rank, _caption(m), m["camera"], [round(v, 1) for v in m["box"]], m["score"])
            for rank, m in enumerate(matches, start=1)
        ]
        headers = ["rank", "source", "camera", "box", "similarity"]
        print(tabulate(rows, headers=headers, floatfmt=".3f", tablefmt="pipe"))
    if args.output:
        panels = [
            dict(m, image=read_source_image(m["path"], m["frame"])[:, :, ::-1], caption=_caption(m))
            for m in matches
        ]
        picture = draw_ranked_matches(query_image[:, :, ::-1], box, panels)
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        cv2.imwrite(args.output, picture[:, :, ::-1])
    return matches


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    require_file(parser, "--config-file", args.config_file, "a config .yaml file")
    require_dir(
        parser, "--index", args.index, "a gallery index folder made by tools/index_gallery.py"
    )
    require_file(parser, "--query-image", args.query_image, "an image file")
    query_image = cv2.imread(args.query_image, cv2.IMREAD_COLOR)
    if query_image is None:
        parser.error(
            f"--query-image {args.query_image}: cannot be read (expected a JPEG/PNG image)"
        )
    height, width = query_image.shape[:2]
    box = args.query_box or [0.0, 0.0, float(width), float(height)]
    problem = query_box_problem(box, width, height, args.query_image)
    if problem:
        parser.error(problem)
    return search(args, query_image, box)


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
