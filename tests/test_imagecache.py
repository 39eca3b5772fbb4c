"""Tiny-ImageNet decoded once into a uint8 cache (rebuilt when the folder changes) and kept on
the device like CIFAR; ImageNet-100's DataLoader keeps its workers across epochs."""

import os

import numpy as np
import pytest
import torch

from rdfcil import data, imagecache
from rdfcil.config import resolve


def bench(root, **more):
    return data.load_benchmark(resolve({"dataset": "tiny-imagenet200", "data_root": str(root), "tasks": 10,
                                        "num_workers": 0, **more}), "cpu")


def no_jpeg(monkeypatch):
    import PIL.Image

    def refuse(*a, **k):
        raise AssertionError("a JPEG was decoded")
    monkeypatch.setattr(PIL.Image, "open", refuse)


def test_tiny_imagenet_is_cached_once_and_kept_as_tensors(tmp_path, monkeypatch):
    base = data.write_standin("tiny-imagenet200", tmp_path, (2, 1))
    first = bench(tmp_path)
    caches = sorted(p.name for p in base.glob(".cache-*.npy"))
    assert len(caches) == 2 and caches[0].endswith("-train.npy") and caches[1].endswith("-val.npy")
    assert isinstance(first.train, data.TensorImages) and first.train.images.dtype == torch.uint8
    assert first.train.images.shape == (400, 3, 64, 64) and len(first.test) == 200
    # the cache holds the decoded JPEGs, in the order of the lists
    p_tr, y_tr, _, _ = data.load_tiny_imagenet_lists(tmp_path)
    assert np.array_equal(first.train.images.numpy(), imagecache.decode(p_tr))
    no_jpeg(monkeypatch)  # from now on nothing may decode a JPEG
    second = bench(tmp_path)
    assert torch.equal(second.train.images, first.train.images) and torch.equal(second.train.labels, first.train.labels)
    x, y = next(second.train.batches(range(0, 20), 16, shuffle=True, augment=True, generator=torch.Generator()))
    assert x.shape == (16, 3, 64, 64) and x.dtype == torch.float32
    arrays = np.load(base / caches[0], allow_pickle=False)  # a plain numpy file, no pickle
    assert arrays.dtype == np.uint8


def test_a_changed_folder_rebuilds_the_cache(tmp_path):
    base = data.write_standin("tiny-imagenet200", tmp_path, (2, 1))
    bench(tmp_path)
    old = sorted(base.glob(".cache-*.npy"))
    image = sorted((base / "train").glob("*/images/*.JPEG"))[0]
    from PIL import Image
    Image.new("RGB", (64, 64), (255, 0, 0)).save(image, "JPEG", quality=100)
    os.utime(image, ns=(1, 1))  # even with an odd mtime: the size changed
    again = bench(tmp_path)
    new = sorted(base.glob(".cache-*.npy"))
    assert len(new) == 2 and set(new).isdisjoint(old)  # rebuilt under a new key, the old files removed
    p_tr = data.load_tiny_imagenet_lists(tmp_path)[0]
    row = p_tr.index(str(image))
    assert again.train.images[row, 0].float().mean() > 240 and again.train.images[row, 1].float().mean() < 15


def test_a_torn_cache_file_is_rebuilt(tmp_path):
    base = data.write_standin("tiny-imagenet200", tmp_path, (2, 1))
    first = bench(tmp_path)
    train = sorted(base.glob(".cache-*-train.npy"))[0]
    train.write_bytes(train.read_bytes()[:1000])
    again = bench(tmp_path)
    assert torch.equal(again.train.images, first.train.images)


def test_imagenet_loader_keeps_its_workers_across_epochs(tmp_path):
    base = data.write_standin("tiny-imagenet200", tmp_path, (2, 1))
    paths = [str(p) for p in sorted((base / "train").glob("*/images/*.JPEG"))[:8]]
    store = data.FolderImages(paths, torch.arange(8) % 2, data.SPECS["tiny-imagenet200"], "cpu", True, num_workers=1)
    generator = torch.Generator().manual_seed(0)
    epochs = [[y for _, y in store.batches(range(0, 2), 4, shuffle=True, generator=generator)] for _ in range(2)]
    loader = store._loader
    assert loader.persistent_workers and not loader.pin_memory  # pinned on CUDA only
    list(store.batches(range(0, 2), 4, shuffle=True, generator=generator))
    assert store._loader is loader  # the same loader (and workers) for every epoch of a phase
    assert sorted(torch.cat(epochs[0]).tolist()) == sorted(torch.cat(epochs[1]).tolist())
    list(store.batches(range(0, 2), 4))
    assert store._loader is not loader  # another phase: another loader
