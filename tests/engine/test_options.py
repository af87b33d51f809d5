"""The command line is generated from the config dataclasses: every field is an option with
its type, choices and default, and options the user leaves out stay the config's (or recipe's)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from fastcl.__main__ import main
from fastcl.engine.options import add_options, given, option
from fastcl.simclr import SimCLRConfig, config_for
from fastcl.simcse import SimCSEConfig


@pytest.mark.parametrize("command, config", [("simclr", SimCLRConfig), ("simcse", SimCSEConfig)])
def test_help_lists_every_field_with_its_default(command, config, capsys):
    with pytest.raises(SystemExit) as exit_code:
        main([command, "--help"])
    assert exit_code.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for field in dataclasses.fields(config):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
        default = field.default
        shown = "unset" if default is None else ("on" if default is True else "off" if default is False else default)
        assert f"(default: {shown})" in text, (field.name, shown)
        if field.metadata.get("choices"):
            assert "{" + ",".join(field.metadata["choices"]) + "}" in text


def _parse(config, argv):
    parser = argparse.ArgumentParser()
    add_options(parser, config)
    return given(parser.parse_args(argv), config)


def test_options_parse_to_config_fields():
    values = _parse(SimCLRConfig, ["--batch-size", "64", "--lr", "0.5", "--no-progress", "--resume",
                                   "--arch", "resnet18", "--no-cifar-stem"])
    assert values == dict(batch_size=64, lr=0.5, progress=False, resume=True, arch="resnet18", cifar_stem=False)
    assert _parse(SimCLRConfig, []) == {}  # unset options leave the recipe and the defaults alone
    cfg = config_for("digits", **_parse(SimCLRConfig, ["--epochs", "2"]))
    assert cfg.epochs == 2 and cfg.batch_size == 128  # the digits recipe still applies
    assert _parse(SimCSEConfig, ["--mlp-only-train", "--temperature", "0.1"]) == dict(mlp_only_train=True,
                                                                                     temperature=0.1)


def test_bad_option_values_are_argparse_errors(capsys):
    for argv in (["simclr", "--arch", "vgg"], ["simclr", "--batch-size", "many"], ["simcse", "--pooler", "max"]):
        with pytest.raises(SystemExit) as exit_code:
            main(argv)
        assert exit_code.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_unsupported_field_types_are_refused():
    @dataclasses.dataclass
    class Odd:
        sizes: list = option(None, "a list")

    with pytest.raises(TypeError, match="config fields must be"):
        add_options(argparse.ArgumentParser(), Odd)
