#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Load a running web app (tools/serve.py) from this machine: for each number of concurrent clients,
every client searches for a random indexed person for a bounded time, as the page does (the
search, then the crops of its result page), and the script prints a table of search and page
latency (p50, p99), errors, and the server's memory before and after (with --server-pid).

    python tools/serve.py --index gallery_index --config-file CFG MODEL.WEIGHTS W &
    python tools/benchmark_serve.py --url http://127.0.0.1:8000 --clients 1 8 32 --seconds 60 \
        --server-pid $!
"""

import argparse
import os
import platform
import threading
import time
from typing import Dict, List, Optional

import httpx
import numpy as np

from personsearch_kd.engine.command_line import one_line_errors, run_cli


def build_parser():
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the app's address")
    parser.add_argument("--token", help="the server's --token, if it has one")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=60.0, help="per number of clients")
    parser.add_argument("--topk", type=int, default=10, help="matches per result page")
    parser.add_argument("--server-pid", type=int, help="the server's process: its memory is read")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def resident_mb(pid: Optional[int]) -> Optional[float]:
    """Resident memory (VmRSS) of process ``pid`` in MB, from /proc; None without a pid."""
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/{pid}/status: no VmRSS line")


def indexed_persons(client: httpx.Client) -> List[Dict]:
    """Every indexed detection as {"source_id", "box"}: the queries the clients draw from."""
    persons, offset = [], 0
    while True:
        page = client.get("/api/sources", params={"offset": offset, "limit": 500}).json()
        for source in page["sources"]:
            for detection in client.get(f"/api/sources/{source['source_id']}").json()["detections"]:
                persons.append({"source_id": source["source_id"], "box": detection["box"]})
        offset += len(page["sources"])
        if not page["sources"] or offset >= page["total"]:
            return persons


def _client_loop(base, headers, persons, topk, deadline, seed, out):
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
        while time.perf_counter() < deadline:
            person = persons[int(rng.integers(len(persons)))]
            start = time.perf_counter()
            try:
                response = client.post(
                    f"/api/sources/{person['source_id']}/search", json={"box": person["box"]},
                    params={"topk": topk},
                )  # fmt: skip
                searched = time.perf_counter()
                ok = response.status_code == 200
                if ok:
                    for match in response.json()["matches"]:
                        ok = ok and client.get(f"/api/rows/{match['row']}/crop").status_code == 200
            except httpx.HTTPError:
                ok, searched = False, time.perf_counter()
            done = time.perf_counter()
            out.append((ok, searched - start, done - start))


def load(url, token, persons, clients, seconds, topk, seed):
    """Run ``clients`` concurrent clients for ``seconds``: [(ok, search s, page s)] per query."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.perf_counter() + seconds
    results: List = []  # list.append is atomic: the threads share it
    threads = [
        threading.Thread(
            target=_client_loop, args=(url, headers, persons, topk, deadline, seed + i, results)
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.clients) < 1 or args.seconds <= 0:
        parser.error("--clients must be at least 1 and --seconds positive")
    if args.server_pid is not None and not os.path.exists(f"/proc/{args.server_pid}/status"):
        parser.error(f"--server-pid {args.server_pid}: no such process")
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=60) as client:
        try:
            info = client.get("/api/info")
        except httpx.HTTPError as e:
            parser.error(f"--url {args.url}: no web app answers there ({e})")
        if info.status_code != 200:
            parser.error(f"--url {args.url}: /api/info answered {info.status_code} {info.text}")
        info = info.json()
        persons = indexed_persons(client)
    print(
        f"Server {args.url}: {info['count']} boxes in {info['num_sources']} images and frames; "
        f"{info['recall']}. Client machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; each query: one search (top-{args.topk}) + its page's crops"
    )
    print(
        "| clients | seconds | queries | queries/s | search p50 ms | search p99 ms "
        "| page p50 ms | page p99 ms | errors | server RSS MB before | after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for clients in args.clients:
        before = resident_mb(args.server_pid)
        start = time.perf_counter()
        results = load(args.url, args.token, persons, clients, args.seconds, args.topk, args.seed)
        elapsed = time.perf_counter() - start
        after = resident_mb(args.server_pid)
        ok = [r for r in results if r[0]]
        search_ms = np.array([r[1] for r in ok]) * 1000.0
        page_ms = np.array([r[2] for r in ok]) * 1000.0
        p = lambda a, q: f"{np.percentile(a, q):.0f}" if len(a) else "-"  # noqa: E731
        memory = lambda mb: "-" if mb is None else f"{mb:.0f}"  # noqa: E731
        errors = len(results) - len(ok)
        print(
            f"| {clients} | {elapsed:.0f} | {len(results)} | {len(results) / elapsed:.2f} "
            f"| {p(search_ms, 50)} | {p(search_ms, 99)} | {p(page_ms, 50)} | {p(page_ms, 99)} "
            f"| {errors} | {memory(before)} | {memory(after)} |",
            flush=True,
        )
        rows.append({"clients": clients, "queries": len(results), "errors": errors,
                     "rss_before_mb": before, "rss_after_mb": after})  # fmt: skip
    return rows


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
