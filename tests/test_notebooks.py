"""The notebooks: their committed form, reproduce.ipynb end to end through papermill on a tiny
Fashion-MNIST budget, and a one-line error for a wrong parameter. (Every notebook also runs
with its defaults under ``pytest --nbval-lax notebooks``.)"""

import csv
import io
import json
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")
from conftest import TEST_DEVICE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REQUIRED = {"dataset", "num_tasks", "first_task_classes", "seed", "preset", "data_root", "device", "out_dir"}
PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF"


def parameters(path: Path) -> dict:
    """The values of the first (``parameters``) cell."""
    cell = nbformat.read(path, as_version=4).cells[1]
    namespace: dict = {}
    exec(cell.source, namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def fashion_mnist_available() -> bool:
    from rdfcil.data import fashion_mnist_folder
    try:
        fashion_mnist_folder(ROOT / "data", download=False)
        return True
    except Exception:
        return False


def test_the_seven_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_tasks.ipynb", "02_model_inversion.ipynb",
                                           "03_relation_distillation.ipynb", "04_classifier_refinement.ipynb",
                                           "05_task_by_task.ipynb", "06_beyond_inversion.ipynb", "reproduce.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_form_parameters_first_outputs_cleared(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown"
    assert "parameters" in code[0].metadata.get("tags", [])
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert REQUIRED <= set(parameters(path))
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name} holds outputs"
    assert any(call in code[1].source for call in ("rdfcil.resolve(", "paper.plan(", "paper.walkthrough("))  # config first
    for cell in code:  # no training code of their own
        assert "backward(" not in cell.source and "optim." not in cell.source


def test_walkthroughs_share_the_default_run():
    """Notebooks 02-05 have the same defaults, so they train one R-DFCIL run and reuse it."""
    keys = REQUIRED | {"overrides"}
    values = [{k: parameters(ROOT / "notebooks" / name)[k] for k in keys}
              for name in ("02_model_inversion.ipynb", "03_relation_distillation.ipynb",
                           "04_classifier_refinement.ipynb", "05_task_by_task.ipynb")]
    assert all(v == values[0] for v in values)
    reproduce = parameters(ROOT / "notebooks" / "reproduce.ipynb")
    assert reproduce["out_dir"] == values[0]["out_dir"] and reproduce["dataset"] == values[0]["dataset"]


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST is not installed (make data)")
def test_reproduce_on_a_tiny_fashion_mnist_budget(tmp_path):
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    budget = {"epochs": 2, "refinement_epochs": 1, "milestones": [1], "inversion_steps": 4, "train_per_class": 40,
              "synthetic_pool": 256, "coverage_samples": 200, "inversion_batch_size": 32, "batch_size": 64}
    papermill.execute_notebook(str(ROOT / "notebooks" / "reproduce.ipynb"), str(tmp_path / "reproduce.ipynb"),
                               kernel_name="python3", progress_bar=False, cwd=str(tmp_path),
                               parameters={"dataset": "fashion-mnist", "methods": ["finetune", "rdfcil"],
                                           "task_counts": [2], "seeds": [0], "overrides": budget, "device": TEST_DEVICE,
                                           "out_dir": str(runs), "figures_dir": str(figures)})
    folder = figures / "fashion-mnist"
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["accuracy_curves.pdf", "accuracy_curves.png", "accuracy_matrices.pdf",
                       "accuracy_matrices.png", "reproduction.csv", "reproduction.md", "reproduction.tex"]
    for name in ("accuracy_curves", "accuracy_matrices"):
        for suffix, magic in ((".png", PNG), (".pdf", PDF)):
            data = (folder / (name + suffix)).read_bytes()
            assert len(data) > 1000 and data.startswith(magic)
    results = {m: json.loads((runs / "fashion-mnist" / f"{m}-2tasks-seed0" / "results.json").read_text())
               for m in ("finetune", "rdfcil")}
    assert all(r["finished"] and r["config"]["epochs"] == 2 and r["config"]["train_per_class"] == 40
               for r in results.values())
    md = (folder / "reproduction.md").read_text()
    for label, method in (("Finetune", "finetune"), ("R-DFCIL", "rdfcil")):
        r = results[method]
        assert (f"| {label} | 2 × 5 | 1 | {r['final_accuracy']:.2f} | – | "
                f"{r['average_incremental_accuracy']:.2f} | – |") in md
    rows = list(csv.DictReader(io.StringIO((folder / "reproduction.csv").read_text())))
    assert [r["method"] for r in rows] == ["finetune", "rdfcil"]
    assert float(rows[1]["final_mean"]) == pytest.approx(results["rdfcil"]["final_accuracy"], abs=1e-4)
    assert rows[0]["dataset"] == "fashion-mnist" and rows[0]["num_tasks"] == "2"
    tex = (folder / "reproduction.tex").read_text()
    assert r"\begin{tabular}" in tex and "R-DFCIL & 2 $\\times$ 5 & 1 & " + f"{results['rdfcil']['final_accuracy']:.2f}" in tex
    executed = nbformat.read(tmp_path / "reproduce.ipynb", as_version=4)
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the curves and the matrices, shown in the notebook
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs
                      if o.output_type == "stream")
    assert "backbone: runs 'resnet8' (finetune, rdfcil) | paper 'resnet32' (finetune, rdfcil)" in printed
    assert "epochs: runs 2 (finetune, rdfcil) | paper 250 (finetune); 200 (rdfcil)" in printed  # above the table
    finished = [line for line in printed.splitlines() if line.startswith("finished ")]  # a line per run
    assert sorted(line.split(":")[0] for line in finished) == ["finished finetune-2tasks-seed0",
                                                               "finished rdfcil-2tasks-seed0"]
    assert f"finished rdfcil-2tasks-seed0: final {results['rdfcil']['final_accuracy']:.2f} %" in printed
    assert printed.count("sweep: 2/2 run in ") == 1 and "running 0, failed 0" in printed  # the grid: one line
    assert "widgets" not in executed.metadata  # no widget state saved with the notebook
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
                if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    code = [c for c in executed.cells if c.cell_type == "code"]
    departures = next(i for i, c in enumerate(code) if any("backbone: runs" in o.get("text", "") for o in c.outputs))
    assert departures < next(i for i, c in enumerate(code) if "tables.summary_rows" in c.source)


