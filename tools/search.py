#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Search a gallery index (tools/index_gallery.py) for the person in a query box or a query crop:
the ranked matches as a table or JSON, and the ranked-match picture (the query beside its top-k,
each captioned with its source, frame and time).

    python tools/search.py --config-file configs/mot15/oim_R_18_C4_cpu.yaml --index gallery_index \
        --query-image q.jpg --query-box 100 50 160 220 --topk 10 --output matches.jpg \
        MODEL.WEIGHTS output/mot15_oim_R_18_C4_cpu/model_final.pth
"""

import argparse
import json
import math
import os

import cv2
from tabulate import tabulate


from personsearch_kd import load_config
from personsearch_kd.engine import PersonSearchPredictor
from personsearch_kd.search import GalleryIndex, model_fingerprint
from personsearch_kd.utils import draw_ranked_matches


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="the model the index was built with")
    parser.add_argument("--index", required=True, help="the index directory")
    parser.add_argument("--query-image", required=True, help="an image, or a crop of the person")
    parser.add_argument(
        "--query-box",
        nargs=4,
        type=float,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="the person's box in --query-image (default: the whole image is the crop)",
    )
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


def _source_image(match):
    """The RGB image or video frame of a match."""
    if match["frame"] < 0:
        image = cv2.imread(match["path"], cv2.IMREAD_COLOR)
    else:
        capture = cv2.VideoCapture(match["path"])
        capture.set(cv2.CAP_PROP_POS_FRAMES, match["frame"])
        image = capture.read()[1]
        capture.release()
    if image is None:
        raise FileNotFoundError(f"{match['path']} (frame {match['frame']}): cannot be read")
    return image[:, :, ::-1]


def _caption(match):
    name = os.path.basename(match["path"])
    if match["frame"] >= 0:
        time = "" if math.isnan(match["time"]) else f" {match['time']:.1f}s"
        name += f" #{match['frame']}{time}"
    return name


def search(args):
    cfg = load_config(args.config_file, args.opts)
    model = model_fingerprint(cfg)
    index = GalleryIndex.load(args.index, model)
    if cfg.GALLERY_INDEX.GPU:
        index.to_gpus()
    index.set_search_params(args.search_params)
    query_image = cv2.imread(args.query_image, cv2.IMREAD_COLOR)
    if query_image is None:
        raise FileNotFoundError(f"--query-image {args.query_image}: cannot be read")
    height, width = query_image.shape[:2]
    box = args.query_box or [0.0, 0.0, float(width), float(height)]
    if not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
        raise ValueError(
            f"--query-box {box}: expected 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}"
        )
    feature = PersonSearchPredictor(cfg).embed_query(query_image, box).numpy()
    (matches,) = index.search(
        feature,
        model,
        args.topk,
        per_image=not args.all_boxes,
        cameras=args.camera,
        time_range=args.time_range,
    )
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
        panels = [dict(m, image=_source_image(m), caption=_caption(m)) for m in matches]
        picture = draw_ranked_matches(query_image[:, :, ::-1], box, panels)
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        cv2.imwrite(args.output, picture[:, :, ::-1])
    return matches


def main(argv=None):
    return search(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()  # pragma: no cover
