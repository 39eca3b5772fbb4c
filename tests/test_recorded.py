"""Settings that change the numbers are recorded and compared; operational keys change none;
reused runs are verified and say so."""

from __future__ import annotations

import json

import pytest
import torch

from rdfcil import sweep
from rdfcil.config import resolve
from rdfcil.data import SPECS, FolderImages
from rdfcil.engine import run
from rdfcil.io import load_checkpoint
from rdfcil.runs import OPERATIONAL_KEYS
from conftest import TEST_DEVICE

TINY = dict(dataset="digits", method="rdfcil", tasks=2, backbone="resnet8", epochs=2, refinement_epochs=1,
            milestones=[1], inversion_steps=2, z_dim=16, generator_width=8, synthetic_pool=32, batch_size=16,
            train_per_class=4, coverage_samples=64, progress=False, logger="none", device=TEST_DEVICE)


def tiny(out, **more):
    return resolve({**TINY, "out": str(out), **more})


def weights(folder) -> dict:
    return load_checkpoint(folder / "task_1.pt")["model"]


def test_every_operational_key_changes_no_number(tmp_path):
    torch.set_num_threads(1)
    device = "cuda:0" if TEST_DEVICE.startswith("cuda") else "auto" if not torch.cuda.is_available() else "cpu"
    changed = {"out": None, "progress": True, "device": device, "num_workers": 0, "eval_batch_size": 7,
               "notes": "another note", "data_root": str(tmp_path / "elsewhere"), "logger": "tensorboard",
               "log_interval": 1, "sync_interval": 1}
    assert set(changed) == OPERATIONAL_KEYS  # a new operational key needs a value here
    base = run(tiny(tmp_path / "base"))
    for key, value in changed.items():
        folder = tmp_path / key
        other = run(tiny(folder, **({} if key == "out" else {key: value})))
        assert other.accuracy_matrix == base.accuracy_matrix and other.class_coverage == base.class_coverage, key
        assert all(torch.equal(a, b) for a, b in zip(weights(folder).values(), weights(tmp_path / "base").values())), key


def test_thread_count_compared_on_resume_and_reuse(tmp_path, capsys):
    folder = tmp_path / "run"
    first = run(tiny(folder, method="finetune", threads=1))
    assert first.threads == [1, 1] and json.loads((folder / "results.json").read_text())["threads"] == [1, 1]
    capsys.readouterr()
    again = run(tiny(folder, method="finetune", threads=2))  # reused: the config differs only in threads
    out, err = capsys.readouterr()
    assert again.accuracy_matrix == first.accuracy_matrix
    assert f"reused: '{folder}' holds this run, finished; not trained again" in out
    assert "was computed at 1 CPU threads and this process uses 2" in err
    (folder / "task_1.pt").unlink()
    results = json.loads((folder / "results.json").read_text())
    results["finished"] = False
    results["accuracy_per_task"] = results["accuracy_per_task"][:1]
    (folder / "results.json").write_text(json.dumps(results))
    resumed = run(tiny(folder, method="finetune", threads=2))
    assert resumed.threads == [1, 2]
    assert any("resumed at task 1: the run" in line and "uses 2" in line for line in resumed.warnings)
    assert "warning: resumed at task 1" in capsys.readouterr().err
    assert sweep.default_jobs([], [tiny(tmp_path / "x")]) == sweep.cpu_count()  # the cores at one thread each
    assert [c.threads for c in sweep.with_grid_threads([tiny(tmp_path / "x"), tiny(tmp_path / "y", threads=3)])] == [1, 3]


def test_reuse_verifies_checkpoints_and_retrains_only_what_is_missing(tmp_path, capsys):
    folder = tmp_path / "run"
    first = run(tiny(folder))
    assert set(first.files) == {"task_0.pt", "task_1.pt"}
    kept = (folder / "task_1.pt").stat().st_mtime_ns
    (folder / "task_0.pt").unlink()
    capsys.readouterr()
    again = run(tiny(folder))
    err = capsys.readouterr().err
    assert "note: task_0.pt is missing (recorded: " in err and "retraining task 0 alone to rewrite it" in err
    assert "note: task_0.pt rewritten; its accuracies match the record" in err
    assert (folder / "task_0.pt").is_file() and (folder / "task_1.pt").stat().st_mtime_ns == kept
    assert again.accuracy_matrix == first.accuracy_matrix
    assert json.loads((folder / "results.json").read_text())["files"]["task_0.pt"] == (folder / "task_0.pt").stat().st_size
    with open(folder / "task_1.pt", "ab") as handle:  # a changed file: another size
        handle.write(b"\0")
    run(tiny(folder))
    err = capsys.readouterr().err
    assert "task_1.pt holds" in err and "not the recorded" in err and "retraining task 1 alone from task_0.pt" in err
    assert "task_1.pt rewritten; its accuracies match the record" in err
    run(tiny(folder))
    assert "reused: " in capsys.readouterr().out  # intact again


def test_folder_augmentation_follows_the_run_generator_not_workers(tmp_path):
    from PIL import Image
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray((torch.rand(24, 24, 3) * 255).byte().numpy()).save(paths[-1])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])

    def epoch(workers: int, global_seed: int):
        images = FolderImages(paths, labels, SPECS["imagenet100"], "cpu", True, workers)
        images.imagenet_crop = "random_resized"
        torch.manual_seed(global_seed)
        generator = torch.Generator().manual_seed(5)
        return [(x, y) for _ in range(2) for x, y in images.batches(range(0, 3), 4, shuffle=True, augment=True,
                                                                    generator=generator)]

    reference = epoch(0, 0)
    assert len(reference) == 4 and reference[0][0].shape == (4, 3, 224, 224)
    assert not torch.equal(reference[0][0], reference[2][0])  # the second epoch draws anew
    for workers, global_seed in ((0, 1), (2, 0)):
        other = epoch(workers, global_seed)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(reference, other))
