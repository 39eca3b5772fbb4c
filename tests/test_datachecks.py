"""Dataset files cross-checked against each other, the re-organised Tiny-ImageNet validation
layout, classes without images refused up front, and strict JSON from every writer."""

from __future__ import annotations

import ast
import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from rdfcil import data, io, tables
from rdfcil.errors import RdfcilError
from test_data import make_config, write_cifar100, write_imagenet100, write_tiny_imagenet


def error_of(call) -> str:
    with pytest.raises(RdfcilError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    wnids, val_index = write_tiny_imagenet(root)
    return root, wnids, val_index


def copied(tree, tmp_path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(tree / "tiny-imagenet200", root / "tiny-imagenet200")
    return root


def test_tiny_imagenet_files_cross_checked(tiny_tree, tmp_path):
    tree, wnids, _ = tiny_tree
    root = copied(tree, tmp_path)
    base = root / "tiny-imagenet200"
    listing = base / "wnids.txt"
    listing.write_text("\n".join(w for w in wnids if w != wnids[50]) + "\n")
    message = error_of(lambda: data.load_tiny_imagenet_lists(root))
    assert str(listing) in message and "199 of 200 classes" in message and wnids[50] in message
    listing.write_text("\n".join(wnids) + "\n")
    annotations = base / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    annotations.write_text("\n".join(lines[:3] + [lines[3].replace(lines[3].split("\t")[1], "n99999999")]
                                     + lines[4:]) + "\n")
    message = error_of(lambda: data.load_tiny_imagenet_lists(root))
    assert str(annotations) in message and "line 4" in message and "n99999999" in message
    annotations.write_text("\n".join(lines) + "\n")
    (base / "val" / "images" / "val_7.JPEG").unlink()
    message = error_of(lambda: data.load_tiny_imagenet_lists(root))
    assert "line 8" in message and "val_7.JPEG" in message and "does not exist" in message


def test_tiny_imagenet_reorganised_val_layout_gives_the_official_labels(tiny_tree, tmp_path):
    tree, wnids, _ = tiny_tree
    official = data.load_tiny_imagenet_lists(tree)
    root = copied(tree, tmp_path)
    val = root / "tiny-imagenet200" / "val"
    for line in (val / "val_annotations.txt").read_text().splitlines():  # continuum's script, in effect
        name, wnid = line.split("\t")[:2]
        (val / wnid / "images").mkdir(parents=True, exist_ok=True)
        (val / "images" / name).rename(val / wnid / "images" / name)
    (val / "images").rmdir()
    p_tr, y_tr, p_te, y_te = data.load_tiny_imagenet_lists(root)
    assert y_tr.tolist() == official[1].tolist() and len(p_te) == 200
    labels = {Path(p).name: int(y) for p, y in zip(official[2], official[3])}
    assert {Path(p).name: int(y) for p, y in zip(p_te, y_te)} == labels
    assert all(Path(p).is_file() and Path(p).parent.parent.name == wnids[y] for p, y in zip(p_te, y_te.tolist()))


def test_cifar100_label_and_row_counts_checked(tmp_path):
    write_cifar100(tmp_path)
    path = tmp_path / "cifar100" / "cifar-100-python" / "test"
    entry = pickle.loads(path.read_bytes())
    entry[b"fine_labels"] = [label if label != 42 else 41 for label in entry[b"fine_labels"]]
    path.write_bytes(pickle.dumps(entry, protocol=2))
    message = error_of(lambda: data.load_cifar100_arrays(tmp_path, download=False))
    assert str(path) in message and "99 of 100 classes" in message and "label 42" in message
    entry[b"fine_labels"] = entry[b"fine_labels"][:-1]
    path.write_bytes(pickle.dumps(entry, protocol=2))
    assert "100 images and 99 labels" in error_of(lambda: data.load_cifar100_arrays(tmp_path, download=False))


def test_imagenet100_lists_checked_against_folders(tmp_path):
    base, wnids = write_imagenet100(tmp_path)
    data.load_imagenet100_lists(tmp_path)  # builds the lists from the folders
    lists = base / "val_100.txt"
    lines = lists.read_text().splitlines()
    lists.write_text("\n".join(lines[:5] + [lines[5].rsplit(" ", 1)[0] + " 6"] + lines[6:]) + "\n")
    message = error_of(lambda: data.load_imagenet100_lists(tmp_path))
    assert str(lists) in message and "line 6" in message and wnids[5] in message and "label 5" in message
    lists.write_text("\n".join(lines[:-1]) + "\n")
    message = error_of(lambda: data.load_imagenet100_lists(tmp_path))
    assert "99 of 100 classes" in message and wnids[99] in message
    lists.write_text("\n".join(lines) + "\n")
    (base / "val" / wnids[3] / f"ILSVRC2012_val_{3:08d}.JPEG").unlink()
    message = error_of(lambda: data.load_imagenet100_lists(tmp_path))
    assert "does not exist" in message and "1 of 100 listed images" in message


def test_class_without_test_images_refused_before_anything_is_written(tiny_tree, tmp_path):
    tree, wnids, _ = tiny_tree
    root = copied(tree, tmp_path)
    order = data.published_orders("tiny-imagenet200")[0]
    last = wnids[order[-1]]  # the class of the last task of 199 + 1
    annotations = root / "tiny-imagenet200" / "val" / "val_annotations.txt"
    annotations.write_text("".join(line + "\n" for line in annotations.read_text().splitlines()
                                   if line.split("\t")[1] != last))
    config = make_config(dataset="tiny-imagenet200", data_root=str(root), num_tasks=2, first_task_classes=199,
                         method="finetune", out=str(tmp_path / "run"))
    message = error_of(lambda: data.load_benchmark(config, "cpu"))
    assert f"1 of 200 classes have no test images: class {order[-1]} (task 1)" in message
    from rdfcil.engine import run
    error_of(lambda: run(config))
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- strict JSON

def test_every_json_writer_is_strict(tmp_path):
    record = {"accuracy_matrix": [[1.76], [0.0, math.nan]], "ok": 1.0}
    message = error_of(lambda: io.write_json(tmp_path / "results.json", record))
    assert "accuracy_matrix[1][1] is NaN or infinite" in message and not (tmp_path / "results.json").exists()
    io.write_json(tmp_path / "ok.json", {"a": [1.5, None]})
    assert json.loads((tmp_path / "ok.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == {"a": [1.5, None]}
    row = {"dataset": "digits", "method": "finetune", "num_tasks": 2, "first_task_classes": None, "split": "2 x 5",
           "seeds": [0], "final_mean": math.inf, "final_std": None, "avg_mean": 1.0, "avg_std": None,
           "paper_last": None, "paper_last_std": None, "paper_avg": None, "seconds_mean": None}
    assert "final_mean" in error_of(lambda: tables.write_tables([row], tmp_path / "t", ("json",)))
    # no module writes JSON but through io.json_text (allow_nan=False)
    package = Path(data.__file__).parent
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("dump", "dumps") \
                    and getattr(node.func.value, "id", "") == "json":
                strict = any(k.arg == "allow_nan" and getattr(k.value, "value", True) is False for k in node.keywords)
                assert strict, f"{path.name}:{node.lineno} writes JSON without allow_nan=False"
    assert np.isnan(np.float64("nan"))  # numpy floats are floats: the check above sees them
    assert io.nonfinite_path({"x": [np.float64("inf")]}) == "x[0]"
