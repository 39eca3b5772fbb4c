"""Every results table says which code made it: commit (+ uncommitted changes), date, command,
torch, device and threads, and the commits of runs made elsewhere."""

import csv
import io
import json
import subprocess

import pytest

from rdfcil import bench, provenance, tables


def git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_commit_says_when_the_tree_differs(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-qm", "a")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()
    assert provenance.commit() == head
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    assert provenance.commit() == head
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "t.md").write_text("| a |\n")
    git(tmp_path, "add", "figures")
    git(tmp_path, "commit", "-qm", "t")
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / "figures" / "t.md").write_text("| b |\n")  # a regenerated table is an output, not code
    assert provenance.commit() == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert provenance.commit() == head + " + uncommitted changes"
    monkeypatch.setattr(provenance, "ROOT", tmp_path / "missing")
    assert provenance.commit() == "unknown commit"


def fake_run(folder, commit, threads=None, device="cpu"):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"git_commit": commit, "torch": "2.14.1", "device": device,
                                                     "config": {"threads": threads}}))
    return folder


def test_stamp_reads_the_runs_records(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "commit", lambda: "abcdef123456")
    folders = [fake_run(tmp_path / "a", "abcdef123456" + "0" * 28, threads=1),
               fake_run(tmp_path / "b", "0123456789ab" + "f" * 28, threads=1)]
    made = provenance.stamp("python -m rdfcil bench-accuracy --dataset digits", folders, threads=8,
                            date="2026-01-02 03:04 UTC")
    assert made == {"commit": "abcdef123456", "date": "2026-01-02 03:04 UTC",
                    "command": "python -m rdfcil bench-accuracy --dataset digits", "torch": "2.14.1",
                    "device": "cpu", "threads": "1", "run_commits": ["0123456789ab"]}
    assert provenance.line(made) == ("Made at commit abcdef123456 on 2026-01-02 03:04 UTC by `python -m rdfcil "
                                     "bench-accuracy --dataset digits`; torch 2.14.1, device cpu, 1 thread(s). "
                                     "Runs made at commit 0123456789ab.")
    unset = provenance.stamp("c", [fake_run(tmp_path / "c", "abcdef123456", device="cuda:0")], threads=8)
    assert (unset["threads"], unset["device"], unset["run_commits"]) == ("8", "cuda:0", [])


def test_every_table_format_carries_the_stamp(tmp_path):
    rows = [{"dataset": "digits", "method": "rdfcil", "num_tasks": 5, "first_task_classes": None, "split": "5 × 2",
             "seeds": [0], "final_mean": 70.0, "final_std": None, "avg_mean": 85.0, "avg_std": None,
             "paper_last": None, "paper_last_std": None, "paper_avg": None, "seconds_mean": 12.0}]
    made = {"commit": "abcdef123456 + uncommitted changes", "date": "2026-01-02 03:04 UTC", "command": "make results",
            "torch": "2.14.1", "device": "cpu", "threads": "1", "run_commits": []}
    line = provenance.line(made)
    paths = tables.write_tables(rows, tmp_path / "t", ("md", "tex", "csv", "json"), stamp=made)
    md = paths["md"].read_text().splitlines()
    assert md[-1] == line and "+ uncommitted changes" in line and md[2].startswith("| R-DFCIL | 5 × 2 | 1 | 70.00")
    assert paths["tex"].read_text().splitlines()[0] == "% " + line
    parsed = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert parsed[0]["provenance"] == line and float(parsed[0]["final_mean"]) == 70.0
    assert json.loads(paths["json"].read_text())[0]["provenance"] == line


def test_bench_accuracy_stamps_its_table(tmp_path):
    tiny = {"epochs": 2, "refinement_epochs": 1, "milestones": [1], "backbone": "resnet8", "num_tasks": 2,
            "batch_size": 32, "train_per_class": 20, "progress": False, "logger": "none", "threads": 1}
    import torch
    threads = torch.get_num_threads()
    table, paths = bench.bench_accuracy("digits", [0], tmp_path, ["finetune"], tiny, jobs=0)
    assert torch.get_num_threads() == threads  # the run's threads key applied to the run only
    head = provenance.commit()
    last = paths["md"].read_text().strip().splitlines()[-1]
    assert last.startswith(f"Made at commit {head} on ") and last.endswith("device cpu, 1 thread(s).")
    assert table.strip().splitlines()[-1] == last
    record = json.loads((tmp_path / "finetune-2tasks-seed0" / "results.json").read_text())
    assert record["final_accuracy"] == pytest.approx(json.loads(paths["json"].read_text())[0]["final_mean"])
