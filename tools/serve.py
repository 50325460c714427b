#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Search a gallery index in the browser: a local web app (FastAPI + uvicorn) over an index made by
tools/index_gallery.py. Open the printed address, upload an image and draw a box around a person,
or pick a person in an indexed frame, and browse the ranked matches. The JSON API is documented
at /docs. The index is opened read-only; only its own sources are served.

    python tools/serve.py --index gallery_index --config-file configs/mot15/oim_R_18.yaml \
        MODEL.WEIGHTS output/mot15_oim_R_18/model_final.pth
"""

import argparse
import ctypes
import ctypes.util
import importlib.util
import ipaddress
import logging

from personsearch_kd import load_config
from personsearch_kd.engine.command_line import (
    one_line_errors,
    require_dir,
    require_file,
    require_weights,
    run_cli,
)

logger = logging.getLogger("personsearch_kd.serve")


def build_parser():
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--index", required=True, help="the index directory")
    parser.add_argument("--config-file", required=True, help="the model the index was built with")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--token", help="require this token (give it to whoever may search: /?token=TOKEN)"
    )
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest query image")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """
    Cap glibc's malloc arenas (no effect elsewhere). Each of the server's request threads would
    otherwise get its own arena, and 32 concurrent clients left the server at 1.5 GB instead of
    1.1 GB, with the same latency (docs/search.md, Under load).
    """
    libc = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(libc), "mallopt", None) if libc else None
    if mallopt is not None:
        mallopt(-8, arenas)  # M_ARENA_MAX


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules as None: hidden on purpose (tests)
        return False


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    require_file(parser, "--config-file", args.config_file, "a config .yaml file")
    require_dir(
        parser, "--index", args.index, "a gallery index folder made by tools/index_gallery.py"
    )
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: expected 1 to 65535")
    if args.max_upload_mb <= 0:
        parser.error("--max-upload-mb must be positive")
    missing = [m for m in ("fastapi", "uvicorn", "python_multipart") if not _installed(m)]
    if missing:
        needed = "the web app needs pip install -e '.[app]'"
        parser.error(f"{', '.join(missing)} not installed: {needed}")
    import uvicorn

    from personsearch_kd.app import build_gallery_search, create_app

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not _loopback(args.host) and not args.token:
        logger.warning(
            f"serving on {args.host} without --token: anyone who reaches this address can "
            "search the footage and see its frames"
        )
    cfg = load_config(args.config_file, args.opts)
    require_weights(cfg, args.config_file)
    app = create_app(build_gallery_search(cfg, args.index), args.token, args.max_upload_mb)
    query = f"/?token={args.token}" if args.token else "/"
    logger.info(f"searching {args.index}: open http://{args.host}:{args.port}{query}")
    _limit_malloc_arenas()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
