"""The progress display: which one where, and a run's one line where nobody watches."""

from types import SimpleNamespace

from rdfcil.progress import LineBar, RunProgress, display_kind, make_bar


class Kernel:
    def __init__(self, allow_stdin):
        self.allow_stdin = allow_stdin

    def get_parent(self):
        return {"content": {"code": "run()", "allow_stdin": self.allow_stdin}}


def test_the_display_follows_the_frontend():
    assert display_kind(SimpleNamespace(kernel=Kernel(True))) == "widget"  # JupyterLab asks for input
    assert display_kind(SimpleNamespace(kernel=Kernel(False))) == "line"  # papermill, nbval, nbconvert
    assert display_kind(SimpleNamespace()) == "text"  # the IPython terminal: no kernel
    assert display_kind() == "text"  # pytest itself: no IPython at all


def test_a_line_bar_counts_silently_and_prints_one_line(capsys):
    bar = make_bar(10, "task 0 (of 2) finetune", kind="line")
    assert isinstance(bar, LineBar)
    for _ in range(7):
        bar.update()
    bar.set_postfix(loss="0.125")
    assert capsys.readouterr().out == ""
    bar.close()
    line = capsys.readouterr().out
    assert line.startswith("task 0 (of 2) finetune: 7/10 it in ") and line.endswith(" s, loss=0.125\n")


def test_a_run_prints_one_line_for_all_its_phases(capsys):
    progress = RunProgress(kind="line")
    for task, total in ((0, 30), (1, 40), (1, 5)):
        bar = progress(total, f"task {task} phase")
        for _ in range(total):
            bar.update()
        bar.set_description(f"task {task} phase epoch 1/1")
        bar.close()  # a phase's close keeps the run's bar
    assert capsys.readouterr().out == ""
    progress.close()
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith("trained 3 phases in ") and out.endswith(" s (last: task 1 phase epoch 1/1)\n")


def test_the_terminal_bar_is_tqdm_on_stderr(capsys):
    bar = make_bar(4, "sweep", unit="run", kind="text", leave=True)
    bar.update(4)
    bar.close()
    err = capsys.readouterr().err
    assert "sweep" in err and "4/4" in err
