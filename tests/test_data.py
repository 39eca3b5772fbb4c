"""Tests of rdfcil/data.py: loaders fed tiny files in each official format, class orders, task
splits, on-device augmentation and batching, per-class subsampling.

Every dataset file is written here into tmp_path in the format the real dataset ships in, and
read back through the real loaders; nothing touches the network.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rdfcil import config as rconfig
from rdfcil import data
from rdfcil.errors import RdfcilError

SHARED_ORDERS = Path("/work/shared/data/class_orders.json")
CIFAR_ORDER0_HEAD = [23, 8, 11]


def make_config(**overrides):
    return rconfig.resolve({"num_workers": 0, **overrides})


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any torchvision download attempt fails at once (and is recorded) instead of using the network."""
    import torchvision.datasets

    calls = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", refuse)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", refuse)
    return calls


# --------------------------------------------------------------------------- file writers

def write_cifar100(root: Path, per_class_train: int = 2, per_class_test: int = 1, seed: int = 0):
    """torchvision's cifar-100-python pickles: {b'data': N x 3072 uint8, b'fine_labels': [...]}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class))
        images = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        entry = {b"filenames": [f"{i}.png".encode() for i in range(len(labels))],
                 b"batch_label": split.encode(), b"fine_labels": labels.tolist(),
                 b"coarse_labels": (labels // 5).tolist(), b"data": images}
        with open(folder / split, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
        out[split] = (images, labels)
    return out


def python2_cifar_bytes(images: np.ndarray, labels: list[int]) -> bytes:
    """The stream Python 2's cPickle (protocol 2) wrote for cifar-100-python, opcode by opcode:
    keys and the raw image bytes are Python 2 str (SHORT_BINSTRING / BINSTRING), the array is
    numpy.core.multiarray._reconstruct + BUILD with a numpy.dtype (the memo opcodes left out)."""
    def text(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b

    def integer(i: int) -> bytes:
        return b"J" + struct.pack("<i", i)

    dtype = (b"cnumpy\ndtype\n" + text(b"u1") + integer(0) + integer(1) + b"\x87R"
             + b"(" + integer(3) + text(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + text(b"b")
             + b"\x87R(" + integer(1) + integer(images.shape[0]) + integer(images.shape[1]) + b"\x86"
             + dtype + b"\x89" + text(images.tobytes()) + b"tb")
    fine = b"](" + b"".join(integer(int(c)) for c in labels) + b"e"
    return b"\x80\x02}(" + text(b"data") + array + text(b"fine_labels") + fine + b"u."


def write_jpeg(path: Path, size: int, color) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), tuple(int(c) for c in color)).save(path, "JPEG", quality=95)


def tiny_wnids(n: int = 200) -> list[str]:
    # line order differs from sorted order, so "label = line number" is actually tested
    return [f"n{9000 - 7 * i:08d}" for i in range(n)]


def write_tiny_imagenet(root: Path):
    """The cs231n tree; train image of line i is a solid (i, 255 - i, 128) square."""
    base = root / "tiny-imagenet200"
    base.mkdir(parents=True)
    wnids = tiny_wnids()
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for i, wnid in enumerate(wnids):
        write_jpeg(base / "train" / wnid / "images" / f"{wnid}_0.JPEG", 64, (i, 255 - i, 128))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    val_wnid_index = [(7 * i) % 200 for i in range(200)]
    lines = []
    for i, k in enumerate(val_wnid_index):
        write_jpeg(base / "val" / "images" / f"val_{i}.JPEG", 64, (k, 255 - k, 64))
        lines.append(f"val_{i}.JPEG\t{wnids[k]}\t{i % 10}\t{i % 7}\t{50 + i % 13}\t{60 - i % 3}")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids, val_wnid_index


def write_imagenet100(root: Path):
    """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG for the 100 wnids; class 0 has two train files."""
    base = root / "imagenet100"
    wnids = data.imagenet100_wnids()
    for label, wnid in enumerate(wnids):
        names = [f"{wnid}_{k}.JPEG" for k in ((10, 2) if label == 0 else (5,))]
        for name in names:
            write_jpeg(base / "train" / wnid / name, 32, (label, 100, 200))
        write_jpeg(base / "val" / wnid / f"ILSVRC2012_val_{label:08d}.JPEG", 32, (label, 50, 150))
    return base, wnids


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX (MNIST) format: 0x0000, type 0x08 (uint8), ndim, big-endian uint32 sizes, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_fashion_mnist(root: Path, gz: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder = root / "fashion-mnist"
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.permutation(np.repeat(np.arange(10), 3)).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.permutation(np.arange(10)).astype(np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / stem, array, gz)
    return folder, arrays


# --------------------------------------------------------------------------- CIFAR-100

def test_cifar100_pickle_raw_arrays(tmp_path):
    written = write_cifar100(tmp_path)
    x_tr, y_tr, x_te, y_te = data.load_cifar100_arrays(tmp_path, download=False)
    assert x_tr.shape == (200, 3, 32, 32) and x_tr.dtype == torch.uint8
    assert x_te.shape == (100, 3, 32, 32) and x_te.dtype == torch.uint8
    images, labels = written["train"]
    # row-major 3x32x32: byte 0 is R(0,0), byte 1024 is G(0,0), byte 32 + 5 is R(1,5)
    assert int(x_tr[7, 0, 0, 0]) == int(images[7, 0])
    assert int(x_tr[7, 1, 0, 0]) == int(images[7, 1024])
    assert int(x_tr[7, 2, 31, 31]) == int(images[7, 3071])
    assert int(x_tr[7, 0, 1, 5]) == int(images[7, 37])
    assert np.array_equal(x_tr.numpy().reshape(200, -1), images)
    assert y_tr.tolist() == labels.tolist()
    assert y_te.tolist() == written["test"][1].tolist()
    assert sorted(np.bincount(y_tr.numpy()).tolist()) == [2] * 100


def test_cifar100_benchmark_remaps_by_published_order(tmp_path, no_downloads):
    written = write_cifar100(tmp_path)
    bench = data.load_benchmark(make_config(dataset="cifar100", data_root=str(tmp_path), num_tasks=10), "cpu")
    assert no_downloads == []  # files present: no download attempted
    assert bench.class_order[:3] == CIFAR_ORDER0_HEAD
    assert bench.tasks == [range(10 * t, 10 * t + 10) for t in range(10)]
    images, labels = written["train"]
    assert bench.train.images.shape == (200, 3, 32, 32) and bench.train.images.dtype == torch.uint8
    assert np.array_equal(bench.train.images.numpy().reshape(200, -1), images)  # same order as file
    for original, remapped in ((23, 0), (8, 1), (11, 2)):
        where = np.flatnonzero(labels == original)
        assert len(where) == 2
        assert bench.train.labels[where].tolist() == [remapped, remapped]
    position = {c: i for i, c in enumerate(bench.class_order)}
    assert bench.train.labels.tolist() == [position[c] for c in labels.tolist()]
    assert bench.test.labels.tolist() == [position[c] for c in written["test"][1].tolist()]
    # the first task holds exactly the images of the first ten classes of the order
    first = set(bench.class_order[:10])
    assert set(bench.train.indices(bench.tasks[0]).tolist()) == {i for i, c in enumerate(labels) if c in first}
    assert bench.seen(2) == range(0, 30)


def test_cifar100_corrupt_pickle_is_rdfcil_error(tmp_path):
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    (folder / "train").write_bytes(b"not a pickle")
    (folder / "test").write_bytes(b"not a pickle")
    with pytest.raises(RdfcilError, match="is not a CIFAR-100 pickle") as err:
        data.load_cifar100_arrays(tmp_path, download=False)
    assert str(folder / "train") in str(err.value)


def test_cifar100_python2_cpickle_stream_loads(tmp_path):
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for split, n in (("train", 300), ("test", 100)):
        images = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 100).tolist()  # every class, as the real files hold
        (folder / split).write_bytes(python2_cifar_bytes(images, labels))
        written[split] = images, labels
    x_tr, y_tr, x_te, y_te = data.load_cifar100_arrays(tmp_path, download=False)
    assert np.array_equal(x_tr.numpy().reshape(300, -1), written["train"][0])
    assert y_tr.tolist() == written["train"][1] and y_te.tolist() == written["test"][1]
    assert np.array_equal(x_te.numpy().reshape(100, -1), written["test"][0])


def test_cifar_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return Path.touch, (marker,)

    root = tmp_path / "root"
    write_cifar100(root)
    train = root / "cifar100" / "cifar-100-python" / "train"
    entry = pickle.loads(train.read_bytes(), encoding="bytes")
    train.write_bytes(pickle.dumps({**entry, b"data": Payload()}, protocol=2))
    pickle.loads(train.read_bytes(), encoding="bytes")  # the payload is live: a plain unpickler runs it
    assert marker.exists()
    marker.unlink()

    with pytest.raises(RdfcilError) as err:
        data.load_cifar100_arrays(root, download=False)
    assert not marker.exists()
    assert str(train) in str(err.value) and "holds objects other than data" in str(err.value)

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "rdfcil", "run", "--dataset", "cifar100", "--data-root", str(root),
                           "--method", "finetune", "--tasks", "10", "--epochs", "2", "--refinement-epochs", "1",
                           "--milestones", "[1]", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"error: cifar100: '{train}' holds objects other than data (__builtin__.getattr); "
                                   "refused: loading it could run code; unpack cifar-100-python.tar.gz there again")
    assert not marker.exists() and not out.exists()


# --------------------------------------------------------------------------- Tiny-ImageNet-200

def test_tiny_imagenet_lists(tmp_path):
    wnids, val_index = write_tiny_imagenet(tmp_path)
    p_tr, y_tr, p_te, y_te = data.load_tiny_imagenet_lists(tmp_path)
    assert len(p_tr) == 200 and len(p_te) == 200
    assert y_tr.tolist() == list(range(200))  # one image per class, in wnids.txt line order
    for i in (0, 1, 57, 199):
        assert p_tr[i] == str(tmp_path / "tiny-imagenet200" / "train" / wnids[i] / "images" / f"{wnids[i]}_0.JPEG")
    assert y_te.tolist() == val_index
    assert p_te[3] == str(tmp_path / "tiny-imagenet200" / "val" / "images" / "val_3.JPEG")
    assert all(Path(p).is_file() for p in p_tr + p_te)


def test_tiny_imagenet_benchmark_batches(tmp_path):
    write_tiny_imagenet(tmp_path)
    bench = data.load_benchmark(
        make_config(dataset="tiny-imagenet200", data_root=str(tmp_path), num_tasks=10), "cpu")
    assert len(bench.train) == 200 and len(bench.test) == 200
    assert bench.tasks[0] == range(0, 20) and len(bench.tasks) == 10
    published = json.loads((data.PACKAGE_DIR / "class_orders.json").read_text())["orders"]["tiny-imagenet200"][0]
    assert bench.class_order == published
    batches = list(bench.train.batches(range(0, 20), 8))
    assert [len(y) for _, y in batches] == [8, 8, 4]
    x, y = batches[0]
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert all(0 <= int(v) < 20 for _, ys in batches for v in ys)
    assert sorted(int(v) for _, ys in batches for v in ys) == list(range(20))
    # the image carries its wnids.txt line in the red channel: it matches order[label]
    pixels = (bench.train.denormalize(x) * 255).round()
    for k in range(8):
        line = bench.class_order[int(y[k])]
        assert abs(float(pixels[k, 0, 32, 32]) - line) <= 3
        assert abs(float(pixels[k, 1, 32, 32]) - (255 - line)) <= 3
        assert abs(float(pixels[k, 2, 32, 32]) - 128) <= 3


def test_tiny_imagenet_missing_class_folder(tmp_path):
    wnids, _ = write_tiny_imagenet(tmp_path)
    folder = tmp_path / "tiny-imagenet200" / "train" / wnids[5] / "images"
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    with pytest.raises(RdfcilError) as err:
        data.load_tiny_imagenet_lists(tmp_path)
    assert str(folder) in str(err.value) and "expected layout" in str(err.value)


# --------------------------------------------------------------------------- ImageNet-100

def test_imagenet100_rebuilds_lists(tmp_path):
    base, wnids = write_imagenet100(tmp_path)
    assert not (base / "train_100.txt").exists()
    p_tr, y_tr, p_te, y_te = data.load_imagenet100_lists(tmp_path)
    train_lines = (base / "train_100.txt").read_text().splitlines()
    val_lines = (base / "val_100.txt").read_text().splitlines()
    assert len(train_lines) == 101 and len(val_lines) == 100
    assert train_lines[:3] == [f"train/{wnids[0]}/{wnids[0]}_10.JPEG 0",  # sorted file names
                               f"train/{wnids[0]}/{wnids[0]}_2.JPEG 0",
                               f"train/{wnids[1]}/{wnids[1]}_5.JPEG 1"]
    assert train_lines[-1] == f"train/{wnids[99]}/{wnids[99]}_5.JPEG 99"
    assert val_lines[42] == f"val/{wnids[42]}/ILSVRC2012_val_00000042.JPEG 42"
    assert y_tr.tolist() == [0] + list(range(100))
    assert y_te.tolist() == list(range(100))
    assert p_tr[2] == str(base / "train" / wnids[1] / f"{wnids[1]}_5.JPEG")
    assert all(Path(p).is_file() for p in p_tr + p_te)


def test_imagenet100_uses_given_lists(tmp_path):
    base, wnids = write_imagenet100(tmp_path)
    # PODNet-style lists in their own order (classes backwards, one image of class 0): read, not rebuilt
    train_text = "".join(f"train/{wnids[c]}/{wnids[c]}_{10 if c == 0 else 5}.JPEG {c}\n" for c in range(99, -1, -1))
    val_text = "".join(f"val/{wnids[c]}/ILSVRC2012_val_{c:08d}.JPEG {c}\n" for c in range(100))
    (base / "train_100.txt").write_text(train_text)
    (base / "val_100.txt").write_text(val_text)
    p_tr, y_tr, p_te, y_te = data.load_imagenet100_lists(tmp_path)
    assert (base / "train_100.txt").read_text() == train_text
    assert y_tr.tolist() == list(range(99, -1, -1)) and len(p_tr) == 100
    assert p_tr[0] == str(base / "train" / wnids[99] / f"{wnids[99]}_5.JPEG")
    assert y_te.tolist() == list(range(100))


def test_imagenet100_benchmark_test_batch(tmp_path):
    write_imagenet100(tmp_path)
    bench = data.load_benchmark(make_config(dataset="imagenet100", data_root=str(tmp_path), num_tasks=10), "cpu")
    assert len(bench.train) == 101 and len(bench.test) == 100
    assert bench.tasks[-1] == range(90, 100)
    x, y = next(iter(bench.test.batches(range(0, 10), 2)))
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    pixels = (bench.test.denormalize(x) * 255).round()
    for k in range(2):
        assert abs(float(pixels[k, 0, 112, 112]) - bench.class_order[int(y[k])]) <= 3
        assert abs(float(pixels[k, 1, 112, 112]) - 50) <= 3
    assert bench.test.num_batches(range(0, 10), 2) == 5


def test_imagenet100_missing_class_folder(tmp_path):
    base = tmp_path / "imagenet100"
    (base / "train").mkdir(parents=True)
    with pytest.raises(RdfcilError) as err:
        data.load_imagenet100_lists(tmp_path)
    assert str(base / "train" / data.imagenet100_wnids()[0]) in str(err.value)
    assert "train_100.txt" in str(err.value)


# --------------------------------------------------------------------------- IDX / Fashion-MNIST

@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_read_idx(tmp_path, gz):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5) * 7
    path = write_idx(tmp_path / "x-idx3-ubyte", array, gz)
    if not gz:  # the exact bytes of the format
        raw = path.read_bytes()
        assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:16] == b"\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x05"
    out = data.read_idx(path)
    assert out.shape == (2, 3, 5) and out.dtype == torch.uint8
    assert out.tolist() == array.tolist()
    assert int(out[1, 2, 4]) == (29 * 7) % 256
    labels = data.read_idx(write_idx(tmp_path / "y-idx1-ubyte", np.array([3, 0, 9], np.uint8), gz))
    assert labels.shape == (3,) and labels.tolist() == [3, 0, 9]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_fashion_mnist_benchmark(tmp_path, gz, no_downloads):
    folder, arrays = write_fashion_mnist(tmp_path, gz)
    assert data.fashion_mnist_folder(tmp_path, download=False) == folder
    bench = data.load_benchmark(make_config(dataset="fashion-mnist", data_root=str(tmp_path), num_tasks=5), "cpu")
    assert no_downloads == []
    assert bench.class_order == list(range(10))  # no published order: order 0 is the identity
    assert bench.tasks == [range(2 * t, 2 * t + 2) for t in range(5)]
    assert bench.train.images.shape == (30, 1, 28, 28) and bench.train.images.dtype == torch.uint8
    assert bench.test.images.shape == (10, 1, 28, 28)
    assert np.array_equal(bench.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(bench.test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert bench.train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert bench.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


@pytest.mark.parametrize("cut", ["body", "header", "gzip"])
def test_truncated_idx_is_rdfcil_error(tmp_path, cut):
    raw = idx_bytes(np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8))
    if cut == "body":
        path, payload = tmp_path / "train-images-idx3-ubyte", raw[:-100]
    elif cut == "header":
        path, payload = tmp_path / "train-images-idx3-ubyte", raw[:9]
    else:
        packed = gzip.compress(raw)
        path, payload = tmp_path / "train-images-idx3-ubyte.gz", packed[:len(packed) // 2]
    path.write_bytes(payload)
    with pytest.raises(RdfcilError) as err:
        data.read_idx(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    if cut == "body":
        assert "expected 7840 values, found 7740" in message


def test_fashion_mnist_truncated_file_through_benchmark(tmp_path):
    folder, _ = write_fashion_mnist(tmp_path, gz=False)
    target = folder / "t10k-images-idx3-ubyte"
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(RdfcilError) as err:
        data.load_benchmark(make_config(dataset="fashion-mnist", data_root=str(tmp_path)), "cpu")
    assert str(target) in str(err.value)


# --------------------------------------------------------------------------- missing data roots

@pytest.mark.parametrize("dataset, missing, layout", [
    ("cifar100", "cifar100/cifar-100-python/train", "cifar-100-python/{train,test}"),
    ("tiny-imagenet200", "tiny-imagenet200/wnids.txt", "val/val_annotations.txt"),
    ("imagenet100", "imagenet100", "train_100.txt"),
])
def test_missing_data_root(tmp_path, dataset, missing, layout, no_downloads):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(RdfcilError) as err:
        data.load_benchmark(make_config(dataset=dataset, data_root=str(root), num_tasks=10), "cpu")
    message = str(err.value)
    assert "\n" not in message
    assert f"'{root / missing}'" in message
    assert "expected layout" in message and layout in message
    if dataset == "cifar100":  # one download was tried (and refused by the fixture), then the error
        assert len(no_downloads) == 1 and no_downloads[0][1].get("download") is True


# --------------------------------------------------------------------------- digits

def test_digits_benchmark_fixed_stratified_split():
    bench = data.load_benchmark(make_config(dataset="digits"), "cpu")
    again = data.load_benchmark(make_config(dataset="digits"), "cpu")
    n_tr, n_te = len(bench.train), len(bench.test)
    assert n_tr + n_te == 1797
    assert 0.29 <= n_te / (n_tr + n_te) <= 0.31
    assert bench.train.images.shape == (n_tr, 1, 8, 8) and bench.train.images.dtype == torch.uint8
    assert bench.test.images.shape == (n_te, 1, 8, 8)
    assert int(bench.train.images.max()) == 255 and int(bench.train.images.min()) == 0
    assert bench.spec.num_classes == 10 and bench.class_order == list(range(10))
    assert torch.equal(bench.train.images, again.train.images)
    assert torch.equal(bench.test.labels, again.test.labels)
    tr_counts = torch.bincount(bench.train.labels, minlength=10)
    te_counts = torch.bincount(bench.test.labels, minlength=10)
    assert len(tr_counts) == 10 and (tr_counts > 0).all() and (te_counts > 0).all()
    fractions = te_counts.float() / (tr_counts + te_counts).float()
    assert ((fractions > 0.28) & (fractions < 0.32)).all()  # stratified
    assert bench.tasks == [range(2 * t, 2 * t + 2) for t in range(5)]


def test_digits_seeded_order_and_train_per_class():
    raw = data.load_digits_arrays()
    bench = data.load_benchmark(make_config(dataset="digits", class_order=3, train_per_class=20), "cpu")
    assert sorted(bench.class_order) == list(range(10)) and bench.class_order != list(range(10))
    assert len(bench.train) == 200
    assert torch.bincount(bench.train.labels).tolist() == [20] * 10
    position = {c: i for i, c in enumerate(bench.class_order)}
    assert bench.test.labels.tolist() == [position[c] for c in raw[3].tolist()]


# --------------------------------------------------------------------------- task splits

def test_task_sizes():
    assert data.task_sizes(100, 10, None) == [10] * 10
    assert data.task_sizes(100, 6, 50) == [50] + [10] * 5
    assert data.task_sizes(100, 11, 50) == [50] + [5] * 10
    assert data.task_sizes(100, 26, 50) == [50] + [2] * 25
    assert data.task_sizes(100, 1, None) == [100]
    assert data.task_sizes(100, 1, 100) == [100]
    assert data.task_sizes(200, 11, 100) == [100] + [10] * 10


@pytest.mark.parametrize("classes, tasks, first", [
    (100, 3, None), (100, 7, 50), (100, 1, 50), (100, 2, 100), (100, 5, 0), (100, 5, 101), (10, 0, None),
])
def test_task_sizes_invalid(classes, tasks, first):
    with pytest.raises(RdfcilError):
        data.task_sizes(classes, tasks, first)


@pytest.mark.parametrize("tasks, first, expected", [
    (10, None, [range(10 * t, 10 * t + 10) for t in range(10)]),
    (6, 50, [range(0, 50)] + [range(50 + 10 * t, 60 + 10 * t) for t in range(5)]),
    (11, 50, [range(0, 50)] + [range(50 + 5 * t, 55 + 5 * t) for t in range(10)]),
    (26, 50, [range(0, 50)] + [range(50 + 2 * t, 52 + 2 * t) for t in range(25)]),
])
def test_split_tasks_ranges(tasks, first, expected):
    order = list(range(99, -1, -1))
    labels = torch.arange(100).repeat(3)
    remapped, ranges = data.split_tasks(labels, order, tasks, first)
    assert len(ranges) == tasks and ranges == expected
    assert ranges[-1].stop == 100
    assert remapped.tolist() == [99 - c for c in labels.tolist()]


def test_split_tasks_remaps_small_example():
    order = [3, 0, 5, 1, 4, 2]
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 5, 3, 0], dtype=torch.uint8)
    remapped, ranges = data.split_tasks(labels, order, 3)
    assert remapped.dtype == torch.long
    assert remapped.tolist() == [1, 3, 5, 0, 4, 2, 2, 0, 1]
    assert ranges == [range(0, 2), range(2, 4), range(4, 6)]
    # task 0 owns original classes 3 and 0
    assert sorted({int(l) for l, r in zip(labels, remapped) if int(r) in ranges[0]}) == [0, 3]
    remapped, ranges = data.split_tasks(labels, order, 2, first_task_classes=4)
    assert ranges == [range(0, 4), range(4, 6)]
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 5, 3, 0]  # input untouched


def test_split_tasks_errors():
    with pytest.raises(RdfcilError, match="do not divide"):
        data.split_tasks(torch.arange(10), list(range(10)), 3)
    with pytest.raises(RdfcilError, match="equal tasks"):
        data.split_tasks(torch.arange(10), list(range(10)), 4, first_task_classes=5)
    with pytest.raises(RdfcilError, match="not in the class order"):
        data.split_tasks(torch.tensor([0, 1, 7]), list(range(4)), 2)


# --------------------------------------------------------------------------- class orders

def test_class_order_published_cifar100_matches_shared_file():
    if not SHARED_ORDERS.is_file():
        pytest.skip(f"{SHARED_ORDERS} not present")
    shared = json.loads(SHARED_ORDERS.read_text())["orders"]
    order = data.class_order("cifar100", 100, 0)
    assert order == shared["cifar100"][0]
    assert order[:3] == CIFAR_ORDER0_HEAD and sorted(order) == list(range(100))
    assert data.class_order("cifar100", 100, 2) == shared["cifar100"][2]
    assert data.class_order("tiny-imagenet200", 200, 0) == shared["tiny-imagenet200"][0]
    assert data.class_order("imagenet100", 100, 0) == shared["imagenet100"][0]


def test_class_order_user_list_and_errors():
    given = [2, 0, 1, 4, 3]
    assert data.class_order("digits", 5, given) == given
    assert data.class_order("cifar100", 5, (4, 3, 2, 1, 0)) == [4, 3, 2, 1, 0]
    for bad in ([0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 4, 5]):
        with pytest.raises(RdfcilError, match="permutation"):
            data.class_order("digits", 5, bad)
    with pytest.raises(RdfcilError, match="non-negative"):
        data.class_order("digits", 10, -1)
    with pytest.raises(RdfcilError, match="published class orders"):
        data.class_order("cifar100", 100, 3)


def test_class_order_seeded_for_digits():
    assert data.class_order("digits", 10, 0) == list(range(10))
    first = data.class_order("digits", 10, 3)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert data.class_order("digits", 10, 3) == first
    assert data.class_order("digits", 10, 4) != first


# --------------------------------------------------------------------------- augmentation

def coordinate_images(n: int, size: int) -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 holds column + 1 (0 is the padding)."""
    idx = torch.arange(1, size + 1, dtype=torch.uint8)
    image = torch.stack([idx[:, None].expand(size, size), idx[None, :].expand(size, size)])
    return image[None].repeat(n, 1, 1, 1)


