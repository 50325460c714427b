# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
A deterministic mutation fuzz of the annotation readers: malformed variants (seeded byte flips,
truncations, field replacements with NaN/inf/''/'2.5'/huge numbers/strings, deleted and repeated
lines or keys, wrong JSON types, deep nesting, mutated .mat contents) of the shipped MOT sample's
gt.txt, seqinfo.ini and split.json and of the PRW / CUHK-SYSU fixture files. Every variant must
either load to sane records (finite boxes inside the image, integer person ids, no identity twice
in an image) or raise AnnotationError / FileNotFoundError naming the mutated file, within seconds.
960 variants in all.
"""

import json
import math
import os
import random
import signal

import numpy as np
import pytest

pytest.importorskip("detectron2")

from scipy.io import loadmat, savemat  # noqa: E402

from personsearch_kd.data.datasets.checks import AnnotationError  # noqa: E402
from personsearch_kd.data.datasets.cuhk_sysu import load_cuhk_sysu  # noqa: E402
from personsearch_kd.data.datasets.mot import load_mot_person_search  # noqa: E402
from personsearch_kd.data.datasets.prw import load_prw  # noqa: E402

from test_datasets_cuhk_sysu import write_cuhk_fixture  # noqa: E402
from test_datasets_mot import copy_sample  # noqa: E402
from test_datasets_prw import write_prw_fixture  # noqa: E402

SEED = 14
SECONDS_PER_VARIANT = 10  # a variant that runs longer hangs (e.g. a loop per queries.per_id)
BAD_TOKENS = [
    "nan", "NaN", "inf", "-inf", "", "2.5", "1e308", "-1e308", "99999999999999999999",
    "1" * 5000, "abc", "-1", "-2", "-3", "0", "\u00e9",
]  # fmt: skip
BAD_NUMBERS = [math.nan, math.inf, -math.inf, 2.5, -1, -2, -3, 0, 1e308, -1e308, 1e12]
BAD_JSON_VALUES = [
    math.nan, math.inf, "", "2.5", 2.5, "9", True, None, [], {}, 1e8, 10**8, -1, 0, 10**30,
    [1, 2, 3], {"a": 1},
]  # fmt: skip


# --- Mutations: each takes (rng, original bytes) and returns the variant's bytes. ---


def flip_byte(rng, data):
    i = rng.randrange(len(data))
    after = i + 1
    return data[:i] + bytes([rng.randrange(256)]) + data[after:]


def flip_header_byte(rng, data):
    """A byte flip in a .mat file's 128-byte header. Flips further in can make scipy 1.17's
    loadmat segfault (a crash inside its C reader, which no Python code can turn into an error),
    so the data elements of .mat files are mutated through mutate_mat and truncate instead."""
    i = rng.randrange(min(len(data), 128))
    after = i + 1
    return data[:i] + bytes([rng.randrange(256)]) + data[after:]


def truncate(rng, data):
    return data[: rng.randrange(len(data))]


def replace_token(rng, data):
    """One number or word of a text file replaced by a bad token."""
    text = data.decode("utf-8")
    tokens = [m.span() for m in _TOKEN.finditer(text)]
    start, end = rng.choice(tokens)
    return (text[:start] + rng.choice(BAD_TOKENS) + text[end:]).encode("utf-8", "surrogatepass")


def delete_line(rng, data):
    lines = data.split(b"\n")
    del lines[rng.randrange(len(lines))]
    return b"\n".join(lines)


def repeat_line(rng, data):
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return b"\n".join(lines)


def _json_paths(value, path=()):
    yield path
    if isinstance(value, (dict, list)):
        for key, child in value.items() if isinstance(value, dict) else enumerate(value):
            yield from _json_paths(child, path + (key,))


def mutate_json(rng, data):
    """One node of the JSON tree replaced by a bad value, deleted, repeated or nested deep."""
    spec = json.loads(data)
    path = rng.choice([p for p in _json_paths(spec) if p])
    parent = spec
    for key in path[:-1]:
        parent = parent[key]
    action = rng.choice(["replace", "replace", "delete", "repeat", "deep"])
    if action == "delete":
        del parent[path[-1]]
    elif action == "repeat" and isinstance(parent, list):
        parent.insert(path[-1], parent[path[-1]])
    elif action == "deep":
        return json.dumps(spec).replace("[", "[" * 20000, 1).replace("]", "]" * 20000, 1).encode()
    else:
        parent[path[-1]] = rng.choice(BAD_JSON_VALUES)
    return json.dumps(spec).encode()


def mutate_mat(rng, data, path):
    """One number of a .mat file replaced by a bad one, or a row repeated or removed."""
    mat = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    leaves = []
    for key, value in mat.items():
        _numeric_leaves(value, leaves, mat, key)
    if not leaves:
        return truncate(rng, data)
    holder, key, array = rng.choice(leaves)
    action = rng.choice(["number", "number", "repeat", "drop", "text"])
    if action == "number" and array.size:
        array = array.astype(np.float64)
        array.flat[rng.randrange(array.size)] = rng.choice(BAD_NUMBERS)
    elif action == "repeat" and array.ndim == 2 and len(array):
        array = np.concatenate([array, array[-1:]])
    elif action == "drop" and array.ndim == 2 and len(array):
        array = array[:-1]
    else:
        array = np.array(["x"])
    holder[key] = array
    out = path + ".variant"
    savemat(out, mat)
    with open(out, "rb") as f:
        variant = f.read()
    os.remove(out)
    return variant


def _numeric_leaves(value, leaves, holder, key):
    """(holder, key, array) of every numeric array inside loadmat's nested object arrays."""
    if not isinstance(value, np.ndarray):
        return
    if value.dtype.kind in "iuf":
        leaves.append((holder, key, value))
    elif value.dtype.names is not None:
        for index in np.ndindex(value.shape):
            for name in value.dtype.names:
                _numeric_leaves(value[index][name], leaves, value[index], name)
    elif value.dtype.kind == "O":
        for index in np.ndindex(value.shape):
            _numeric_leaves(value[index], leaves, value, index)


