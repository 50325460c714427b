# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The gallery index (numpy + faiss, no detectron2): search, filters, persistence, refusals."""

import json
import math

import numpy as np
import pytest

from personsearch_kd.search import GalleryIndex, GalleryIndexError

MODEL = {"config_sha1": "abc", "weights_sha1": "def"}
DIM = 16


def _unit(rng, n):
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _gallery(rng, sources=20, per_source=3):
    """(source name, camera, time, features, boxes, scores) of a synthetic gallery."""
    gallery = []
    for i in range(sources):
        feats = _unit(rng, per_source)
        boxes = rng.uniform(0, 100, (per_source, 4)).astype(np.float32)
        gallery.append((f"img_{i:03d}.jpg", f"cam{i % 2}", float(i), feats, boxes,
                        rng.uniform(0.5, 1, per_source)))  # fmt: skip
    return gallery


def _filled(gallery, **kwargs):
    index = GalleryIndex(DIM, MODEL, **kwargs)
    for path, camera, time, feats, boxes, scores in gallery:
        index.add(feats, boxes, scores, path, time=time, camera=camera)
    return index


def test_exact_search_equals_a_numpy_brute_force():
    rng = np.random.default_rng(0)
    gallery = _gallery(rng)
    index = _filled(gallery)
    all_feats = np.concatenate([g[3] for g in gallery])
    queries = _unit(rng, 5)
    results = index.search(queries, MODEL, topk=10, per_image=False)
    for query, matches in zip(queries, results):
        sims = all_feats @ query
        expected = np.argsort(-sims)[:10]
        assert [m["row"] for m in matches] == expected.tolist()
        assert [m["score"] for m in matches] == pytest.approx(sims[expected].tolist(), abs=1e-5)
        first = matches[0]
        path, camera, time, _, boxes, scores = gallery[first["row"] // 3]
        assert (first["path"], first["camera"], first["time"]) == (path, camera, time)
        assert first["box"] == pytest.approx(boxes[first["row"] % 3].tolist())
        assert first["det_score"] == pytest.approx(scores[first["row"] % 3])


def test_per_image_keeps_the_best_box_of_each_image_and_filters_select_sources():
    rng = np.random.default_rng(1)
    gallery = _gallery(rng)
    index = _filled(gallery)
    query = _unit(rng, 1)
    (matches,) = index.search(query, MODEL, topk=len(gallery))
    assert len(matches) == len(gallery) and len({m["path"] for m in matches}) == len(gallery)
    for m in matches:  # each image's best box
        feats = gallery[int(m["path"][4:7])][3]
        assert m["score"] == pytest.approx(float((feats @ query[0]).max()), abs=1e-5)
    (cam1,) = index.search(query, MODEL, topk=50, cameras=["cam1"])
    assert len(cam1) == 10 and all(m["camera"] == "cam1" for m in cam1)
    (early,) = index.search(query, MODEL, topk=50, time_range=(2.0, 4.0))
    assert sorted(m["time"] for m in early) == [2.0, 3.0, 4.0]
    (two,) = index.search(query, MODEL, topk=5, paths=["img_007.jpg", "img_011.jpg"])
    assert sorted(m["path"] for m in two) == ["img_007.jpg", "img_011.jpg"]


def test_incremental_add_and_round_trip_give_identical_results(tmp_path):
    rng = np.random.default_rng(2)
    gallery = _gallery(rng)
    whole = _filled(gallery)
    index = _filled(gallery[:7])
    index.save(str(tmp_path / "idx"))
    index = GalleryIndex.load(str(tmp_path / "idx"), MODEL)
    assert index.has_source("img_006.jpg") and not index.has_source("img_007.jpg")
    for path, camera, time, feats, boxes, scores in gallery[7:]:
        index.add(feats, boxes, scores, path, time=time, camera=camera)
    index.save(str(tmp_path / "idx"))
    loaded = GalleryIndex.load(str(tmp_path / "idx"))
    queries = _unit(rng, 4)
    assert loaded.search(queries, MODEL) == whole.search(queries, MODEL)
    with pytest.raises(ValueError, match="img_003.jpg .frame -1. is already in the index"):
        loaded.add(gallery[3][3], gallery[3][4], gallery[3][5], "img_003.jpg")


def test_a_trained_index_searches_its_buffer_exactly_until_trained_and_persists_it(tmp_path):
    rng = np.random.default_rng(3)
    gallery = _gallery(rng, sources=100, per_source=4)  # 400 rows
    exact = _filled(gallery)
    ivf = _filled(gallery[:50], factory="IVF4,Flat", search_params="nprobe=4", train_size=300)
    assert not ivf.index.is_trained and len(ivf) == 200
    queries = _unit(rng, 3)
    buffered, flat = ivf.search(queries, MODEL), _filled(gallery[:50]).search(queries, MODEL)
    assert [[m["row"] for m in r] for r in buffered] == [[m["row"] for m in r] for r in flat]
    assert buffered[0][0]["score"] == pytest.approx(flat[0][0]["score"], abs=1e-5)
    ivf.save(str(tmp_path / "ivf"))
    ivf = GalleryIndex.load(str(tmp_path / "ivf"))
    for path, camera, time, feats, boxes, scores in gallery[50:]:
        ivf.add(feats, boxes, scores, path, time=time, camera=camera)
    assert ivf.index.is_trained and ivf.index.ntotal == 400
    # nprobe = nlist visits every list: exact.
    got = ivf.search(queries, MODEL, per_image=False)
    want = exact.search(queries, MODEL, per_image=False)
    assert [[m["row"] for m in r] for r in got] == [[m["row"] for m in r] for r in want]


def test_hnsw_finds_most_exact_neighbours():
    rng = np.random.default_rng(4)
    gallery = _gallery(rng, sources=300, per_source=2)
    exact, hnsw = _filled(gallery), _filled(gallery, factory="HNSW16", search_params="efSearch=64")
    queries = _unit(rng, 20)
    found = [
        len({m["row"] for m in a} & {m["row"] for m in b}) / 10
        for a, b in zip(hnsw.search(queries, MODEL, per_image=False),
                        exact.search(queries, MODEL, per_image=False))
    ]  # fmt: skip
    assert np.mean(found) >= 0.9


def test_another_models_queries_and_corrupt_or_mismatched_indexes_are_refused(tmp_path):
    rng = np.random.default_rng(5)
    index = _filled(_gallery(rng))
    other = {"config_sha1": "abc", "weights_sha1": "zzz"}
    with pytest.raises(GalleryIndexError, match="embedded by model .*the index by"):
        index.search(_unit(rng, 1), other)
    directory = tmp_path / "idx"
    index.save(str(directory))
    with pytest.raises(GalleryIndexError, match="built with model"):
        GalleryIndex.load(str(directory), other)
    with pytest.raises(ValueError, match="L2-normalised"):
        index.add(np.ones((1, DIM)), np.zeros((1, 4)), [1.0], "new.jpg")

    header = json.loads((directory / "index.json").read_text())
    (directory / "index.json").write_text(json.dumps(dict(header, dim=32)))
    with pytest.raises(GalleryIndexError, match="inconsistent gallery index: header dim 32"):
        GalleryIndex.load(str(directory))
    (directory / "index.json").write_text(json.dumps(dict(header, format_version=99)))
    with pytest.raises(GalleryIndexError, match="format_version 99, expected 1"):
        GalleryIndex.load(str(directory))
    (directory / "index.json").write_text("{not json")
    with pytest.raises(GalleryIndexError, match="index.json: not a gallery index header"):
        GalleryIndex.load(str(directory))
    (directory / "index.json").write_text(json.dumps(header))
    faiss_file = directory / "index.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    with pytest.raises(GalleryIndexError, match="corrupt gallery index"):
        GalleryIndex.load(str(directory))
    faiss_file.unlink()
    with pytest.raises(GalleryIndexError, match="index.faiss: missing; not a gallery index"):
        GalleryIndex.load(str(directory))


def test_videos_frames_are_sources_of_their_own():
    rng = np.random.default_rng(6)
    index = GalleryIndex(DIM, MODEL)
    feats = _unit(rng, 3)
    for frame in range(3):
        index.add(feats[frame : frame + 1], [[0, 0, 10, 20]], [0.9], "cam.mp4", frame, frame / 25)
    (matches,) = index.search(feats[1], MODEL, topk=3)
    assert [m["frame"] for m in matches][0] == 1 and len(matches) == 3
    assert matches[0]["time"] == pytest.approx(0.04) and not math.isnan(matches[0]["time"])


def test_add_sources_equals_one_add_per_source_and_buffers_until_train_size():
    rng = np.random.default_rng(7)
    gallery = _gallery(rng, sources=30, per_source=3)
    one_by_one = _filled(gallery, factory="IVF2,Flat", search_params="nprobe=2", train_size=60)
    bulk = GalleryIndex(DIM, MODEL, "IVF2,Flat", "nprobe=2", train_size=60)
    for trained, part in ((False, gallery[:10]), (True, gallery[10:])):  # 30 rows, then 90
        paths, cameras, times, feats, boxes, scores = zip(*part)
        bulk.add_sources(np.concatenate(feats), np.concatenate(boxes), np.concatenate(scores),
                         [len(f) for f in feats], paths, times=times, cameras=cameras)  # fmt: skip
        assert bulk.index.is_trained == trained
    for key, value in one_by_one.arrays().items():
        assert np.array_equal(bulk.arrays()[key], value), key
    queries = _unit(rng, 4)
    assert bulk.search(queries, MODEL) == one_by_one.search(queries, MODEL)
    # An image with no detection is still a finished source; a repeated one is refused.
    bulk.add_sources(np.zeros((0, DIM)), np.zeros((0, 4)), [], [0], ["empty.jpg"])
    assert bulk.has_source("empty.jpg") and bulk.num_sources == 31
    with pytest.raises(ValueError, match="img_003.jpg \\(frame -1\\) is already in the index"):
        bulk.add(gallery[3][3], gallery[3][4], gallery[3][5], "img_003.jpg")
    with pytest.raises(ValueError, match="counts sum to 2 rows, but 3 features"):
        bulk.add_sources(_unit(rng, 3), np.zeros((3, 4)), np.ones(3), [2], ["a.jpg"])
    with pytest.raises(ValueError, match="a source is given twice"):
        bulk.add_sources(_unit(rng, 2), np.zeros((2, 4)), np.ones(2), [1, 1], ["b.jpg", "b.jpg"])


def test_train_moves_a_small_buffer_into_the_index_and_search_params_can_change(tmp_path):
    rng = np.random.default_rng(8)
    gallery = _gallery(rng, sources=20, per_source=3)
    ivf = _filled(gallery, factory="IVF4,Flat", search_params="nprobe=1", train_size=10_000)
    assert not ivf.index.is_trained and len(ivf) == 60
    ivf.train()
    assert ivf.index.is_trained and ivf.index.ntotal == 60 and len(ivf) == 60
    queries = _unit(rng, 5)
    ivf.set_search_params("nprobe=4")  # every list: exact
    assert ivf.search(queries, MODEL) == _filled(gallery).search(queries, MODEL)
    ivf.save(str(tmp_path / "ivf"))
    assert GalleryIndex.load(str(tmp_path / "ivf")).search_params == "nprobe=4"
    with pytest.raises(GalleryIndexError, match="'efSearch=8' do not apply to a IVF4,Flat index"):
        ivf.set_search_params("efSearch=8")
    header_file = tmp_path / "ivf" / "index.json"
    header = json.loads(header_file.read_text())
    header_file.write_text(json.dumps(dict(header, search_params="x=1")))
    with pytest.raises(GalleryIndexError, match="index.json: search parameters 'x=1'"):
        GalleryIndex.load(str(tmp_path / "ivf"))


def test_to_gpus_stays_on_the_cpu_without_a_gpu_and_saves_a_cpu_index_from_one(
    tmp_path, monkeypatch
):
    import faiss

    rng = np.random.default_rng(9)
    gallery = _gallery(rng, sources=5)
    index = _filled(gallery)
    if faiss.get_num_gpus() == 0:  # faiss-cpu, or no GPU: nothing moves, search still works
        assert index.to_gpus() is False and not index.on_gpus
        assert len(index.search(_unit(rng, 1), MODEL)[0]) == 5
    # A GPU build (faked: the same index stands for its GPU copy): moved once, searched there,
    # saved as a CPU index that loads back.
    moved, copied_back = [], []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda i: moved.append(i) or i)
    copy_back = lambda i: copied_back.append(i) or i  # noqa: E731
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", copy_back, raising=False)
    index = _filled(gallery)
    assert index.to_gpus() is True and index.to_gpus() is True and len(moved) == 1
    index.save(str(tmp_path / "idx"))
    assert copied_back == moved
    assert GalleryIndex.load(str(tmp_path / "idx")).search(_unit(rng, 1), MODEL)


