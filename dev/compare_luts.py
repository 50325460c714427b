#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Compare identity tables (LUT files of tools/export_lut.py): how much structure each holds, and how
far the first agrees with each of the others on their shared person ids. The question it answers:
did a KD_reid teacher's table reach the student? Embed the student's own identity means with
`export_lut --compute` on its checkpoint, then compare them with the table it was taught and with
the tables it was not:

    python tools/export_lut.py --config-file configs/mot15/oim_R_18.yaml --compute \
        --weights output/kd_reid_student/model_final.pth --output student_means.pth
    python dev/compare_luts.py student_means.pth teacher_lut.pth random_lut.pth

With `--dataset` of a test split, `--compute` of the student and of the teacher gives both
structures over people neither trained on (compare them by structure: two networks' features
live in different spaces).

Prints two Markdown tables: each file's off-diagonal cosines (mean / std / max), and the first
file against each other one (shared ids, mean cosine of the same person's rows, correlation of
the identity-similarity structures; see `lut_agreement` in personsearch_kd/layers/lut_file.py).
"""

import argparse

from personsearch_kd.layers import load_lut_file, lut_agreement, lut_structure


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="the LUT file compared with each of the others")
    parser.add_argument("others", nargs="+", help="LUT files to compare it with")
    return parser


def main(argv=None):
    """Print the tables; return {path: lut_agreement} for each of the others."""
    args = build_parser().parse_args(argv)
    tables = {path: load_lut_file(path) for path in [args.reference, *args.others]}
    print("| file | method | rows | off-diagonal cosine mean | std | max |")
    print("|---|---|---|---|---|---|")
    for path, table in tables.items():
        s = lut_structure(table["lut"])
        print(
            f"| {path} | {table['method']} | {len(table['lut'])} | {s['mean']:.3f} "
            f"| {s['std']:.3f} | {s['max']:.3f} |"
        )
    print()
    print(f"| {args.reference} against | shared ids | row cosine | structure correlation |")
    print("|---|---|---|---|")
    agreements = {}
    for path in args.others:
        try:
            a = lut_agreement(tables[args.reference], tables[path])
        except ValueError as e:
            raise ValueError(f"{args.reference} against {path}: {e}") from None
        agreements[path] = a
        print(f"| {path} | {a['ids']} | {a['row_cosine']:.3f} | {a['structure_correlation']:.3f} |")
    return agreements


if __name__ == "__main__":
    main()  # pragma: no cover