def test_augment_batch_shifts_and_flips():
    n, size, p = 12000, 12, 4
    images = coordinate_images(n, size)
    out = data.augment_batch(images, p, True, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    c = size // 2
    step = out[:, 1, c, c + 1].long() - out[:, 1, c, c].long()
    assert set(step.tolist()) <= {-1, 1}
    flipped = step == -1
    assert abs(flipped.float().mean().item() - 0.5) < 0.02
    unflipped = torch.where(flipped[:, None, None, None], out.flip(3), out)
    dy = unflipped[:, 0, c, c].long() - (c + 1)
    dx = unflipped[:, 1, c, c].long() - (c + 1)
    assert int(dy.min()) == -p and int(dy.max()) == p
    assert int(dx.min()) == -p and int(dx.max()) == p
    expected = n / (2 * p + 1)
    for shifts in (dy, dx):
        counts = torch.bincount(shifts + p, minlength=2 * p + 1).double()
        assert len(counts) == 2 * p + 1 and (counts > 0).all()
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 26.1  # 8 degrees of freedom, p = 0.001
        assert ((counts - expected).abs() < 0.12 * expected).all()
    # every image is exactly its shifted original with zeros where the window leaves the image
    rows = torch.arange(size)
    for k in range(300):
        src_r, src_c = rows + int(dy[k]), rows + int(dx[k])
        valid = ((src_r >= 0) & (src_r < size))[:, None] & ((src_c >= 0) & (src_c < size))[None, :]
        want0 = torch.where(valid, (src_r + 1)[:, None].expand(size, size), torch.zeros(()).long())
        want1 = torch.where(valid, (src_c + 1)[None, :].expand(size, size), torch.zeros(()).long())
        assert torch.equal(unflipped[k, 0].long(), want0) and torch.equal(unflipped[k, 1].long(), want1)


def test_augment_batch_identity_and_flip_only():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(data.augment_batch(images, 0, False), images)
    out = data.augment_batch(images, 0, True, torch.Generator().manual_seed(0))
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    again = data.augment_batch(images, 0, True, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


# --------------------------------------------------------------------------- batches

def indexed_images(n: int = 200):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    labels = torch.arange(n) % 10
    return data.TensorImages(images, labels, data.SPECS["digits"], "cpu")


def recover_index(dataset, x) -> list[int]:
    return (dataset.denormalize(x) * 255).round().long()[:, 0, 0, 0].tolist()


def test_tensor_images_epoch_covers_classes_once():
    ds = indexed_images()
    classes = range(3, 7)
    wanted = [i for i in range(200) if 3 <= i % 10 < 7]
    generator = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):
        seen, sizes = [], []
        for x, y in ds.batches(classes, 7, shuffle=True, generator=generator, drop_last=False):
            assert x.dtype == torch.float32 and x.shape[1:] == (1, 4, 4)
            index = recover_index(ds, x)
            assert [i % 10 for i in index] == y.tolist()
            seen += index
            sizes.append(len(y))
        assert sorted(seen) == wanted  # each image of the classes exactly once, no other class
        assert sizes == [7] * 11 + [3]
        assert len(sizes) == ds.num_batches(classes, 7)
        epochs.append(seen)
    assert epochs[0] != wanted and epochs[0] != epochs[1]  # shuffled, differently each epoch
    plain = [i for x, _ in ds.batches(classes, 7) for i in recover_index(ds, x)]
    assert plain == wanted
    dropped = [len(y) for _, y in ds.batches(classes, 7, shuffle=True, drop_last=True)]
    assert dropped == [7] * 11 and ds.num_batches(classes, 7, drop_last=True) == 11


# --------------------------------------------------------------------------- subsampling

def test_subsample_per_class():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)[torch.randperm(20, generator=torch.Generator().manual_seed(5))]
    keep = data.subsample_per_class(labels, 5)
    assert keep.tolist() == sorted(keep.tolist()) and len(set(keep.tolist())) == len(keep)
    assert torch.bincount(labels[keep]).tolist() == [5, 3, 5]
    assert torch.equal(keep, data.subsample_per_class(labels, 5))
    assert torch.equal(keep, data.subsample_per_class(labels, 5, seed=0))
    others = {tuple(data.subsample_per_class(labels, 5, seed=s).tolist()) for s in range(1, 6)}
    assert len(others | {tuple(keep.tolist())}) > 1
    assert data.subsample_per_class(labels, 100).tolist() == list(range(20))


