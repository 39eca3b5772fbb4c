"""Tiny-ImageNet-200 decoded once into uint8 arrays, so it trains like CIFAR (on the device).

The first load decodes every training and validation JPEG (through a DataLoader with the
config's ``num_workers``) into ``(N, 3, 64, 64)`` uint8 arrays and writes them beside the data,
``<data_root>/tiny-imagenet200/.cache-<key>-{train,val}.npy``, atomically (``io.atomic_write_with``).
``<key>`` is a hash of every image's relative path, size, modification time and label, so an
added, removed, replaced or relabelled image gives another key: the cache is rebuilt and the old
files are deleted. Later loads read the arrays with ``np.load(..., allow_pickle=False)`` and
decode no JPEG. The labels come from the lists (``data.load_tiny_imagenet_lists``), in their order.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from .errors import RdfcilError
from .io import atomic_write_with

SIZE = 64


def cache_key(base: Path, paths: list[str], labels: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for path, label in zip(paths, labels.tolist()):
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, base)}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n".encode())
    return digest.hexdigest()[:16]


def cache_path(base: Path, key: str, split: str) -> Path:
    return base / f".cache-{key}-{split}.npy"


def decode(paths: list[str], num_workers: int = 0) -> np.ndarray:
    """Every image as uint8 RGB (N, 3, 64, 64); a differently sized image is resized (bilinear)."""
    from .data import _FileDataset

    def to_array(image):
        if image.size != (SIZE, SIZE):
            image = image.resize((SIZE, SIZE))
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())
    dataset = _FileDataset(paths, torch.zeros(len(paths), dtype=torch.long), to_array)
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=num_workers)
    out = np.empty((len(paths), 3, SIZE, SIZE), dtype=np.uint8)
    start = 0
    for images, _ in loader:
        out[start:start + len(images)] = images.numpy()
        start += len(images)
    return out


def read_cache(path: Path, n: int) -> np.ndarray | None:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # absent, or not a numpy file: rebuilt
    return array if array.shape == (n, 3, SIZE, SIZE) and array.dtype == np.uint8 else None


def tiny_imagenet_arrays(root: Path, num_workers: int = 0):
    """``(x_train, y_train, x_val, y_val)``: uint8 image tensors and labels, from the cache
    when it matches the folder, else decoded and cached."""
    from .data import load_tiny_imagenet_lists
    base = Path(root) / "tiny-imagenet200"
    p_tr, y_tr, p_te, y_te = load_tiny_imagenet_lists(Path(root))
    try:
        key = cache_key(base, p_tr + p_te, torch.cat([y_tr, y_te]))
    except FileNotFoundError as err:
        raise RdfcilError(f"tiny-imagenet200: missing '{err.filename}' (listed in val_annotations.txt)") from None
    arrays = []
    for split, paths in (("train", p_tr), ("val", p_te)):
        path = cache_path(base, key, split)
        array = read_cache(path, len(paths))
        if array is None:
            array = decode(paths, num_workers)
            atomic_write_with(path, lambda handle, a=array: np.save(handle, a, allow_pickle=False))
        arrays.append(torch.from_numpy(array))
    for stale in base.glob(".cache-*.npy"):
        if f"-{key}-" not in stale.name:
            stale.unlink(missing_ok=True)
    return arrays[0], y_tr, arrays[1], y_te
