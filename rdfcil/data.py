"""Datasets, class orders, class-incremental splits and batches on the run's device.

* A dataset is a :class:`DatasetSpec` (shape, normalisation, augmentation) plus a loader.
* Small datasets (digits, fashion-mnist, cifar100) are uint8 tensors moved to the device once
  and batched by slicing a device-side permutation, augmented on the device (airbench style).
* Tiny-ImageNet-200 is decoded once into a uint8 cache beside the data (``imagecache.py``) and
  then kept on the device like CIFAR; ImageNet-100 streams through a DataLoader with persistent
  workers and pinned memory.
* :func:`split_tasks` is a pure function: (labels, class order, tasks, first-task size) ->
  labels remapped to the order and the label range of each task. No dataset is mutated to
  change task; a task is a set of remapped labels.
"""

from __future__ import annotations

import gzip
import json
import pickle
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import RdfcilError
from .precision import channels_last

PACKAGE_DIR = Path(__file__).parent
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as the lab knows it: image shape, normalisation, augmentation, where it comes
    from and which preset it runs by default. :data:`SPECS` is the registry: adding a dataset
    is one entry there (plus its preset values in ``config``, and its published class orders,
    if any, in ``class_orders.json``)."""
    name: str
    image_size: int
    channels: int
    num_classes: int
    mean: tuple
    std: tuple
    crop_padding: int  # random crop with this padding (0: none); the fill is the config's crop_fill
    flip: bool  # random horizontal flip
    # (root, config) -> (train images, train labels, test images, test labels): uint8 N x C x H x W
    # tensors held in memory, or (for folder datasets, ``in_memory=False``) lists of image paths
    loader: Callable = field(compare=False, repr=False, default=None)
    in_memory: bool = True
    default_preset: str = "quick"  # the preset of a run that names none (notebooks, plans, bench-speed)
    class_names: tuple | None = None  # names of the original labels, where they have names
    train_per_class: int = 500  # training images per class of the full set (the sweep's work estimate)


# --------------------------------------------------------------------------- class orders

def published_orders(dataset: str) -> list[list[int]]:
    """The class orders of the published results (docs/methods/index.md, "The protocol"), empty if none."""
    orders = json.loads((PACKAGE_DIR / "class_orders.json").read_text())["orders"]
    return orders.get(dataset, [])


def class_order(dataset: str, num_classes: int, order) -> list[int]:
    """Resolve ``order``: a list is taken as given; an int picks the i-th published order, or,
    for datasets without published orders, seeds a permutation (0 is the identity)."""
    if isinstance(order, (list, tuple)):
        order = [int(c) for c in order]
        if sorted(order) != list(range(num_classes)):
            raise RdfcilError(f"class_order must be a permutation of 0..{num_classes - 1} "
                              f"(each label once); got {len(order)} entries")
        return order
    if not isinstance(order, int) or order < 0:
        raise RdfcilError(f"class_order must be a non-negative int or a list, got {order!r}")
    published = published_orders(dataset)
    if published:
        if order >= len(published):
            raise RdfcilError(f"{dataset} has {len(published)} published class orders; "
                              f"class_order must be in 0..{len(published) - 1}, got {order}")
        return list(published[order])
    if order == 0:
        return list(range(num_classes))
    generator = torch.Generator().manual_seed(order)
    return torch.randperm(num_classes, generator=generator).tolist()


# --------------------------------------------------------------------------- splits

def task_sizes(num_classes: int, num_tasks: int, first_task_classes: int | None) -> list[int]:
    """Class counts per task: ``first`` then equal shares of the rest, e.g. 50 + 5 x 10."""
    if num_tasks < 1:
        raise RdfcilError(f"num_tasks must be at least 1, got {num_tasks}")
    if first_task_classes is None:
        if num_classes % num_tasks:
            raise RdfcilError(f"{num_tasks} tasks do not divide {num_classes} classes; choose a "
                              f"divisor of {num_classes} or set first_task_classes")
        return [num_classes // num_tasks] * num_tasks
    if not 0 < first_task_classes <= num_classes:
        raise RdfcilError(f"first_task_classes must be in 1..{num_classes}, got {first_task_classes}")
    rest = num_classes - first_task_classes
    if num_tasks == 1:
        if rest:
            raise RdfcilError(f"one task must hold all {num_classes} classes, not {first_task_classes}")
        return [num_classes]
    if rest == 0 or rest % (num_tasks - 1):
        raise RdfcilError(f"the {rest} classes after the first task do not split into "
                          f"{num_tasks - 1} equal tasks; change num_tasks or first_task_classes")
    return [first_task_classes] + [rest // (num_tasks - 1)] * (num_tasks - 1)


def split_tasks(labels: torch.Tensor, order: Sequence[int], num_tasks: int,
                first_task_classes: int | None = None) -> tuple[torch.Tensor, list[range]]:
    """Remap ``labels`` so that ``order[i]`` becomes ``i``; cut the remapped labels into tasks.

    Returns the remapped labels and, per task ``t``, the contiguous label range it owns.
    """
    num_classes = len(order)
    sizes = task_sizes(num_classes, num_tasks, first_task_classes)
    lookup = torch.full((max(int(labels.max()) + 1, num_classes),), -1, dtype=torch.long)
    lookup[torch.as_tensor(order, dtype=torch.long)] = torch.arange(num_classes)
    remapped = lookup[labels.long().cpu()]
    if (remapped < 0).any():
        raise RdfcilError("the data holds labels that are not in the class order")
    bounds = np.cumsum([0] + sizes)
    return remapped, [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- batches

class LabelledImages:
    """What both image stores share: remapped labels, normalisation constants, class lookup."""

    def __init__(self, labels: torch.Tensor, spec: DatasetSpec, device):
        self.labels = labels
        self.spec = spec
        self.device = torch.device(device)
        self.mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
        self.crop_fill = "mean"  # "mean": pad after normalisation (published R-DFCIL); "zero": black pixels
        self.color_jitter = False  # ABD's scripts: colour jitter before the crop

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(x / 255 - mean) / std`` of uint8 (or 0..255 float) images; channels-last on CUDA."""
        return channels_last((images.float() / 255.0 - self.mean) / self.std)

    def augmented(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training augmentation of a uint8 batch, normalised: colour jitter (if on), then the
        random crop and flip of the dataset. With ``crop_fill = "mean"`` the crop pads the
        normalised batch with zeros, i.e. the mean colour (the published code normalises
        first); with ``"zero"`` it pads the raw image with black."""
        if self.color_jitter:
            images = color_jitter(images, generator=generator)
        if self.crop_fill == "mean":
            return channels_last(augment_batch(self.normalize(images), self.spec.crop_padding, self.spec.flip,
                                               generator))
        return self.normalize(augment_batch(images, self.spec.crop_padding, self.spec.flip, generator))

    def __len__(self) -> int:
        return len(self.labels)

    def indices(self, classes: range) -> torch.Tensor:
        """Positions of the images whose label lies in ``classes``."""
        mask = (self.labels >= classes.start) & (self.labels < classes.stop)
        return mask.nonzero().flatten()

    def num_batches(self, classes: range, batch_size: int, drop_last: bool = False) -> int:
        n = len(self.indices(classes))
        return n // batch_size if drop_last and n > batch_size else -(-n // batch_size)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space images back to [0, 1] (for figures)."""
        return (x * self.std.to(x.device) + self.mean.to(x.device)).clamp(0, 1)


class TensorImages(LabelledImages):
    """Images as a uint8 tensor (N, C, H, W) on the device, with remapped labels.

    Batches are index slices of a device-side permutation; augmentation (random crop,
    horizontal flip, optional colour jitter) runs on whole batches on the device, with the
    normalisation ``(x / 255 - mean) / std`` before the crop or after it (``crop_fill``).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec, device):
        super().__init__(labels.to(device), spec, device)
        self.images = images.to(device)

    def batches(self, classes: range, batch_size: int, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator:
        """Yield ``(x, y)`` float batches of the images in ``classes``."""
        index = self.indices(classes)
        if shuffle:
            index = index[host_to_device(torch.randperm(len(index), generator=generator, device="cpu"), self.device)]
        stop = len(index) - (len(index) % batch_size if drop_last and len(index) > batch_size else 0)
        for start in range(0, stop, batch_size):
            chosen = index[start:start + batch_size]
            images = self.images[chosen]
            x = self.augmented(images, generator) if augment else self.normalize(images)
            yield x, self.labels[chosen]


def host_to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """``tensor``, drawn on the host (the run's CPU generator), on ``device``. On CUDA the copy is
    from pinned memory and asynchronous, so the host does not wait for the GPU's queue (a plain
    ``.to("cuda")`` of pageable memory may); elsewhere ``tensor.to(device)``."""
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def color_jitter(images: torch.Tensor, brightness: float = 63 / 255, contrast: float = 0.8,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """torchvision's ``ColorJitter(brightness, contrast)`` (ABD's scripts) per image of a batch of
    0..255 images: brightness ``x * b``, contrast ``c x + (1 - c) mean(gray(x))``, factors uniform
    in ``[1 - brightness, 1 + brightness]`` and ``[1 - contrast, 1 + contrast]``, each result
    clipped to 0..255, the two in a random order per image. Returns floats (no rounding to uint8
    between the two, unlike PIL)."""
    n, device = len(images), images.device
    x = images.float()
    b = host_to_device(torch.empty(n).uniform_(max(0.0, 1 - brightness), 1 + brightness, generator=generator), device)
    c = host_to_device(torch.empty(n).uniform_(max(0.0, 1 - contrast), 1 + contrast, generator=generator), device)
    contrast_first = host_to_device(torch.rand(n, generator=generator) < 0.5, device)[:, None, None, None]
    b, c = b[:, None, None, None], c[:, None, None, None]

    def bright(t):
        return (t * b).clamp(0, 255)

    def contrasted(t):
        gray = t if t.shape[1] == 1 else (0.2989 * t[:, :1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3])
        return (c * t + (1 - c) * gray.mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 255)

    return torch.where(contrast_first, bright(contrasted(x)), contrasted(bright(x)))


def augment_batch(images: torch.Tensor, padding: int, flip: bool,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop of the zero-padded batch (shifts uniform in [-padding, padding] per axis) and
    a horizontal flip with probability 1/2, per image, on the batch's device."""
    n, _, h, w = images.shape
    device = images.device
    if padding:
        padded = torch.nn.functional.pad(images, (padding,) * 4)
        dy = host_to_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator), device)
        dx = host_to_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator), device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        images = padded[torch.arange(n, device=device)[:, None, None, None],
                        torch.arange(images.shape[1], device=device)[None, :, None, None], rows, cols]
    if flip:
        mask = host_to_device(torch.rand(n, generator=generator) < 0.5, device)[:, None, None, None]
        images = torch.where(mask, images.flip(3), images)
    return images


