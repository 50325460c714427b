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
entry without a box only for labelling; the search protocol uses the whole list. An image of
Images.mat with an empty box list is valid (an image without persons).

Rejected with an :class:`~.checks.AnnotationError` naming the file and the entry (a missing file
stays a FileNotFoundError naming it): a .mat scipy cannot read, a missing key or struct field, an
image name that is not a string, an idlocate that is not 4 finite numbers, an image twice in
Images.mat, a pool.mat entry twice, a TestG gallery listing an image twice, a Train.mat identity
with no scene, an identity given two boxes of one image or one image twice, a box given two
identities, and (as before) a labeled box not in Images.mat, a box outside its image, a pool or
gallery image not in Images.mat / pool.mat, TestG<N> queries in another order than TestG50's.
"""

import logging
import os
from typing import Dict, List

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog

from .checks import AnnotationError, first_duplicate, load_mat
from .records import person_annotation, query_record, set_metadata

__all__ = ["GALLERY_SIZES", "load_cuhk_sysu", "register_cuhk_sysu"]

logger = logging.getLogger(__name__)

GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)


def _unwrap(x):
    """loadmat nests cell and struct contents in size-1 object arrays of any depth."""
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.flat[0]
    return x


def _text(x, path: str, where: str) -> str:
    """A loadmat string (a char array, maybe wrapped in cells); anything else is an error."""
    x = _unwrap(x)
    if isinstance(x, np.ndarray) and x.dtype.kind == "U" and x.size == 1:
        x = x.flat[0]
    if not isinstance(x, str) or not x:
        raise AnnotationError(path, f"{where}: an image name must be a string, got {x!r:.60}")
    return str(x)


def _load(path: str, key: str) -> np.ndarray:
    mat = load_mat(path)
    if key not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise AnnotationError(path, f"expected key {key!r}, found {keys}")
    return mat[key].squeeze()


def _field(item, name: str, path: str, where: str = "entries"):
    try:
        return item[name]
    except (ValueError, IndexError, KeyError, TypeError):  # not a struct, or another struct
        raise AnnotationError(path, f"{where} need the field {name!r}") from None


def _xywh(box, path: str, where: str) -> np.ndarray:
    try:
        box = np.asarray(_unwrap(box), dtype=np.float64).ravel()
    except (ValueError, TypeError):  # text, nested cells, structs
        box = np.zeros(0)
    if box.size != 4 or not np.isfinite(box).all():
        raise AnnotationError(
            path, f"{where}: idlocate must be 4 finite numbers (x, y, w, h), got {box}"
        )
    return box


def _read_images(root: str) -> Dict[str, np.ndarray]:
    """imname -> (K, 4) xywh boxes of every person of Images.mat (K may be 0)."""
    path = os.path.join(root, "annotation", "Images.mat")
    boxes, dropped = {}, 0
    for index, img in enumerate(np.atleast_1d(_load(path, "Img"))):
        name = _text(_field(img, "imname", path), path, f"Img[{index}]")
        if name in boxes:
            raise AnnotationError(path, f"Img[{index}]: image {name!r} listed twice")
        people = np.atleast_1d(np.asarray(_field(img, "box", path)).squeeze())
        if people.size == 0:
            boxes[name] = np.zeros((0, 4))
            continue
        xywh = np.stack(
            [_xywh(_field(p, "idlocate", path, f"{name} boxes"), path, name) for p in people]
        )
        valid = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        dropped += int((~valid).sum())
        boxes[name] = xywh[valid]
    if dropped:
        logger.info(f"{path}: {dropped} boxes with a non-positive width or height are not persons")
    return boxes


def _assign(pids: Dict, boxes: Dict, name: str, box: np.ndarray, pid: int, path: str):
    """Give identity ``pid`` to the Images.mat box of ``name`` equal to ``box``."""
    # Train.mat and TestG*.mat lie in <root>/annotation/test/train_test/, Images.mat in annotation/.
    images = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(path))), "Images.mat")
    if name not in boxes:
        raise AnnotationError(path, f"image {name!r} (identity {pid}) is not in {images}")
    match = np.nonzero(np.all(boxes[name] == box, axis=1))[0]
    if len(match) == 0:
        raise AnnotationError(
            path, f"box {box.tolist()} of identity {pid} in {name} is not in {images}"
        )
    labels = pids[name]
    if labels[match[0]] == pid:
        raise AnnotationError(path, f"identity {pid} lists {name} twice")
    if labels[match[0]] != -1:
        raise AnnotationError(
            path,
            f"box {box.tolist()} of {name} is given identities {labels[match[0]]} and {pid}",
        )
    if pid in labels:
        raise AnnotationError(path, f"identity {pid} has two boxes in {name}")
    labels[match[0]] = pid


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
    pool = _read_pool(root)
    if split == "train":
        _label_train(root, boxes, pids)
        names = sorted(set(boxes) - set(pool))
    else:
        _label_test(root, boxes, pids)
        names = pool
    records = [_image_record(root, name, boxes, pids) for name in names]
    if split == "test":
        records += _queries(root, gallery_size, {r["image_id"]: r for r in records})
    return records


def _read_pool(root: str) -> List[str]:
    path = os.path.join(root, "annotation", "pool.mat")
    pool = [_text(x, path, f"pool[{i}]") for i, x in enumerate(np.atleast_1d(_load(path, "pool")))]
    pair = first_duplicate(pool)
    if pair is not None:
        raise AnnotationError(
            path, f"pool[{pair[1]}]: image {pool[pair[1]]!r} listed twice (also [{pair[0]}])"
        )
    return pool


def _squeezed(item, name: str, path: str, where: str) -> np.ndarray:
    return np.atleast_1d(np.asarray(_field(item, name, path, where)).squeeze())


def _label_train(root: str, boxes: Dict, pids: Dict) -> None:
    """Identity i of Train.mat (0-based) on each of its scenes' boxes."""
    path = os.path.join(root, "annotation", "test", "train_test", "Train.mat")
    for pid, item in enumerate(np.atleast_1d(_load(path, "Train"))):
        # Each Train.mat cell holds a struct whose third field lists the identity's scenes.
        try:
            scenes = np.atleast_1d(np.asarray(np.asarray(item).flat[0][2]).squeeze())
        except (IndexError, KeyError, TypeError, ValueError):
            raise AnnotationError(
                path, f"Train[{pid}]: not a struct (idname, nAppear, scene)"
            ) from None
        if scenes.size == 0:
            raise AnnotationError(path, f"Train[{pid}]: an identity with no scene")
        for scene in scenes:
            name = _text(
                _field(scene, "imname", path, f"Train[{pid}] scenes"), path, f"Train[{pid}]"
            )
            box = _xywh(_field(scene, "idlocate", path, f"Train[{pid}] scenes"), path, name)
            _assign(pids, boxes, name, box, pid, path)


