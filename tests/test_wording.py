"""Nothing a user reads speaks of how the lab was built: no issue numbers, no work sessions or
stops, no internal notes. Checked in the README, CONTRIBUTING, the documentation's sources, the
notebooks, the package (docstrings, help, errors) and the command line's help; and every
reference to the methods' description points at the documentation, not at a file users lack."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_HISTORY = re.compile(r"\bissues? ?#?\d+|\bsessions?\b|\bthis stop\b|\bstops? \d+\b|\bbefore (this|the last) stop"
                           r"|METHOD\.md|METHODS-BEYOND|shared/(METHOD|data|seeds)|\bhelper (branch|agent)", re.I)


def user_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "mkdocs.yml"]
    files += [p for p in (ROOT / "docs").rglob("*.md") if "notebooks" not in p.relative_to(ROOT / "docs").parts]
    files += sorted((ROOT / "notebooks").glob("*.ipynb"))
    files += [p for p in (ROOT / "rdfcil").rglob("*") if p.suffix in (".py", ".json", ".txt")]
    return files


def test_no_word_of_how_the_lab_was_built_in_any_file_a_user_reads():
    found = []
    for path in user_files():
        for number, text in enumerate(path.read_text().splitlines(), 1):
            for match in BUILD_HISTORY.finditer(text):
                found.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)}")
    assert found == []


def test_no_word_of_it_in_the_command_line_help(capsys):
    from rdfcil.__main__ import main, parser
    commands = [[]] + [[name] for name in parser()._subparsers._group_actions[0].choices]
    for command in commands:
        with pytest.raises(SystemExit):
            main(command + ["--help"])
        text = capsys.readouterr().out
        assert "usage: python -m rdfcil" in text
        assert not BUILD_HISTORY.search(text), (command, BUILD_HISTORY.search(text).group(0))


def test_the_pattern_catches_what_it_is_for():
    for text in ("the session before", "before this stop", "measured after issue 13", "stop 11's bench",
                 "(METHOD.md section 4)", "see shared/METHOD.md"):
        assert BUILD_HISTORY.search(text), text
    for text in ("a SLURM job", "stops with one line", "issues a warning", "/scratch/data"):
        assert not BUILD_HISTORY.search(text), text


def test_the_readme_is_short_and_its_generated_parts_are_current(tmp_path):
    from rdfcil import docgen
    readme = ROOT / "README.md"
    assert readme.stat().st_size < 10_000
    headings = [line for line in readme.read_text().splitlines() if line.startswith("## ")]
    assert headings == ["## Two commands", "## A short tour", "## Methods", "## Results", "## Documentation"]
    copy = tmp_path / "README.md"
    copy.write_text(readme.read_text())
    assert not docgen.update_readme(copy), "README's generated tables are stale: python -m rdfcil.docgen readme"
