#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Person search demo: find the person in a query box among the images of a gallery folder and draw
the top-k matches (box and cosine similarity) next to the query in one picture.

    python tools/search_demo.py --config-file configs/mot15/oim_R_18.yaml \
        --query-image q.jpg --query-box 100 50 160 220 --gallery path/to/images \
        --output matches.jpg --opts MODEL.WEIGHTS output/mot15_oim_R_18/model_final.pth
"""

import argparse
import os

import cv2

from detectron2.data.detection_utils import read_image
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
from personsearch_kd.utils import draw_ranked_matches

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def build_parser():
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--query-image", required=True, metavar="FILE")
    parser.add_argument(
        "--query-box", required=True, nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1")
    )
    parser.add_argument("--gallery", required=True, metavar="DIR", help="folder of images")
    parser.add_argument("--output", default="search_demo.jpg", metavar="FILE")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument(
        "--score-thresh", type=float, default=0.5, help="minimum detection score searched"
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs"
    )
    return parser


def gallery_images(folder: str):
    """Yields (file name, BGR image) for the images of ``folder``, in name order."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise FileNotFoundError(f"{folder}: no image ({', '.join(IMAGE_EXTENSIONS)}) in it")
    for name in names:
        yield os.path.join(folder, name), read_image(os.path.join(folder, name), format="BGR")


def search_and_draw(args, query_image):
    cfg = load_config(args.config_file, args.opts)
    require_weights(cfg, args.config_file)
    predictor = PersonSearchPredictor(cfg)
    matches = predictor.search(
        query_image, args.query_box, gallery_images(args.gallery), args.topk, args.score_thresh
    )
    if not matches:
        raise ValueError(
            f"{args.gallery}: no detection scored >= {args.score_thresh}; is MODEL.WEIGHTS a "
            "trained person-search checkpoint? (--score-thresh lowers the bar)"
        )
    rows = [
        (i + 1, m["name"], [round(v, 1) for v in m["box"]], m["score"], m["det_score"])
        for i, m in enumerate(matches)
    ]
    headers = ["rank", "image", "box", "similarity", "det score"]
    print(tabulate(rows, headers=headers, floatfmt=".3f", tablefmt="pipe"))
    picture = draw_ranked_matches(
        query_image[:, :, ::-1],
        args.query_box,
        [dict(m, image=read_image(m["name"], format="RGB")) for m in matches],
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    cv2.imwrite(args.output, picture[:, :, ::-1])
    print(f"Top-{len(matches)} matches drawn in {args.output}")
    return matches


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    require_file(parser, "--config-file", args.config_file, "a config .yaml file")
    require_file(parser, "--query-image", args.query_image, "an image file")
    require_dir(parser, "--gallery", args.gallery, "a folder of images")
    try:
        query_image = read_image(args.query_image, format="BGR")
    except OSError as e:  # PIL's UnidentifiedImageError included
        parser.error(
            f"--query-image {args.query_image}: cannot be read ({type(e).__name__}; expected a "
            "JPEG/PNG image)"
        )
    height, width = query_image.shape[:2]
    problem = query_box_problem(args.query_box, width, height, args.query_image)
    if problem:
        parser.error(problem)
    return search_and_draw(args, query_image)


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