_TOKEN = __import__("re").compile(r"[^\s,=\[\]{}:\"]+")
TEXT_MUTATIONS = [flip_byte, truncate, replace_token, replace_token, delete_line, repeat_line]


# --- The checks every variant must pass. ---


def check_sane(records):
    """Finite boxes inside their image, integer ids, one box per identity and image."""
    gallery = [r for r in records if "query_boxes" not in r]
    image_ids = [r["image_id"] for r in gallery]
    assert len(set(image_ids)) == len(image_ids)
    for record in gallery:
        width, height = record["width"], record["height"]
        labeled = []
        for a in record["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            assert np.isfinite(a["bbox"]).all() and x0 < x1 and y0 < y1, a
            assert 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height, a
            assert type(a["person_id"]) is int and a["person_id"] >= -1, a
            labeled += [a["person_id"]] if a["person_id"] >= 0 else []
        assert len(labeled) == len(set(labeled)), record["image_id"]
    for query in [r for r in records if "query_boxes" in r]:
        x0, y0, x1, y1 = query["query_boxes"][0]
        assert np.isfinite(query["query_boxes"][0]).all() and x0 < x1 and y0 < y1, query
        assert x0 < query["width"] and y0 < query["height"] and x1 > 0 and y1 > 0, query
        assert type(query["query_pid"]) is int and query["query_pid"] >= 0, query


def _timeout(signum, frame):
    raise TimeoutError(f"a variant ran over {SECONDS_PER_VARIANT} s")


def run_variant(path, variant, load):
    """Write ``variant`` over ``path``, load, restore; the outcome must be clean."""
    with open(path, "rb") as f:
        original = f.read()
    with open(path, "wb") as f:
        f.write(variant)
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(SECONDS_PER_VARIANT)
    try:
        check_sane(load())
        return "loaded"
    except (AnnotationError, FileNotFoundError) as e:
        assert path in str(e), f"{path} not named in: {e}"
        return "rejected"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        with open(path, "wb") as f:
            f.write(original)


def fuzz(path, mutations, count, load, seed):
    rng = random.Random(f"{seed}:{os.path.basename(path)}")
    with open(path, "rb") as f:
        original = f.read()
    outcomes = {}
    for i in range(count):
        mutation = mutations[i % len(mutations)]
        if mutation is mutate_mat:
            variant = mutate_mat(rng, original, path)
        else:
            variant = mutation(rng, original)
        try:
            outcome = run_variant(path, variant, load)
        except Exception as e:
            raise AssertionError(f"{path} variant {i} ({mutation.__name__}): {e!r}") from e
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


# --- The files under fuzz. ---


@pytest.fixture(scope="module")
def mot_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mot")
    return str(root), copy_sample(root)


@pytest.mark.parametrize(
    "relative, mutations, count",
    [
        ("PETS09-S2L1/gt/gt.txt", TEXT_MUTATIONS, 150),
        ("TUD-Stadtmitte/seqinfo.ini", TEXT_MUTATIONS, 80),
        ("split.json", TEXT_MUTATIONS + [mutate_json] * 6, 200),
    ],
)
def test_fuzz_mot_sample(mot_root, relative, mutations, count):
    root, split = mot_root

    def load():
        return load_mot_person_search(root, split, "train") + load_mot_person_search(
            root, split, "test"
        )

    outcomes = fuzz(os.path.join(root, relative), mutations, count, load, SEED)
    assert outcomes.get("rejected", 0) > count // 3, outcomes


@pytest.fixture(scope="module")
def prw_root(tmp_path_factory):
    return write_prw_fixture(tmp_path_factory.mktemp("prw"))


MAT_MUTATIONS = [flip_header_byte, truncate, mutate_mat, mutate_mat, mutate_mat]


@pytest.mark.parametrize(
    "relative, mutations, count",
    [
        ("annotations/c1s1_000001.jpg.mat", MAT_MUTATIONS, 60),
        ("annotations/c3s1_000030.jpg.mat", MAT_MUTATIONS, 60),
        ("frame_train.mat", MAT_MUTATIONS, 30),
        ("frame_test.mat", MAT_MUTATIONS, 30),
        ("query_info.txt", TEXT_MUTATIONS, 80),
    ],
)
def test_fuzz_prw_fixture(prw_root, relative, mutations, count):
    def load():
        return load_prw(prw_root, "train") + load_prw(prw_root, "test")

    outcomes = fuzz(os.path.join(prw_root, relative), mutations, count, load, SEED)
    assert outcomes.get("rejected", 0) > 0, outcomes


@pytest.fixture(scope="module")
def cuhk_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cuhk"))
    write_cuhk_fixture(root)
    return root


@pytest.mark.parametrize(
    "relative, count",
    [
        ("annotation/Images.mat", 80),
        ("annotation/pool.mat", 30),
        ("annotation/test/train_test/Train.mat", 60),
        ("annotation/test/train_test/TestG50.mat", 60),
        ("annotation/test/train_test/TestG100.mat", 40),
    ],
)
def test_fuzz_cuhk_sysu_fixture(cuhk_root, relative, count):
    def load():
        return load_cuhk_sysu(cuhk_root, "train") + load_cuhk_sysu(cuhk_root, "test", 100)

    outcomes = fuzz(os.path.join(cuhk_root, relative), MAT_MUTATIONS, count, load, SEED)
    assert outcomes.get("rejected", 0) > 0, outcomes


# --- Whole-file malformations: each must be refused, naming the file. ---


def emptied(data):
    return b""


def blank_lines_only(data):
    return b"\n \n\t\n"


def header_added(data):
    """A header line, as spreadsheets write, before the rows."""
    return b"frame,id,x,y,w,h,flag,a,b,c\n" + data


def spaces_for_commas(data):
    return data.replace(b",", b" ")


def semicolons_for_commas(data):
    return data.replace(b",", b";")


def last_column_dropped(data):
    return b"\n".join(line.rsplit(b",", 1)[0] for line in data.split(b"\n"))


def column_added(data):
    return b"\n".join(line + b",0" if line.strip() else line for line in data.split(b"\n"))


def first_byte_dropped(data):
    return data[1:]


TEXT_FILE_MALFORMATIONS = [emptied, blank_lines_only, header_added, first_byte_dropped]
GT_MALFORMATIONS = TEXT_FILE_MALFORMATIONS + [
    spaces_for_commas, semicolons_for_commas, last_column_dropped, column_added,
]  # fmt: skip


def refused(path, variant, load):
    """Write ``variant`` over ``path``, load: it must be refused naming ``path``; restored."""
    with open(path, "rb") as f:
        original = f.read()
    with open(path, "wb") as f:
        f.write(variant)
    try:
        with pytest.raises((AnnotationError, FileNotFoundError)) as error:
            load()
        assert path in str(error.value), f"{path} not named in: {error.value}"
        return str(error.value)
    finally:
        with open(path, "wb") as f:
            f.write(original)


@pytest.mark.parametrize(
    "relative, malformations",
    [
        ("PETS09-S2L1/gt/gt.txt", GT_MALFORMATIONS),
        ("TUD-Stadtmitte/gt/gt.txt", GT_MALFORMATIONS),
        ("TUD-Stadtmitte/seqinfo.ini", TEXT_FILE_MALFORMATIONS),
        ("split.json", TEXT_FILE_MALFORMATIONS),
    ],
)
@pytest.mark.parametrize("split_name", ["train", "test"])
def test_malformed_mot_files_are_refused_naming_the_file(mot_root, relative, malformations,
                                                         split_name):  # fmt: skip
    root, split = mot_root
    path = os.path.join(root, relative)
    with open(path, "rb") as f:
        original = f.read()
    for malformation in malformations:
        message = refused(path, malformation(original), lambda: load_mot_person_search(
            root, split, split_name))  # fmt: skip
        assert "\n" not in message, message  # one line: a tool prints it as its error line


@pytest.mark.parametrize("relative", ["query_info.txt"])
def test_malformed_prw_query_lists_are_refused_naming_the_file(prw_root, relative):
    path = os.path.join(prw_root, relative)
    with open(path, "rb") as f:
        original = f.read()
    for malformation in [emptied, blank_lines_only, first_byte_dropped, semicolons_for_commas]:
        variant = malformation(original)
        if variant == original:
            continue
        refused(path, variant, lambda: load_prw(prw_root, "test"))
