"""Every config key explains itself from one place, its field's metadata: meaning, unit and
published value; ``list``, ``run --help`` and the documentation's configuration page show it."""

import dataclasses

import pytest

from rdfcil import config
from rdfcil.config import NA, Config, key_table


def test_every_key_has_its_meaning_unit_and_published_value():
    for f in dataclasses.fields(Config):
        assert set(config.METADATA) <= set(f.metadata), f"config key '{f.name}' lacks help, unit or paper metadata"
        text = f.metadata["help"]
        assert isinstance(text, str) and len(text) > 10 and "\n" not in text, f.name
        assert isinstance(f.metadata["unit"], str), f.name
    assert [r["key"] for r in key_table()] == list(config.FIELD_NAMES)


def test_a_key_without_metadata_is_named():
    @dataclasses.dataclass
    class Bare(Config):
        extra: int = 3

    original = config.Config
    config.Config = Bare
    try:
        with pytest.raises(KeyError, match="config key 'extra' lacks metadata help, unit, paper"):
            key_table()
    finally:
        config.Config = original


@pytest.mark.parametrize("method", ["rdfcil", "abd"])
def test_the_published_value_is_the_paper_preset(method):
    """On CIFAR-100 the paper preset sets every published key; its R-DFCIL values are the
    metadata's (the ABD repository's scripts differ exactly in their own keys)."""
    preset = config.preset_values("paper", "cifar100", method)
    metadata = {f.name: f.metadata["paper"] for f in dataclasses.fields(Config)}
    differ = {k for k, v in preset.items() if metadata[k] != NA and metadata[k] != v}
    if method == "rdfcil":
        assert differ == set()
    else:
        assert differ == set(config.ABD_SCRIPTS["cifar100"]) - {"batch_size"}
    assert {k for k in preset if metadata[k] == NA} == {"notes"}


def test_list_and_run_help_show_every_key(capsys):
    from rdfcil.__main__ import main
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    for row in key_table():
        flag = "--" + row["key"].replace("_", "-")
        assert flag in listed and flag in helped
        assert " ".join(row["help"].split()) in " ".join(listed.split())
    assert "--lambda-hkd 0.15 [published 0.15]" in " ".join(listed.split())
    assert "weight of the hard knowledge distillation on synthetic images" in helped
    assert "--batch-size 128 [images; published 128]" in helped