# --------------------------------------------------------------------------- published augmentation

def _cifar_store(value: int, crop_fill: str, color_jitter: bool = False):
    images = torch.full((256, 3, 8, 8), value, dtype=torch.uint8)
    store = data.TensorImages(images, torch.zeros(256, dtype=torch.long), data.SPECS["cifar100"], "cpu")
    store.crop_fill, store.color_jitter = crop_fill, color_jitter
    return store


def test_crop_fill_mean_pads_with_the_mean_colour_after_normalisation():
    """The published code normalises first, so the crop's padding is 0 in model space (the mean
    colour); ``crop_fill: zero`` pads the raw image with black, -mean/std in model space."""
    mean = torch.tensor(data.SPECS["cifar100"].mean).view(1, 3, 1, 1)
    std = torch.tensor(data.SPECS["cifar100"].std).view(1, 3, 1, 1)
    inside = (200 / 255 - mean) / std
    for fill, pad_value in (("mean", torch.zeros(1, 3, 1, 1)), ("zero", -mean / std)):
        store = _cifar_store(200, fill)
        x, _ = next(store.batches(range(0, 1), 256, augment=True, generator=torch.Generator().manual_seed(0)))
        pixels = x.permute(0, 2, 3, 1).reshape(-1, 3)
        is_inside = torch.isclose(pixels, inside.view(1, 3), atol=1e-5).all(1)
        is_pad = torch.isclose(pixels, pad_value.view(1, 3), atol=1e-5).all(1)
        assert (is_inside | is_pad).all() and is_pad.any() and is_inside.any(), fill