def test_the_ablation_of_notebook_03_resolves():
    """'none' is a value of rkd and preset, not a null (03 builds its run without RKD from a dict)."""
    import rdfcil
    assert rdfcil.resolve({"rkd": "none"}).rkd == "none"
    assert rdfcil.resolve({"preset": "none"}).preset == "none"
    assert rdfcil.resolve({"out": "none"}).out is None


# --------------------------------------------------------------------------- parameters as users pass them

def list_and_dict_parameters(path: Path) -> dict:
    """The parameters of a notebook that hold lists or dicts: name -> kind."""
    kinds = {"overrides": dict, "methods": list, "task_counts": list, "seeds": list, "class_orders": list}
    return {k: kinds[k] for k in parameters(path) if k in kinds}


def test_every_list_and_dict_parameter_is_parsed_in_the_second_cell():
    for path in NOTEBOOKS:
        second = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"][1].source
        names = list_and_dict_parameters(path)
        assert names, path.name
        for name in names:
            assert f'paper.parse_param("{name}", {name},' in second, (path.name, name)


def test_reproduce_through_the_papermill_command_line_with_string_lists(tmp_path):
    """The issue's command: -p hands '["finetune", "lwf"]' and '[2]' over as strings. Then the
    same plan from -f params.yaml and -y reuses the runs and writes the same table."""
    import subprocess
    import sys
    runs, figures = tmp_path / "runs", tmp_path / "figures"
    budget = "{epochs: 2, refinement_epochs: 1, milestones: [1], backbone: resnet8}"
    common = ["-p", "out_dir", str(runs), "-p", "figures_dir", str(figures), "-p", "device", "cpu", "--cwd", str(ROOT)]
    first = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "reproduce.ipynb"),
                            str(tmp_path / "p.ipynb"), "-p", "dataset", "digits", "-p", "methods", '["finetune", "lwf"]',
                            "-p", "task_counts", "[2]", "-p", "seeds", "[0]", "-p", "overrides", budget,
                            "-p", "jobs", "2", *common],
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    table = (figures / "digits" / "reproduction.md").read_text()
    assert "| Finetune | 2 × 5 | 1 |" in table and "| LwF | 2 × 5 | 1 |" in table
    executed = nbformat.read(tmp_path / "p.ipynb", as_version=4)
    cell = next(c for c in executed.cells if c.cell_type == "code" and "sweep.run_grid(configs, jobs=jobs)" in c.source)
    lines = "".join(o.get("text", "") for o in cell.outputs).splitlines()  # a line per run and one for the grid, no widget
    assert {o.output_type for o in cell.outputs} == {"stream"} and len(lines) == 3, lines
    assert sorted(line.split(":")[0] for line in lines[:2]) == ["finished finetune-2tasks-seed0", "finished lwf-2tasks-seed0"]
    assert lines[2].startswith("sweep: 2/2 run in ") and lines[2].endswith("running 0, failed 0"), lines
    (tmp_path / "params.yaml").write_text("dataset: digits\nmethods: [finetune, lwf]\ntask_counts: [2]\n"
                                          f"overrides: {budget}\n")
    (figures / "digits" / "reproduction.md").unlink()
    second = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "reproduce.ipynb"),
                             str(tmp_path / "f.ipynb"), "-f", str(tmp_path / "params.yaml"), "-y", "seeds: [0]",
                             *common], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    again = (figures / "digits" / "reproduction.md").read_text()
    rows = lambda text: [line for line in text.splitlines() if line.startswith("|")]  # noqa: E731
    assert rows(again) == rows(table)  # the same runs, reused (the stamp under the table has its own date)
    assert again.splitlines()[-1].startswith("Made at commit ") and "by `notebooks/reproduce.ipynb, dataset digits" in again


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_string_parameters_are_read_and_a_wrong_one_is_named(path, tmp_path):
    """A dict given as a string is read, and the run then stops at the wrong dataset with its
    one-line error, in the one cell that resolves the configs, before anything is trained or
    written; a value that is no mapping / no list stops with one line naming the parameter."""
    out = tmp_path / "runs"
    base = {"out_dir": str(out), "figures_dir": str(tmp_path)}
    cases = [({"dataset": "mnist", "overrides": "{epochs: 2, milestones: [1]}"}, "RdfcilError",
              "unknown dataset 'mnist'; valid datasets: digits, fashion-mnist, cifar100, tiny-imagenet200, imagenet100")]
    if path.stem == "reproduce":
        cases.append(({"task_counts": "[2"}, "RdfcilError",
                      "parameter task_counts must be a list, e.g. [0, 1]; cannot read '[2' (while parsing a flow sequence)"))
    elif path.stem == "02_model_inversion":  # the same paper.parse_param call in every walkthrough: its error once
        cases.append(({"overrides": "[1, 2]"}, "RdfcilError",
                      "parameter overrides must be a mapping, e.g. {epochs: 2}, got [1, 2]"))
    for values, ename, evalue in cases:
        with pytest.raises(papermill.PapermillExecutionError) as caught:
            papermill.execute_notebook(str(path), str(tmp_path / path.name), kernel_name="python3", progress_bar=False,
                                       parameters={**base, **values}, cwd=str(ROOT))
        assert (caught.value.ename, caught.value.evalue) == (ename, evalue) and evalue in str(caught.value)
        if values.get("dataset") == "mnist":  # the error is raised in the cell that resolves the configs
            executed = nbformat.read(tmp_path / path.name, as_version=4)
            failed = [c for c in executed.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)]
            assert len(failed) == 1 and any(call in failed[0].source
                                            for call in ("rdfcil.resolve(", "paper.plan(", "paper.walkthrough("))
    assert not out.exists()  # nothing was trained or written