class FolderImages(LabelledImages):
    """Image files (paths + remapped labels) streamed through a DataLoader with workers."""

    def __init__(self, paths: list[str], labels: torch.Tensor, spec: DatasetSpec, device,
                 train: bool, num_workers: int = 4):
        super().__init__(labels.long(), spec, device)
        self.paths = list(paths)
        self.train = train
        self.num_workers = num_workers

    imagenet_crop = "center_pad"  # ImageNet-sized training crops; "random_resized": ABD's ImageNet script

    def random_resized(self, augment: bool) -> bool:
        return augment and self.spec.image_size >= 224 and self.imagenet_crop == "random_resized"

    def transform(self, augment: bool = False):
        """The deterministic part, as in the published code: resize 256 and centre-crop 224 for
        ImageNet-sized inputs, else resize to the input size. The random crop (padding 4) and
        flip run on the device on whole batches (``augmented``). With ``imagenet_crop =
        random_resized`` ImageNet-sized training images get ``RandomResizedCrop(224)`` and a flip
        instead (ABD's ImageNet script)."""
        from torchvision import transforms as T
        size = self.spec.image_size
        if self.random_resized(augment):
            return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()])
        steps = [T.Resize(256), T.CenterCrop(size)] if size >= 224 else [T.Resize((size, size))]
        return T.Compose(steps + [T.PILToTensor()])

    def batches(self, classes: range, batch_size: int, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator:
        """Yield ``(x, y)`` batches of the images in ``classes``. Every random draw comes from
        ``generator`` in this process: the order, and one seed per image for the random part of
        the decoding transform (``imagenet_crop = random_resized``), which the worker applies under
        that seed. So the batches do not depend on ``num_workers``, nor on the global seed."""
        key = (classes.start, classes.stop, batch_size, shuffle, augment, drop_last)
        if getattr(self, "_loader_key", None) != key:  # one loader per phase: its workers persist across epochs
            subset = _FileDataset([self.paths[i] for i in self.indices(classes).tolist()],
                                  self.labels[self.indices(classes)], self.transform(augment))
            self._sampler = _SeededSampler(len(subset), shuffle)
            self._loader = torch.utils.data.DataLoader(
                subset, batch_size=batch_size, sampler=self._sampler, drop_last=drop_last and len(subset) > batch_size,
                num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                persistent_workers=self.num_workers > 0,
                generator=torch.Generator().manual_seed(0))  # its worker seeds: drawn from no run's stream
            self._loader_key = key
        self._sampler.generator = generator
        loader = self._loader
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            on_device = augment and not self.random_resized(augment)
            yield (self.augmented(images, generator) if on_device else self.normalize(images)), labels.to(self.device, non_blocking=True)


class _SeededSampler(torch.utils.data.Sampler):
    """``(index, seed)`` pairs, drawn in the main process from ``generator`` (the run's): the
    order (a permutation with ``shuffle``) and one seed per image for its random transform."""

    def __init__(self, n: int, shuffle: bool):
        self.n, self.shuffle, self.generator = n, shuffle, None

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2 ** 62, (self.n,), generator=self.generator)
        return iter(zip(order.tolist(), seeds.tolist()))