def _label_test(root: str, boxes: Dict, pids: Dict) -> None:
    """Identity i of TestG50.mat (0-based) on its query box and its gallery's person boxes."""
    protocol, path = _testg(root, 50)
    for pid, item in enumerate(np.atleast_1d(protocol)):
        where = f"TestG50[{pid}]"
        query = _squeezed(item, "Query", path, where)[0]
        name = _text(_field(query, "imname", path, f"{where} Query"), path, where)
        box = _xywh(_field(query, "idlocate", path, f"{where} Query"), path, name)
        _assign(pids, boxes, name, box, pid, path)
        for entry in _squeezed(item, "Gallery", path, where):
            box = np.asarray(_unwrap(_field(entry, "idlocate", path, f"{where} Gallery")))
            if box.size == 0:
                break  # the images holding the person come first
            name = _text(_field(entry, "imname", path, f"{where} Gallery"), path, where)
            _assign(pids, boxes, name, _xywh(box, path, name), pid, path)


def _image_record(root: str, name: str, boxes: Dict, pids: Dict) -> Dict:
    images = os.path.join(root, "annotation", "Images.mat")
    if name not in boxes:
        pool = os.path.join(root, "annotation", "pool.mat")
        raise AnnotationError(pool, f"{name!r} not in {images}")
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
        raise AnnotationError(
            images,
            f"box {xyxy[outside][0].tolist()} (xyxy) of {name} lies outside its "
            f"{width}x{height} image",
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
    pool = os.path.join(root, "annotation", "pool.mat")
    queries = []
    for qid, item in enumerate(np.atleast_1d(protocol)):
        where = f"TestG{gallery_size}[{qid}]"
        query = _squeezed(item, "Query", path, where)[0]
        name = _text(_field(query, "imname", path, f"{where} Query"), path, where)
        x, y, w, h = _xywh(_field(query, "idlocate", path, f"{where} Query"), path, name)
        gallery = [
            _text(_field(e, "imname", path, f"{where} Gallery"), path, where)
            for e in _squeezed(item, "Gallery", path, where)
        ]
        pair = first_duplicate(gallery)
        if pair is not None:
            raise AnnotationError(path, f"{where}: Gallery lists {gallery[pair[1]]!r} twice")
        unknown = [g for g in gallery + [name] if g not in images]
        if unknown:
            raise AnnotationError(path, f"{where} names images not in {pool}: {unknown[:3]}")
        image = images[name]
        labels = [a["person_id"] for a in image["annotations"] if a["bbox"] == [x, y, x + w, y + h]]
        if labels != [qid]:
            raise AnnotationError(
                path,
                f"query {qid} ({name}, box {[x, y, w, h]}) is not identity {qid} of "
                "TestG50.mat: the protocol files disagree on the query order",
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
