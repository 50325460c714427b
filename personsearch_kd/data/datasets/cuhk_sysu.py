# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
CUHK-SYSU (Xiao et al., CVPR 2017). Layout under ``root``: ``Image/SSM/*.jpg`` and
``annotation/``: ``Images.mat`` (key ``Img``: imname, nAppear, box[idlocate xywh, ishard]),
``pool.mat`` (key ``pool``: the 6978 test images), ``test/train_test/Train.mat`` (key ``Train``:
5532 identities, each with its scenes imname/idlocate/ishard) and
``test/train_test/TestG{50,100,500,1000,2000,4000}.mat`` (key ``TestG<N>``: 2900 queries, each
with a ``Query`` and a per-query ``Gallery`` of N images, the person's box or an empty one).

Rules of the reference loaders (OIM, NAE, SeqNet): train = every image not in pool.mat; a box
gets the identity whose Train.mat (train) or TestG50.mat (test) box equals it exactly, other boxes
are unlabeled (-1); boxes with a non-positive width or height are not persons (dropped, with a log
line). Identities are the 0-based row of Train.mat / TestG50.mat. A gallery list ends at its first
entry without a box only for labelling; the search protocol uses the whole list.
"""

import logging
import os
from typing import Dict, List

import numpy as np
from PIL import Image
from scipy.io import loadmat

from detectron2.data import DatasetCatalog

from .records import person_annotation, query_record, set_metadata

__all__ = ["GALLERY_SIZES", "load_cuhk_sysu", "register_cuhk_sysu"]

logger = logging.getLogger(__name__)

GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)


def _unwrap(x):
    """loadmat nests cell and struct contents in size-1 object arrays of any depth."""
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.flat[0]
    return x


def _text(x) -> str:
    x = _unwrap(x)
    while isinstance(x, np.ndarray) and x.size == 1:  # a char array
        x = x.flat[0]
    return str(x)


def _load(path: str, key: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing CUHK-SYSU annotation file")
    mat = loadmat(path)
    if key not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise KeyError(f"{path}: expected key {key!r}, found {keys}")
    return mat[key].squeeze()


def _field(item, name: str, path: str):
    try:
        return item[name]
    except (ValueError, IndexError, KeyError):
        raise KeyError(f"{path}: entries need the field {name!r}") from None


def _xywh(box, path: str, where: str) -> np.ndarray:
    box = np.asarray(_unwrap(box), dtype=np.float64).ravel()
    if box.size != 4:
        raise ValueError(f"{path}: {where}: idlocate must be 4 numbers (x, y, w, h), got {box}")
    return box


def _read_images(root: str) -> Dict[str, np.ndarray]:
    """imname -> (K, 4) xywh boxes of every person of Images.mat."""
    path = os.path.join(root, "annotation", "Images.mat")
    boxes, dropped = {}, 0
    for img in np.atleast_1d(_load(path, "Img")):
        name = _text(_field(img, "imname", path))
        people = np.atleast_1d(_field(img, "box", path).squeeze())
        xywh = np.stack([_xywh(_field(p, "idlocate", path), path, name) for p in people])
        valid = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        dropped += int((~valid).sum())
        boxes[name] = xywh[valid]
    if dropped:
        logger.info(f"{path}: {dropped} boxes with a non-positive width or height are not persons")
    return boxes


def _assign(pids: Dict, boxes: Dict, name: str, box: np.ndarray, pid: int, path: str):
    if name not in boxes:
        raise KeyError(f"{path}: image {name!r} (identity {pid}) is not in Images.mat")
    match = np.nonzero(np.all(boxes[name] == box, axis=1))[0]
    if len(match) == 0:
        raise ValueError(
            f"{path}: box {box.tolist()} of identity {pid} in {name} is not in Images.mat"
        )
    pids[name][match[0]] = pid


def _testg(root: str, size: int):
    path = os.path.join(root, "annotation", "test", "train_test", f"TestG{size}.mat")
    return _load(path, f"TestG{size}"), path


def load_cuhk_sysu(root: str, split: str, gallery_size: int = 100) -> List[Dict]:
    """
    Args:
        root: the CUHK-SYSU folder.
        split: "train" or "test".
        gallery_size: for "test", which TestG<N> protocol gives the per-query galleries.

    Returns:
        list[dict]: detectron2 dataset dicts (file_name, height, width, image_id = image name,
        annotations with XYXY_ABS bbox, category_id 0, person_id). For "test", the 6978 pool
        images are followed by one dict per query with ``query_boxes``, ``query_pid``,
        ``query_id``, empty ``annotations`` and ``gallery`` (the image ids of its TestG<N> list).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if split == "test" and gallery_size not in GALLERY_SIZES:
        raise ValueError(f"gallery_size must be one of {GALLERY_SIZES}, got {gallery_size}")
    boxes = _read_images(root)
    pids = {name: np.full(len(b), -1, dtype=np.int64) for name, b in boxes.items()}
    pool_path = os.path.join(root, "annotation", "pool.mat")
    pool = [_text(x) for x in np.atleast_1d(_load(pool_path, "pool"))]
    if split == "train":
        path = os.path.join(root, "annotation", "test", "train_test", "Train.mat")
        for pid, item in enumerate(np.atleast_1d(_load(path, "Train"))):
            # Each Train.mat cell holds a struct whose third field lists the identity's scenes.
            for scene in np.atleast_1d(np.asarray(item).flat[0][2].squeeze()):
                name = _text(_field(scene, "imname", path))
                _assign(
                    pids, boxes, name, _xywh(_field(scene, "idlocate", path), path, name), pid, path
                )
        names = sorted(set(boxes) - set(pool))
    else:
        protocol, path = _testg(root, 50)
        for pid, item in enumerate(np.atleast_1d(protocol)):
            query = _field(item, "Query", path).squeeze()
            name = _text(_field(query, "imname", path))
            _assign(
                pids, boxes, name, _xywh(_field(query, "idlocate", path), path, name), pid, path
            )
            for entry in np.atleast_1d(_field(item, "Gallery", path).squeeze()):
                box = np.asarray(_unwrap(_field(entry, "idlocate", path)))
                if box.size == 0:
                    break  # the images holding the person come first
                name = _text(_field(entry, "imname", path))
                _assign(pids, boxes, name, _xywh(box, path, name), pid, path)
        names = pool
    records = [_image_record(root, name, boxes, pids) for name in names]
    if split == "test":
        records += _queries(root, gallery_size, {r["image_id"]: r for r in records})
    return records


def _image_record(root: str, name: str, boxes: Dict, pids: Dict) -> Dict:
    if name not in boxes:
        raise KeyError(
            f"{os.path.join(root, 'annotation', 'pool.mat')}: {name!r} not in Images.mat"
        )
    file_name = os.path.join(root, "Image", "SSM", name)
    try:
        with Image.open(file_name) as im:
            width, height = im.size
    except OSError as e:
        raise FileNotFoundError(f"{file_name}: cannot read the image ({e})") from None
    xyxy = boxes[name].copy()
    xyxy[:, 2:] += xyxy[:, :2]
    outside = (xyxy[:, 0] < 0) | (xyxy[:, 1] < 0) | (xyxy[:, 2] > width) | (xyxy[:, 3] > height)
    if outside.any():
        raise ValueError(
            f"Images.mat: box {xyxy[outside][0].tolist()} (xyxy) of {name} lies outside its "
            f"{width}x{height} image"
        )
    return {
        "file_name": file_name,
        "height": height,
        "width": width,
        "image_id": name,
        "annotations": [person_annotation(b.tolist(), p) for b, p in zip(xyxy, pids[name])],
    }


def _queries(root: str, gallery_size: int, images: Dict) -> List[Dict]:
    protocol, path = _testg(root, gallery_size)
    queries = []
    for qid, item in enumerate(np.atleast_1d(protocol)):
        query = _field(item, "Query", path).squeeze()
        name = _text(_field(query, "imname", path))
        x, y, w, h = _xywh(_field(query, "idlocate", path), path, name)
        gallery = [
            _text(_field(e, "imname", path)) for e in np.atleast_1d(item["Gallery"].squeeze())
        ]
        unknown = [g for g in gallery + [name] if g not in images]
        if unknown:
            raise KeyError(f"{path}: query {qid} names images not in pool.mat: {unknown[:3]}")
        image = images[name]
        labels = [a["person_id"] for a in image["annotations"] if a["bbox"] == [x, y, x + w, y + h]]
        if labels != [qid]:
            raise ValueError(
                f"{path}: query {qid} ({name}, box {[x, y, w, h]}) is not identity {qid} of "
                "TestG50.mat: the protocol files disagree on the query order"
            )
        queries.append(query_record(image, [x, y, x + w, y + h], qid, qid, gallery=gallery))
    return queries


def register_cuhk_sysu(name: str, root: str):
    """
    Register ``<name>_train``, ``<name>_test_<N>`` for each gallery size N and ``<name>_test``
    (gallery size 100, the literature's default). Files are read only when a set is loaded.
    """
    splits = {f"{name}_train": ("train", 100), f"{name}_test": ("test", 100)}
    splits.update({f"{name}_test_{n}": ("test", n) for n in GALLERY_SIZES})
    for dataset_name, (split, size) in splits.items():
        DatasetCatalog.register(
            dataset_name, lambda split=split, size=size: load_cuhk_sysu(root, split, size)
        )
        set_metadata(
            dataset_name,
            ("all",),
            image_root=os.path.join(root, "Image", "SSM"),
            gallery_size=size if split == "test" else None,
        )
