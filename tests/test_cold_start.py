"""The cold-start protocol (paper.plan, bench-accuracy, published numbers in tables) and the
families figure (tables.family_rows, viz.families_vs_tasks); made-up results, no training."""

import matplotlib.colors as mcolors
import pytest

from rdfcil import paper, tables, viz
from rdfcil.__main__ import main
from rdfcil.errors import RdfcilError
from test_viz import assert_written, fake_result, stem_files


def test_cold_start_plan_on_cifar100_is_10_and_20_equal_tasks_with_the_published_backbone(tmp_path):
    configs = paper.plan("cifar100", protocol="cold-start", out_dir=str(tmp_path))
    assert sorted({c.num_tasks for c in configs}) == [10, 20]
    assert {c.first_task_classes for c in configs} == {None}
    assert {(c.backbone, c.resnet_variant, c.epochs, c.batch_size, c.weight_decay) for c in configs} == \
        {("resnet18", "standard", 100, 64, 2e-4)}
    assert all(c.milestones == [45, 90] and c.notes.endswith(paper.COLD_START_NOTES) for c in configs)
    assert all("-cold-" in c.out for c in configs)  # apart from any half-base run folder
    methods = {c.method for c in configs}
    assert {"rdfcil", "abd", "fecam"} <= methods and methods == set(paper.cold_start_methods())
    # the keys given still win over the protocol's values
    mine = paper.plan("cifar100", methods=["rdfcil"], task_counts=[10], protocol="cold-start",
                      overrides={"epochs": 3, "refinement_epochs": 1}, out_dir=str(tmp_path))
    assert [(c.epochs, c.backbone) for c in mine] == [(3, "resnet18")] * 3


def test_half_base_plan_is_unchanged_and_digits_cold_start_is_its_five_equal_tasks(tmp_path):
    default = paper.plan("cifar100", out_dir=str(tmp_path))
    half = paper.plan("cifar100", protocol="half-base", out_dir=str(tmp_path))
    assert [c.to_dict() for c in default] == [c.to_dict() for c in half]
    assert sorted({(c.num_tasks, c.first_task_classes, c.backbone, c.batch_size) for c in half}) == \
        [(6, 50, "resnet32", 128), (11, 50, "resnet32", 128), (26, 50, "resnet32", 128)]
    assert all("cold start" not in c.notes for c in half)
    for dataset in ("digits", "fashion-mnist"):  # 5 equal tasks already: the same runs, shared
        cold = paper.plan(dataset, protocol="cold-start", out_dir=str(tmp_path))
        assert [c.to_dict() for c in cold] == [c.to_dict() for c in paper.plan(dataset, out_dir=str(tmp_path))]
        assert {(c.num_tasks, c.first_task_classes) for c in cold} == {(5, None)}
    with pytest.raises(RdfcilError, match="unknown protocol 'warm'; valid protocols: half-base, cold-start"):
        paper.plan("digits", protocol="warm")


def test_bench_accuracy_protocol_is_parsed_and_a_wrong_one_is_a_one_line_error(capsys, monkeypatch):
    seen = {}

    def fake_bench(dataset, seeds, out, methods, overrides, force, jobs, protocol):
        seen.update(dataset=dataset, out=out, protocol=protocol)
        return "table\n", {}
    monkeypatch.setattr("rdfcil.bench.bench_accuracy", fake_bench)
    assert main(["bench-accuracy", "--protocol", "cold-start", "--methods", "ncm", "--seeds", "0"]) == 0
    assert seen == {"dataset": "digits", "out": "runs/bench-accuracy/digits-quick-cold-start", "protocol": "cold-start"}
    capsys.readouterr()
    assert main(["bench-accuracy", "--protocol", "warm"]) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown protocol 'warm'; valid protocols: half-base, cold-start\n"


def test_bench_sweep_runs_every_cold_start_task_count(monkeypatch, tmp_path):
    from rdfcil import bench
    monkeypatch.setattr("rdfcil.sweep.run_grid", lambda configs, jobs, force: configs)
    configs = bench.sweep("cifar100", ["rdfcil"], [0], tmp_path, {"preset": "paper"}, protocol="cold-start")
    assert [(c.num_tasks, c.first_task_classes, c.backbone, c.epochs) for c in configs] == \
        [(10, None, "resnet18", 100), (20, None, "resnet18", 100)]
    assert [c.num_tasks for c in bench.sweep("cifar100", ["rdfcil"], [0], tmp_path, {"preset": "paper", "num_tasks": "20"},
                                             protocol="cold-start")] == [20]
    assert bench.sweep("digits", ["finetune"], [0], tmp_path, {"preset": "quick"})[0].num_tasks == 5