class _FileDataset(torch.utils.data.Dataset):
    """Image files decoded by ``transform``; an item is an index, or ``(index, seed)``: the
    transform then draws its random numbers under that seed (torch's and Python's), whatever
    process applies it."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, item):
        from PIL import Image
        i, seed = item if isinstance(item, tuple) else (item, None)
        with Image.open(self.paths[i]) as image:
            image = image.convert("RGB")
            if seed is None:
                return self.transform(image), self.labels[i]
            state = random.getstate()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                try:
                    return self.transform(image), self.labels[i]
                finally:
                    random.setstate(state)


# --------------------------------------------------------------------------- loaders

def load_digits_arrays():
    """scikit-learn's bundled 8x8 digits, 0..16 scaled to uint8; a fixed stratified 70/30 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(images, bunch.target, test_size=0.3,
                                              stratify=bunch.target, random_state=0)
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (the MNIST format: magic, dims, big-endian sizes, uint8 data), .gz or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, gzip.BadGzipFile) as err:  # a cut or corrupt .gz
        raise RdfcilError(f"'{path}' is truncated or not gzip ({type(err).__name__})") from None
    if len(data) < 4:
        raise RdfcilError(f"'{path}' is not an IDX file (too short)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise RdfcilError(f"'{path}' is not a uint8 IDX file (magic {zero:#x}, type {dtype:#x})")
    if len(data) < 4 + 4 * ndim:
        raise RdfcilError(f"'{path}' is truncated: the header holds {ndim} sizes, the file ends before")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise RdfcilError(f"'{path}' is truncated: expected {int(np.prod(shape))} values, found {body.size}")
    return torch.from_numpy(body.reshape(shape).copy())


FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_folder(root: Path, download: bool = True) -> Path:
    """The first folder holding the four IDX files: <root>/fashion-mnist, the Debian package's
    /usr/share/datasets/fashion-mnist, torchvision's <root>/FashionMNIST/raw, else download."""
    candidates = [root / "fashion-mnist", SYSTEM_FASHION_MNIST, root / "FashionMNIST" / "raw"]
    for folder in candidates:
        if all(_find_idx(folder, stem) for stem in FASHION_FILES):
            return folder
    if download:
        try:
            from torchvision.datasets import FashionMNIST
            FashionMNIST(str(root), train=True, download=True)
            FashionMNIST(str(root), train=False, download=True)
            return root / "FashionMNIST" / "raw"
        except Exception:  # network closed: fall through to the one-line error
            pass
    raise RdfcilError(
        f"Fashion-MNIST not found: expected {', '.join(s + '[.gz]' for s in FASHION_FILES)} in "
        f"{root / 'fashion-mnist'} or {SYSTEM_FASHION_MNIST}, and the download failed; "
        "install it with 'apt-get install dataset-fashion-mnist' or copy the IDX files there")


def load_fashion_mnist_arrays(root: Path):
    folder = fashion_mnist_folder(root)
    x_tr, y_tr, x_te, y_te = (read_idx(_find_idx(folder, stem)) for stem in FASHION_FILES)
    for images, labels, stem in ((x_tr, y_tr, FASHION_FILES[1]), (x_te, y_te, FASHION_FILES[3])):
        check_label_counts("fashion-mnist", _find_idx(folder, stem), len(images), labels.numpy().astype(np.int64), 10)
    return x_tr[:, None], y_tr.long(), x_te[:, None], y_te.long()


def _missing(dataset: str, path: Path, layout: str, how: str) -> RdfcilError:
    return RdfcilError(f"{dataset}: missing '{path}'; expected layout {layout}; {how}")


CIFAR_LAYOUT = "<data_root>/cifar100/cifar-100-python/{train,test} (torchvision's pickles)"


class NotData(pickle.UnpicklingError):
    """A pickle names a global that :class:`CifarUnpickler` does not admit."""


def _latin1_encode(text: str, encoding: str) -> bytes:
    # Python 3's protocol 2 stores bytes as _codecs.encode(<str>, "latin1"); no other codec
    if encoding != "latin1":
        raise NotData(f"_codecs.encode to {encoding!r}")
    return text.encode("latin1")


class CifarUnpickler(pickle.Unpickler):
    """Reads what CIFAR-100's pickles hold and nothing else.

    Admitted: dicts, lists, tuples, bytes, str, ints, floats, booleans and None (pickle's own
    opcodes, no global involved); numpy arrays rebuilt from numpy's ``_reconstruct`` (named
    ``numpy.core.multiarray`` in the Python 2 files, ``numpy._core.multiarray`` by numpy 2),
    ``numpy.ndarray`` and ``numpy.dtype``; ``_codecs.encode`` to latin-1 only (bytes written by
    Python 3 with protocol 2). Any other global raises :class:`NotData` before it is imported,
    so a crafted file cannot run code.
    """

    def find_class(self, module: str, name: str):
        reconstruct = np.empty(0).__reduce__()[0]  # numpy's _reconstruct, wherever it lives
        admitted = {("numpy.core.multiarray", "_reconstruct"): reconstruct,
                    ("numpy._core.multiarray", "_reconstruct"): reconstruct,
                    ("numpy", "ndarray"): np.ndarray,
                    ("numpy", "dtype"): np.dtype,
                    ("_codecs", "encode"): _latin1_encode}
        if (module, name) not in admitted:
            raise NotData(f"{module}.{name}")
        return admitted[(module, name)]


def load_cifar100_arrays(root: Path, download: bool = True):
    """torchvision's CIFAR-100 pickles under <root>/cifar100/cifar-100-python, read with
    :class:`CifarUnpickler`: a file holding anything but data is refused, its code not run."""
    folder = root / "cifar100" / "cifar-100-python"
    if not (folder / "train").is_file() and download:
        try:
            from torchvision.datasets import CIFAR100
            CIFAR100(str(root / "cifar100"), train=True, download=True)
        except Exception:
            pass
    arrays = []
    for split in ("train", "test"):
        path = folder / split
        if not path.is_file():
            raise _missing("cifar100", path, CIFAR_LAYOUT,
                           "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/ "
                           "and unpack it there")
        try:
            with open(path, "rb") as handle:
                entry = CifarUnpickler(handle, encoding="bytes").load()
            data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # rows of 3072
            labels = np.asarray(entry[b"fine_labels"], dtype=np.int64)
        except NotData as err:
            raise RdfcilError(f"cifar100: '{path}' holds objects other than data ({err}); refused: "
                              "loading it could run code; unpack cifar-100-python.tar.gz there again") from None
        except Exception as err:
            raise RdfcilError(f"cifar100: '{path}' is not a CIFAR-100 pickle ({type(err).__name__})") from None
        check_label_counts("cifar100", path, len(data), labels, SPECS["cifar100"].num_classes)
        arrays += [torch.from_numpy(data.copy()), torch.from_numpy(labels)]
    return tuple(arrays)


def check_label_counts(dataset: str, path: Path, rows: int, labels: np.ndarray, num_classes: int) -> None:
    """One line unless ``path`` holds as many labels as images, every label in
    ``0..num_classes-1`` and every class at least once."""
    if rows != len(labels):
        raise RdfcilError(f"{dataset}: '{path}' holds {rows} images and {len(labels)} labels; unpack it again")
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if len(outside):
        raise RdfcilError(f"{dataset}: '{path}' holds label {int(outside[0])}, outside 0..{num_classes - 1} "
                          f"({len(outside)} such labels); unpack it again")
    present = np.unique(labels)
    if len(present) != num_classes:
        absent = sorted(set(range(num_classes)) - set(present.tolist()))
        raise _count_mismatch(dataset, path, "holds labels of", len(present), num_classes, f"none of label {absent[0]}")


TINY_LAYOUT = ("<data_root>/tiny-imagenet200/{wnids.txt, train/<wnid>/images/*.JPEG, "
               "val/images/*.JPEG, val/val_annotations.txt} or val/<wnid>/images/*.JPEG")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _count_mismatch(dataset: str, path: Path, what: str, found: int, expected: int, example=None) -> RdfcilError:
    named = f" (e.g. {example})" if example is not None else ""
    return RdfcilError(f"{dataset}: '{path}' {what} {found} of {expected} classes{named}; the files do not "
                       f"match each other; unpack the dataset again")


def load_tiny_imagenet_lists(root: Path):
    """The cs231n Tiny-ImageNet-200 tree: labels are line numbers in wnids.txt. The validation
    images are read from the official layout (``val/images/*.JPEG`` labelled by
    ``val/val_annotations.txt``) or from the re-organised one many scripts produce
    (``val/<wnid>/images/*.JPEG``, or ``val/<wnid>/*.JPEG``), with the same labels.

    The files are checked against each other: ``wnids.txt`` lists 200 distinct wnids, each
    has a training folder with images, and every annotation line (or validation folder) names
    a listed wnid and an image that exists. A mismatch is one :class:`RdfcilError` naming the
    file, the entry and the count."""
    base = root / "tiny-imagenet200"
    how = "download tiny-imagenet-200.zip from http://cs231n.stanford.edu/ and unzip it as tiny-imagenet200"
    for path in (base / "wnids.txt", base / "train", base / "val"):
        if not path.exists():
            raise _missing("tiny-imagenet200", path, TINY_LAYOUT, how)
    expected = SPECS["tiny-imagenet200"].num_classes
    wnids_file = base / "wnids.txt"
    wnids = wnids_file.read_text().split()
    if len(set(wnids)) != len(wnids):
        twice = next(w for w in wnids if wnids.count(w) > 1)
        raise RdfcilError(f"tiny-imagenet200: '{wnids_file}' lists '{twice}' twice; unpack the dataset again")
    folders = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    unlisted = sorted(set(folders) - set(wnids))
    if len(wnids) != expected or unlisted:
        example = f"'{unlisted[0]}' has a folder in train/ but no line" if unlisted else None
        raise _count_mismatch("tiny-imagenet200", wnids_file, "lists", len(wnids), expected, example)
    label_of = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        folder = base / "train" / wnid / "images"
        if not folder.is_dir():
            raise _missing("tiny-imagenet200", folder, TINY_LAYOUT, how)
        files = _images_in(folder)
        if not files:
            raise RdfcilError(f"tiny-imagenet200: '{folder}' holds no image of class '{wnid}'")
        train_paths += [str(p) for p in files]
        train_labels += [label_of[wnid]] * len(files)
    val_paths, val_labels = tiny_imagenet_val(base, label_of, how)
    return train_paths, torch.tensor(train_labels), val_paths, torch.tensor(val_labels)


def tiny_imagenet_val(base: Path, label_of: dict, how: str) -> tuple[list[str], list[int]]:
    """The validation images and labels, from the official layout or the re-organised one."""
    val = base / "val"
    annotations = val / "val_annotations.txt"
    if (val / "images").is_dir() and _images_in(val / "images"):
        if not annotations.is_file():
            raise _missing("tiny-imagenet200", annotations, TINY_LAYOUT, how)
        paths, labels = [], []
        for number, line in enumerate(annotations.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise RdfcilError(f"tiny-imagenet200: '{annotations}' line {number} is not '<file>\\t<wnid>...'")
            name, wnid = fields[:2]
            if wnid not in label_of:
                raise RdfcilError(f"tiny-imagenet200: '{annotations}' line {number} names '{wnid}', which "
                                  f"wnids.txt does not list ({len(label_of)} wnids listed)")
            path = val / "images" / name
            if not path.is_file():
                raise RdfcilError(f"tiny-imagenet200: '{annotations}' line {number} names '{path}', which "
                                  f"does not exist")
            paths.append(str(path))
            labels.append(label_of[wnid])
        return paths, labels
    folders = sorted(p for p in val.iterdir() if p.is_dir())
    if not folders:
        raise RdfcilError(f"tiny-imagenet200: '{val}' holds neither images/ with val_annotations.txt (the "
                          f"official layout) nor one folder per wnid (val/<wnid>/images/*.JPEG)")
    unknown = [p.name for p in folders if p.name not in label_of]
    if unknown:
        raise RdfcilError(f"tiny-imagenet200: '{val / unknown[0]}' is a class folder of the re-organised "
                          f"validation layout whose wnid wnids.txt does not list ({len(unknown)} such folders)")
    paths, labels = [], []
    for folder in folders:
        inner = folder / "images" if (folder / "images").is_dir() else folder
        files = _images_in(inner)
        paths += [str(p) for p in files]
        labels += [label_of[folder.name]] * len(files)
    return paths, labels


IMAGENET_LAYOUT = ("<data_root>/imagenet100/{train/<wnid>/*.JPEG, val/<wnid>/*.JPEG, train_100.txt, "
                   "val_100.txt} (the PODNet split: lines 'train/<wnid>/<file>.JPEG <label>')")


def imagenet100_wnids() -> list[str]:
    return (PACKAGE_DIR / "imagenet100_wnids.txt").read_text().split()


def write_imagenet100_lists(base: Path) -> None:
    """Rebuild train_100.txt / val_100.txt from the image folders and imagenet100_wnids.txt."""
    from .io import atomic_write_text
    for split in ("train", "val"):
        lines = []
        for label, wnid in enumerate(imagenet100_wnids()):
            folder = base / split / wnid
            if not folder.is_dir():
                raise _missing("imagenet100", folder, IMAGENET_LAYOUT,
                               "copy the 100 classes of imagenet100_wnids.txt from an ImageNet root")
            lines += [f"{split}/{wnid}/{p.name} {label}" for p in sorted(folder.iterdir())]
        atomic_write_text(base / f"{split}_100.txt", "\n".join(lines) + "\n")


def load_imagenet100_lists(root: Path):
    """The PODNet ImageNet-100 split: ``train_100.txt`` / ``val_100.txt`` (rebuilt from the
    folders if absent). Each list is checked against the folders and the class list: every
    line is ``<split>/<wnid>/<file> <label>`` naming an existing image, ``<label>`` is the
    wnid's line in ``imagenet100_wnids.txt``, and all 100 classes occur."""
    base = root / "imagenet100"
    if not base.is_dir():
        raise _missing("imagenet100", base, IMAGENET_LAYOUT, "follow PODNet's instructions to prepare it")
    if not (base / "train_100.txt").is_file() or not (base / "val_100.txt").is_file():
        write_imagenet100_lists(base)
    label_of = {w: i for i, w in enumerate(imagenet100_wnids())}
    expected = SPECS["imagenet100"].num_classes
    out = []
    for split in ("train", "val"):
        lists = base / f"{split}_100.txt"
        paths, labels = [], []
        for number, line in enumerate(lists.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise RdfcilError(f"imagenet100: '{lists}' line {number} is not '<path> <label>'")
            rel, label = parts[0], int(parts[1])
            wnid = Path(rel).parent.name
            if label_of.get(wnid) != label:
                wanted = f"label {label_of[wnid]}" if wnid in label_of else "none: not one of the 100 classes"
                raise RdfcilError(f"imagenet100: '{lists}' line {number} gives '{rel}' label {label}; its "
                                  f"folder '{wnid}' has {wanted} (imagenet100_wnids.txt)")
            paths.append(str(base / rel))
            labels.append(label)
        missing = next((p for p in paths if not Path(p).is_file()), None)
        if missing is not None:
            raise RdfcilError(f"imagenet100: '{lists}' names '{missing}', which does not exist "
                              f"({sum(not Path(p).is_file() for p in paths)} of {len(paths)} listed images are "
                              f"missing); delete the list to rebuild it from the folders")
        if len(set(labels)) != expected:
            absent = sorted(set(label_of) - {w for w, i in label_of.items() if i in set(labels)})
            raise _count_mismatch("imagenet100", lists, "holds images of", len(set(labels)), expected,
                                  f"none of '{absent[0]}'" if absent else None)
        out += [paths, torch.tensor(labels)]
    return tuple(out)


# --------------------------------------------------------------------------- stand-ins

STANDIN_SIZES = {"cifar100": (20, 5), "tiny-imagenet200": (6, 2)}  # (train, test) images per class


def standin_images(num_classes: int, per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` uint8 RGB images (N, 3, size, size) per class: each class is a fixed random
    4 x 4 colour grid scaled up to ``size`` (the same for every image of the class, whatever
    ``seed``), each image that grid plus Gaussian noise of std 24 and a random shift of up to 2
    pixels. Learnable in a few epochs, never trivial."""
    grids = np.random.default_rng(1234).integers(0, 256, (num_classes, 3, 4, 4)).astype(np.float32)
    templates = grids.repeat(size // 4, axis=2).repeat(size // 4, axis=3)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    images = templates[labels] + rng.normal(0.0, 24.0, (len(labels), 3, size, size))
    for i, (dy, dx) in enumerate(rng.integers(-2, 3, (len(labels), 2))):
        images[i] = np.roll(images[i], (dy, dx), axis=(1, 2))
    return images.clip(0, 255).astype(np.uint8), labels


def write_standin(dataset: str, root: str | Path, per_class: tuple[int, int] | None = None) -> Path:
    """Write a learnable stand-in of ``dataset`` in its official layout under ``root``, so that
    a GPU box can be smoke-tested before anything is downloaded (``python -m rdfcil check``).

    ``cifar100``: ``<root>/cifar100/cifar-100-python/{train,test}`` pickles as torchvision reads
    them (``data`` N x 3072 uint8, ``fine_labels``); ``tiny-imagenet200``: ``wnids.txt``,
    ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` and ``val/val_annotations.txt``.
    ``per_class``: (train, test) images per class. Returns the dataset's folder."""
    from .io import atomic_write_bytes, atomic_write_text
    if dataset not in STANDIN_SIZES:
        raise RdfcilError(f"no stand-in for '{dataset}'; stand-ins exist for {', '.join(STANDIN_SIZES)}")
    n_train, n_test = per_class or STANDIN_SIZES[dataset]
    root = Path(root).expanduser()
    spec = SPECS[dataset]
    splits = {split: standin_images(spec.num_classes, n, spec.image_size, seed)
              for split, n, seed in (("train", n_train, 0), ("test", n_test, 1))}
    if dataset == "cifar100":
        folder = root / "cifar100" / "cifar-100-python"
        for split, (images, labels) in splits.items():
            entry = {b"data": images.reshape(len(images), -1), b"fine_labels": labels.tolist(),
                     b"coarse_labels": (labels // 5).tolist()}
            atomic_write_bytes(folder / split, pickle.dumps(entry, protocol=2))
        return folder.parent
    from PIL import Image
    base = root / "tiny-imagenet200"
    wnids = [f"n{9_000_000 + i:08d}" for i in range(spec.num_classes)]

    def save(path: Path, image: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(path, "JPEG", quality=95)
    images, labels = splits["train"]
    for i, (image, label) in enumerate(zip(images, labels)):
        save(base / "train" / wnids[label] / "images" / f"{wnids[label]}_{i}.JPEG", image)
    images, labels = splits["test"]
    annotations = []
    for i, (image, label) in enumerate(zip(images, labels)):
        save(base / "val" / "images" / f"val_{i}.JPEG", image)
        annotations.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t{spec.image_size}\t{spec.image_size}")
    atomic_write_text(base / "val" / "val_annotations.txt", "\n".join(annotations) + "\n")
    atomic_write_text(base / "wnids.txt", "\n".join(wnids) + "\n")
    return base


# --------------------------------------------------------------------------- the registry

FASHION_MNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                       "Bag", "Ankle boot")


def _tiny_imagenet(root: Path, config):
    from .imagecache import tiny_imagenet_arrays
    return tiny_imagenet_arrays(root, config.num_workers)


SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("digits", 8, 1, 10, (0.3051,), (0.3741,), 0, False, lambda root, c: load_digits_arrays(),
                train_per_class=126),
    DatasetSpec("fashion-mnist", 28, 1, 10, (0.2860,), (0.3530,), 2, True,
                lambda root, c: load_fashion_mnist_arrays(root), class_names=FASHION_MNIST_NAMES,
                train_per_class=6000),
    DatasetSpec("cifar100", 32, 3, 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 4, True,
                lambda root, c: load_cifar100_arrays(root), default_preset="paper"),
    DatasetSpec("tiny-imagenet200", 64, 3, 200, (0.4803, 0.4481, 0.3976), (0.2764, 0.2688, 0.2816), 4, True,
                _tiny_imagenet, default_preset="paper"),  # JPEGs decoded once, cached as uint8
    DatasetSpec("imagenet100", 224, 3, 100, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 4, True,
                lambda root, c: load_imagenet100_lists(root), in_memory=False, default_preset="paper",
                train_per_class=1300),
)}


def dataset_spec(name: str) -> DatasetSpec:
    """The registered dataset ``name``, or the one-line error listing the valid ones."""
    if name not in SPECS:
        raise RdfcilError(f"unknown dataset '{name}'; valid datasets: {', '.join(SPECS)}")
    return SPECS[name]


# --------------------------------------------------------------------------- the benchmark

@dataclass
class Benchmark:
    """A dataset cut into tasks: train and test images with labels remapped to the class order."""
    spec: DatasetSpec
    train: TensorImages | FolderImages
    test: TensorImages | FolderImages
    class_order: list
    tasks: list  # list[range] of remapped labels per task

    def seen(self, task: int) -> range:
        return range(0, self.tasks[task].stop)


def subsample_per_class(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of at most ``per_class`` images of each class, chosen by a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        keep.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(keep).sort().values


def load_benchmark(config, device) -> Benchmark:
    """Load ``config.dataset``, apply the class order and the task split, put it on ``device``."""
    spec = dataset_spec(config.dataset)
    root = Path(config.data_root).expanduser()
    order = class_order(config.dataset, spec.num_classes, config.class_order)
    task_sizes(spec.num_classes, config.num_tasks, config.first_task_classes)  # validate first
    x_tr, y_tr, x_te, y_te = spec.loader(root, config)
    if config.train_per_class:
        keep = subsample_per_class(y_tr, config.train_per_class)
        x_tr = x_tr[keep] if spec.in_memory else [x_tr[i] for i in keep.tolist()]
        y_tr = y_tr[keep]
    y_tr, tasks = split_tasks(y_tr, order, config.num_tasks, config.first_task_classes)
    y_te, _ = split_tasks(y_te, order, config.num_tasks, config.first_task_classes)
    check_every_class(spec, order, tasks, y_tr, y_te)
    if spec.in_memory:
        train, test = TensorImages(x_tr, y_tr, spec, device), TensorImages(x_te, y_te, spec, device)
    else:
        train = FolderImages(x_tr, y_tr, spec, device, True, config.num_workers)
        test = FolderImages(x_te, y_te, spec, device, False, config.num_workers)
    return _with_augmentation(Benchmark(spec, train, test, order, tasks), config)


def check_every_class(spec: DatasetSpec, order: Sequence[int], tasks: list[range], train_labels: torch.Tensor,
                      test_labels: torch.Tensor) -> None:
    """Refuse a split in which a class has no training or no test image (its accuracy, and its
    task's, would be 0 / 0): one line naming the classes (original labels) and their tasks."""
    for split, labels in (("test", test_labels), ("training", train_labels)):
        counts = torch.bincount(labels.long().cpu(), minlength=len(order))
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            task_of = {c: t for t, r in enumerate(tasks) for c in r}
            named = ", ".join(f"{order[c]} (task {task_of[c]})" for c in empty[:10])
            more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
            raise RdfcilError(f"{spec.name}: {len(empty)} of {len(order)} classes have no {split} images: "
                              f"class {named}{more}; their accuracy would be 0 / 0; add the images or "
                              f"check the dataset's files")


def _with_augmentation(bench: Benchmark, config) -> Benchmark:
    """The training images augment as the config says (``crop_fill``, ``color_jitter``)."""
    bench.train.crop_fill = getattr(config, "crop_fill", "mean")
    bench.train.color_jitter = getattr(config, "color_jitter", False)
    if isinstance(bench.train, FolderImages):
        bench.train.imagenet_crop = getattr(config, "imagenet_crop", "center_pad")
    return bench
