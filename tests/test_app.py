# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The web app's JSON API (personsearch_kd.app) and tools/serve.py, without a browser."""

import hashlib
import os
import sys

import pytest

pytest.importorskip("detectron2")
pytest.importorskip("fastapi")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from personsearch_kd.app import build_gallery_search, create_app, served  # noqa: E402
from personsearch_kd.search import GalleryIndex, GalleryIndexError  # noqa: E402

from app_fixtures import build_app_gallery  # noqa: E402
from helpers import cli_error, load_tool  # noqa: E402


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    return build_app_gallery(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def search(gallery):
    return build_gallery_search(gallery["cfg"], gallery["index"])


@pytest.fixture
def client(search):
    return TestClient(create_app(search, max_upload_mb=1.0))


def _upload(client, path, box=None, **params):
    with open(path, "rb") as f:
        data = {"box": ",".join(map(str, box))} if box is not None else {}
        files = {"image": (os.path.basename(path), f.read(), "image/jpeg")}
    return client.post("/api/search", files=files, data=data, params=params)


def _ranked(matches):
    return [(m["path"], m["frame"], m["row"]) for m in matches]


def test_info_lists_the_index_cameras_and_videos(client, gallery):
    info = client.get("/api/info").json()
    assert info["count"] == 7 * 5 and info["num_sources"] == 7
    assert info["factory"] == "Flat" and info["recall_check"] is None
    assert info["recall"] == "Flat index of 35 boxes: exact search"
    assert info["cameras"] == ["cam1", "cam2"]
    assert [v["path"] for v in info["videos"]] == [gallery["video"]]
    assert info["videos"][0]["duration"] == pytest.approx(3 / 7.0)
    assert client.get("/openapi.json").json()["paths"]["/api/search"]["post"]


def test_an_upload_gives_the_ranked_list_of_tools_search(client, gallery):
    image, box = gallery["images"][1], [20.0, 30.0, 90.0, 150.0]
    result = _upload(client, image, box, topk=6, all_boxes="true")
    assert result.status_code == 200, result.text
    matches = result.json()["matches"]
    cli = load_tool("search").main(
        ["--config-file", gallery["config"], "--index", gallery["index"], "--query-image", image,
         "--query-box", *map(str, box), "--topk", "6", "--all-boxes", "--json", *gallery["opts"]]
    )  # fmt: skip
    assert len(matches) == 6 and _ranked(matches) == _ranked(cli)
    assert [m["score"] for m in matches] == pytest.approx([m["score"] for m in cli], abs=1e-6)
    assert [m["rank"] for m in matches] == [1, 2, 3, 4, 5, 6]
    # The same image and box picked among the indexed sources ranks the same.
    info = client.get("/api/sources", params={"camera": "cam2"}).json()
    source = next(s for s in info["sources"] if s["path"] == image)
    again = client.post(
        f"/api/sources/{source['source_id']}/search", json={"box": box},
        params={"topk": 6, "all_boxes": "true"},
    ).json()["matches"]  # fmt: skip
    assert _ranked(again) == _ranked(matches)


def test_paging_and_filters(client, gallery):
    image = gallery["images"][0]
    whole = _upload(client, image, all_boxes="true", topk=6).json()["matches"]
    first = _upload(client, image, all_boxes="true", topk=3).json()
    second = _upload(client, image, all_boxes="true", topk=3, offset=3).json()
    assert first["more"] and _ranked(first["matches"] + second["matches"]) == _ranked(whole)
    assert [m["rank"] for m in second["matches"]] == [4, 5, 6]
    one_per_image = _upload(client, image, topk=20).json()
    assert len(one_per_image["matches"]) == 7 and not one_per_image["more"]
    cam2 = _upload(client, image, topk=20, camera="cam2").json()["matches"]
    assert {m["camera"] for m in cam2} == {"cam2"} and len(cam2) == 3
    both = _upload(client, image, topk=20, camera=["cam1", "cam2"]).json()["matches"]
    assert len(both) == 7
    early = _upload(client, image, topk=20, time_start=0.0, time_end=0.2).json()["matches"]
    assert sorted(m["frame"] for m in early) == [0, 1]  # frames at 0 and 1/7 s
    assert all(m["video_duration"] == pytest.approx(3 / 7.0) for m in early)


def test_sources_detections_frames_and_crops(client, gallery):
    page = client.get("/api/sources", params={"offset": 2, "limit": 3}).json()
    assert page["total"] == 7 and [s["source_id"] for s in page["sources"]] == [2, 3, 4]
    video_frame = page["sources"][0]
    assert video_frame["frame"] == 2 and video_frame["time"] == pytest.approx(2 / 7.0)
    assert page["sources"][2]["frame"] == -1 and page["sources"][2]["time"] is None
    source = client.get("/api/sources/4").json()
    assert len(source["detections"]) == 5 == source["num_boxes"]
    image = client.get("/api/sources/4/image")
    assert image.headers["content-type"] == "image/jpeg"
    decoded = cv2.imdecode(np.frombuffer(image.content, np.uint8), 1)
    assert decoded.shape == cv2.imread(gallery["images"][0]).shape
    crop = client.get(f"/api/rows/{source['detections'][0]['row']}/crop")
    assert crop.status_code == 200 and crop.content[:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    "url",
    [
        "/api/sources/7/image",
        "/api/sources/-1/image",
        "/api/rows/35/crop",
        "/api/sources/..%2F..%2F..%2Fetc%2Fpasswd/image",
        "/api/sources/../../etc/passwd",
        "/static/../../setup.py",
        "/static/..%2F..%2F..%2Fsetup.py",
        "/static/%2e%2e/%2e%2e/search/gallery_index.py",
        "/etc/passwd",
    ],
)
def test_nothing_outside_the_index_sources_is_served(client, url):
    response = client.get(url)
    assert response.status_code == 404, (url, response.status_code)
    assert b"Licensed" not in response.content and b"root:" not in response.content


def test_bad_uploads_get_a_clear_4xx_and_the_server_keeps_running(client, gallery, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    answer = _upload(client, str(text))
    assert answer.status_code == 415 and "notes.jpg: not an image" in answer.json()["detail"]
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.random.randint(0, 255, (900, 900, 3), "uint8"))
    answer = _upload(client, str(big))
    assert answer.status_code == 413 and "larger than 1 MB" in answer.json()["detail"]
    image = gallery["images"][0]
    cut = tmp_path / "cut.jpg"  # OpenCV would decode its first two thirds and grey below
    cut.write_bytes(open(image, "rb").read()[: os.path.getsize(image) * 2 // 3])
    answer = _upload(client, str(cut), [1, 1, 20, 20])
    assert answer.status_code == 415 and answer.json()["detail"] == (
        "cut.jpg: truncated JPEG (no end-of-image marker after its last scan)"
    )
    for box, expected in [
        ([10, 10, 10, 50], "a box of zero area"),
        ([-5, 0, 40, 40], "expected 0 <= x0 < x1"),
        ([0, 0, 5000, 40], "expected 0 <= x0 < x1"),
    ]:
        answer = _upload(client, image, box)
        assert answer.status_code == 422 and expected in answer.json()["detail"], answer.text
    answer = client.post("/api/search", files={"image": ("q.jpg", open(image, "rb"))},
                         data={"box": "1,2,x,4"})  # fmt: skip
    assert answer.status_code == 422 and "expected four numbers" in answer.json()["detail"]
    answer = _upload(client, image, topk=0)
    assert answer.status_code == 422 and "topk" in answer.json()["detail"]
    answer = _upload(client, image, time_start=1.0)
    assert answer.status_code == 422 and "give both" in answer.json()["detail"]
    answer = client.post("/api/sources/0/search", json={"box": [1, 2, 3]})
    assert answer.status_code == 422
    chunked = client.post("/api/search", content=iter([b"--x"]))  # no Content-Length
    assert chunked.status_code == 411 and "Content-Length" in chunked.json()["detail"]
    assert _upload(client, image).status_code == 200  # still serving


def test_a_token_is_required_when_given(search):
    client = TestClient(create_app(search, token="s3cret"))
    assert client.get("/api/info").status_code == 401
    assert client.get("/").status_code == 401
    assert client.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    page = client.get("/?token=s3cret")  # the address tools/serve.py prints
    assert page.status_code == 200 and "personsearch_token" in page.headers["set-cookie"]
    assert client.get("/api/info").status_code == 200  # the page's own requests: the cookie


def test_the_index_is_opened_read_only(gallery, search, client):
    def digests():
        return {
            name: hashlib.sha256(open(os.path.join(gallery["index"], name), "rb").read()).digest()
            for name in sorted(os.listdir(gallery["index"]))
        }

    before = digests()
    _upload(client, gallery["images"][0])
    client.get("/api/sources/1/image")
    assert digests() == before
    with pytest.raises(GalleryIndexError, match="read-only"):
        search.index.save(gallery["index"])


def test_the_load_benchmark_queries_a_grown_index_without_errors(gallery, tmp_path, capsys):
    grown_dir = str(tmp_path / "grown")
    load_tool("grow_gallery_index", "dev").main(
        ["--index", gallery["index"], "--output", grown_dir, "--boxes", "100"]
    )
    grown = GalleryIndex.load(grown_dir)
    original = GalleryIndex.load(gallery["index"])
    assert len(grown) == 105 and grown.num_sources == 3 * original.num_sources
    assert grown.arrays()["box"][:35].tolist() == original.arrays()["box"].tolist()
    copies = grown.arrays()["path"][original.num_sources :]
    assert all(os.path.realpath(p) in set(original.arrays()["path"].tolist()) for p in copies)

    app = create_app(build_gallery_search(gallery["cfg"], grown_dir))
    with served(app) as url:
        capsys.readouterr()
        rows = load_tool("benchmark_serve").main(
            ["--url", url, "--clients", "1", "3", "--seconds", "2", "--topk", "4",
             "--server-pid", str(os.getpid())]
        )  # fmt: skip
    assert [r["clients"] for r in rows] == [1, 3]
    assert all(r["queries"] > 0 and r["errors"] == 0 for r in rows)
    assert all(r["rss_before_mb"] > 0 and r["rss_after_mb"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "105 boxes in 21 images and frames; Flat index of 105 boxes: exact search" in out
    assert out.count("\n| 1 | ") == 1 and out.count("\n| 3 | ") == 1


def test_serve_without_the_app_packages_says_how_to_install_them(gallery, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    line = cli_error(capsys, load_tool("serve").main,
                     ["--index", gallery["index"], "--config-file", gallery["config"]])
    assert line == "error: uvicorn not installed: the web app needs pip install -e '.[app]'"