def test_published_cold_start_numbers_stand_in_a_cold_start_table_and_not_in_a_half_base_one():
    cold_runs = [fake_result(m, 1, f, num_tasks=10, first=None) for m, f in (("rdfcil", 40.0), ("abd", 41.0))]
    half_runs = [fake_result(m, 1, f, num_tasks=11, first=50) for m, f in (("rdfcil", 45.0), ("abd", 41.0))]
    cold = tables.summary_rows(cold_runs, paper.published_in("cold-start"))
    by = {r["method"]: r for r in cold}
    assert (by["rdfcil"]["paper_last"], by["rdfcil"]["paper_avg"]) == (42.14, 57.77)
    assert (by["abd"]["paper_last"], by["abd"]["paper_avg"]) == (43.11, 59.14)  # EFC++'s, not ABD's own 33.7
    text = tables.markdown_table(cold)
    assert "42.14 [1]" in text and "[1] published in another setting: cold start (10 equal tasks)" in text
    half = tables.markdown_table(tables.summary_rows(half_runs, paper.published_in("half-base")))
    assert "49.70" in half and "42.14" not in half and "43.11" not in half
    assert "cold start" not in half and "[1]" not in half
    # every new method's record, keyed by the registry names, even before they are registered
    for method, last, avg in (("efc", 43.62, 58.58), ("efcpp", 47.52, 61.57), ("ldc", 45.4, 59.5),
                              ("adc", 46.80, 62.05), ("fecam", 37.63, 52.53)):
        found = paper.published("cifar100", method, 10, None, protocol="cold-start")
        assert (found["last"], found["avg"]) == (last, avg) and found["protocol"].startswith("cold start")
        other = paper.published("cifar100", method, 11, 50, protocol="cold-start")  # a half-base split
        assert (other and other["avg"]) == (70.8 if method == "fecam" else None)
    # a number of the lab's own setting, in a cold-start table, is marked as another setting
    assert paper.published("cifar100", "abd", 20, None, protocol="cold-start")["protocol"] == \
        paper.COLD_START_ELSEWHERE
    assert paper.published("cifar100", "abd", 20, None)["last"] == 20.0
    with pytest.raises(RdfcilError, match="unknown protocol"):
        paper.published("cifar100", "abd", 10, None, protocol="cold")


def test_families_figure_a_line_per_method_a_colour_per_family_png_and_pdf(tmp_path):
    runs = [fake_result(m, s, f - t, num_tasks=t, first=None)
            for m, f in (("finetune", 20.0), ("rdfcil", 50.0), ("fecam", 48.0), ("ncm", 45.0), ("acil", 47.0))
            for t in (5, 10) for s in (0, 1)]
    rows = tables.family_rows(runs, paper.published_in("cold-start"))
    assert {(r["method"], r["family"]) for r in rows} == {
        ("finetune", "bound"), ("rdfcil", "inversion"), ("fecam", "statistics"), ("ncm", "statistics"),
        ("acil", "analytic")}
    assert tables.method_family("efcpp" + "-not-registered") == "other"
    fig = viz.families_vs_tasks(rows, save=tmp_path / "families")
    assert_written(stem_files(tmp_path / "families"))
    final, average = fig.axes[:2]
    for ax, key in ((final, "final_mean"), (average, "avg_mean")):
        lines = {c.get_label(): c for c in ax.containers}
        assert sorted(lines) == sorted(f"{tables.method_label(m)} · {f}" for m, f in (
            ("finetune", "bound"), ("rdfcil", "inversion"), ("fecam", "statistics"), ("ncm", "statistics"),
            ("acil", "analytic")))
        for label, container in lines.items():
            data = container.lines[0]
            family = label.split(" · ")[1]
            assert mcolors.to_hex(data.get_color()) == mcolors.to_hex(viz.FAMILY_COLORS[family])
            assert list(data.get_xdata()) == [5, 10]
            method = next(r["method"] for r in rows if tables.method_label(r["method"]) == label.split(" · ")[0])
            assert list(data.get_ydata()) == pytest.approx([r[key] for r in rows if r["method"] == method])
        # one family, two methods: same colour, told apart by marker
        stats = [lines[f"{tables.method_label(m)} · statistics"].lines[0] for m in ("fecam", "ncm")]
        assert stats[0].get_color() == stats[1].get_color() and stats[0].get_marker() != stats[1].get_marker()
        # the published numbers, hollow: the cold-start records at 10 tasks, ABD's equal splits for finetune
        hollow = {l.get_gid(): (list(l.get_xdata()), list(l.get_ydata())) for l in ax.get_lines()
                  if (l.get_gid() or "").startswith("published|")}
        expected = {"rdfcil": (42.14, 57.77), "fecam": (37.63, 52.53), "acil": (35.53, 50.53)}
        expected = {m: ([10], [v[0] if key == "final_mean" else v[1]]) for m, v in expected.items()}
        if key == "final_mean":
            expected["finetune"] = ([5, 10], [16.4, 8.8])
        assert {g.split("|")[1]: v for g, v in hollow.items()} == expected
    with pytest.raises(RdfcilError, match="mix kinds of split"):
        tables.family_rows(runs + [fake_result("rdfcil", 0, 40.0, num_tasks=6, first=50)])
    with pytest.raises(RdfcilError, match="several datasets"):
        tables.family_rows(runs + [fake_result("rdfcil", 0, 40.0, dataset="digits", num_tasks=5, first=None,
                                               classes=10)])