def test_paper_preset_crop_fill_reaches_the_training_images():
    c = rconfig.resolve({"dataset": "cifar100", "preset": "paper", "method": "rdfcil"})
    assert c.crop_fill == "mean" and not c.color_jitter
    c = rconfig.resolve({"dataset": "cifar100", "preset": "paper", "method": "abd"})
    assert c.crop_fill == "zero" and c.color_jitter  # ABD's scripts: PIL crop of the raw image, jitter


def test_color_jitter_factors_and_bounds():
    images = torch.randint(0, 256, (500, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = data.color_jitter(images, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
    again = data.color_jitter(images, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert torch.equal(data.color_jitter(images, 0.0, 0.0), images.float())  # no jitter: identity
    # brightness only on a constant grey image: a factor in [1 - 63/255, 1 + 63/255]
    grey = torch.full((500, 1, 2, 2), 100, dtype=torch.uint8)
    ratio = data.color_jitter(grey, contrast=0.0, generator=torch.Generator().manual_seed(2))[:, 0, 0, 0] / 100
    assert ratio.min() >= 1 - 63 / 255 - 1e-6 and ratio.max() <= 1 + 63 / 255 + 1e-6
    assert ratio.max() - ratio.min() > 0.4
    # contrast only keeps the grey mean of an unclipped image
    mid = torch.tensor([[[[100, 140], [120, 160]]]], dtype=torch.uint8).repeat(50, 1, 1, 1)
    c = data.color_jitter(mid, brightness=0.0, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(c.mean(dim=(1, 2, 3)), torch.full((50,), 130.0), atol=1e-4)


def test_imagenet_transform_is_resize_256_centre_crop_224_then_pad_4_crop_and_flip(tmp_path):
    from PIL import Image
    from torchvision import transforms as T
    spec = data.SPECS["imagenet100"]
    assert spec.crop_padding == 4 and spec.flip
    path = tmp_path / "a.JPEG"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path)
    store = data.FolderImages([str(path)] * 2, torch.tensor([0, 0]), spec, "cpu", True, num_workers=0)
    steps = store.transform().transforms
    assert [type(t) for t in steps] == [T.Resize, T.CenterCrop, T.PILToTensor]
    assert steps[0].size == 256 and tuple(steps[1].size) == (224, 224)
    plain, _ = next(store.batches(range(0, 1), 2))
    generator = torch.Generator().manual_seed(0)
    augmented, _ = next(store.batches(range(0, 1), 2, augment=True, generator=generator))
    assert plain.shape == augmented.shape == (2, 3, 224, 224)
    # each augmented image is the centre crop shifted by at most 4 pixels (mean-colour padding), maybe flipped
    for k in range(2):
        matched = False
        for image in (plain[k], plain[k].flip(2)):
            for dy in range(-4, 5):
                for dx in range(-4, 5):
                    shifted = torch.nn.functional.pad(image, (4, 4, 4, 4))[:, 4 + dy:228 + dy, 4 + dx:228 + dx]
                    matched |= torch.allclose(shifted, augmented[k], atol=1e-5)
        assert matched


def test_imagenet_crop_random_resized_is_abds_imagenet_pipeline(tmp_path):
    from PIL import Image
    from torchvision import transforms as T
    path = tmp_path / "a.JPEG"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path)
    store = data.FolderImages([str(path)] * 2, torch.tensor([0, 0]), data.SPECS["imagenet100"], "cpu", True,
                              num_workers=0)
    store.imagenet_crop = "random_resized"
    assert [type(t) for t in store.transform(augment=True).transforms] == \
        [T.RandomResizedCrop, T.RandomHorizontalFlip, T.PILToTensor]
    assert [type(t) for t in store.transform(augment=False).transforms] == [T.Resize, T.CenterCrop, T.PILToTensor]
    x, _ = next(store.batches(range(0, 1), 2, augment=True, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (2, 3, 224, 224)
    bench_config = rconfig.resolve({"dataset": "imagenet100", "preset": "paper", "method": "abd"})
    assert bench_config.imagenet_crop == "random_resized"