def test_an_index_opened_read_only_searches_but_refuses_every_change(tmp_path):
    rng = np.random.default_rng(10)
    gallery = _gallery(rng, sources=20, per_source=3)
    _filled(gallery[:10], factory="IVF4,Flat", search_params="nprobe=2", train_size=100).save(
        str(tmp_path / "idx")
    )
    index = GalleryIndex.load(str(tmp_path / "idx"), MODEL, read_only=True)
    assert index.read_only and not GalleryIndex.load(str(tmp_path / "idx")).read_only
    queries = _unit(rng, 3)
    rows = lambda results: [[m["row"] for m in r] for r in results]  # noqa: E731
    assert rows(index.search(queries, MODEL)) == rows(_filled(gallery[:10]).search(queries, MODEL))
    path, camera, time, feats, boxes, scores = gallery[10]
    changes = {
        "add": lambda: index.add(feats, boxes, scores, path),
        "add_sources": lambda: index.add_sources(feats, boxes, scores, [3], [path]),
        "merge": lambda: index.merge(_filled(gallery[10:])),
        "train": index.train,
        "save": lambda: index.save(str(tmp_path / "copy")),
        "set_search_params": lambda: index.set_search_params("nprobe=4"),
    }
    for name, change in changes.items():
        with pytest.raises(GalleryIndexError, match="the index was opened read-only"):
            change()
    assert len(index) == 30 and index.search_params == "nprobe=2"
    assert not (tmp_path / "copy").exists() and not index.has_source(path)
    index.to_gpus()  # where faiss has GPUs, a server may still search on them
