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
        expected = "(required)" if field.metadata.get("required") else f"(default: {shown})"
        assert expected in text, (field.name, expected)
        if field.metadata.get("choices"):
            assert "{" + ",".join(field.metadata["choices"]) + "}" in text


def _parse(config, argv):
    parser = argparse.ArgumentParser()
    add_options(parser, config)
    return given(parser.parse_args(argv), config)


def test_options_parse_to_config_fields():
    values = _parse(SimCLRConfig, ["--batch-size", "64", "--lr", "0.5", "--no-progress", "--resume",
                                   "--arch", "resnet18", "--no-cifar-stem"])
    assert values == dict(batch_size=64, lr=0.5, progress=False, resume="yes", arch="resnet18", cifar_stem=False)
    for argv, mode in ((["--resume", "auto"], "auto"), (["--no-resume"], "no"), (["--resume", "no"], "no")):
        assert _parse(SimCLRConfig, argv) == dict(resume=mode)
    with pytest.raises(SystemExit):
        _parse(SimCLRConfig, ["--resume", "maybe"])
    assert _parse(SimCLRConfig, []) == {}  # unset options leave the recipe and the defaults alone
    cfg = config_for("digits", **_parse(SimCLRConfig, ["--epochs", "2"]))
    assert cfg.epochs == 2 and cfg.batch_size == 128  # the digits recipe still applies
    required = ["--model", "tiny", "--train-file", "builtin", "--out", "runs/x"]
    assert _parse(SimCSEConfig, required + ["--mlp-only-train", "--temperature", "0.1"]) == dict(
        model="tiny", train_file="builtin", out="runs/x", mlp_only_train=True, temperature=0.1)


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


def test_required_options_and_the_default_dataset(capsys):
    """simcse needs --model, --train-file and --out on the command line, as before; simclr without
    --data takes SimCLRConfig's default dataset."""
    with pytest.raises(SystemExit) as exit_code:
        main(["simcse", "--model", "tiny"])
    assert exit_code.value.code == 2 and "--train-file" in capsys.readouterr().err
    assert config_for().data == SimCLRConfig.data == "fake"
    assert config_for(**_parse(SimCLRConfig, ["--epochs", "3"])).epochs == 3


def test_modern_optional_hints_and_missing_defaults():
    @dataclasses.dataclass
    class Modern:
        steps: "int | None" = option(None, "pipe union")

    assert _parse(Modern, ["--steps", "4"]) == {"steps": 4}

    @dataclasses.dataclass
    class Factory:
        sizes: int = dataclasses.field(default_factory=lambda: 3)

    with pytest.raises(TypeError, match="needs a plain default"):
        add_options(argparse.ArgumentParser(), Factory)
