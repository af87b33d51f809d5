"""Config dataclasses as the one source of a trainer's command-line options.

A field declared with `option(default, help, choices=...)` becomes `--field-name` in its
subcommand, with its type, choices and default taken from the dataclass. Options the user does
not give stay unset, so the config's defaults (and a dataset's or model's recipe) apply."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Callable, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number option allows: low/high bounds (None: open-ended), each included unless
    marked open, and why (said in the refusal, when the bound's reason is not obvious)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def __contains__(self, value) -> bool:  # written so that NaN is outside every range
        above_low = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return above_low and (self.high is None or (value < self.high if self.high_open else value <= self.high))

    def refusal(self, value) -> str:
        """'must be >= 1, got 0' (the caller puts the name in front)."""
        if self.high is None:
            text = f"{'>' if self.low_open else '>='} {self.low}"
        else:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        return f"must be {text}{f' ({self.why})' if self.why else ''}, got {value}"


def option(default: Any, help: str, choices: Optional[Sequence] = None, required: bool = False,
           flag_value: Optional[str] = None, minimum: Optional[float] = None, above: Optional[float] = None,
           maximum: Optional[float] = None, below: Optional[float] = None, why: str = ""):
    """A config field with its command-line help (and choices). required: the command line
    insists on it (the default serves Python callers only). flag_value: a str option that may
    also be given alone (`--resume` means `--resume yes`), with `--no-name` for "no". The allowed
    values: >= minimum or > above, <= maximum or < below (why: the reason, said when refused),
    checked by the command line and by `check_ranges` (unset, None, is always allowed)."""
    bounds = None
    if (minimum, above, maximum, below) != (None,) * 4:
        bounds = Range(above if minimum is None else minimum, below if maximum is None else maximum,
                       low_open=above is not None, high_open=below is not None, why=why)
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "required": required,
                                                        "flag_value": flag_value, "range": bounds})


def at_least(kind: type, minimum) -> Callable[[str], Any]:
    """An argparse type: `kind` of the text, refused below `minimum` with a message saying so."""
    return within(kind, Range(minimum))


def within(kind: type, bounds: Range) -> Callable[[str], Any]:
    """An argparse type: `kind` of the text, refused outside `bounds` with a message saying so."""
    def parse(text: str):
        value = kind(text)
        if value not in bounds:
            raise argparse.ArgumentTypeError(bounds.refusal(value))
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def check_ranges(config) -> None:
    """A ValueError for the first field of `config` outside its option's range (None is unset)."""
    for field in dataclasses.fields(config):
        bounds, value = field.metadata.get("range"), getattr(config, field.name)
        if bounds is not None and value is not None and value not in bounds:
            raise ValueError(f"{field.name} {bounds.refusal(value)}")


def _value_type(hint) -> type:
    """int, float, str or bool from a field's type hint (Optional[X] counts as X)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if hint not in (int, float, str, bool):
        raise TypeError(f"config fields must be int, float, str or bool (or Optional of one), got {hint!r}")
    return hint


def add_options(parser: argparse.ArgumentParser, config_class) -> None:
    """One `--name` per field of `config_class`; booleans get `--name` / `--no-name`."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        kind = _value_type(hints[field.name])
        meta = field.metadata
        if field.default is dataclasses.MISSING:
            raise TypeError(f"config field {field.name!r} needs a plain default (option(...)) to become an option")
        help_text = meta.get("help", "")
        default = field.default
        shown = "unset" if default is None else ("on" if default is True else "off" if default is False else default)
        if meta.get("required"):
            help_text = f"{help_text} (required)"
        else:
            help_text = f"{help_text} (default: {shown})" if help_text else f"default: {shown}"
        help_text = help_text.replace("%", "%%")
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif meta.get("flag_value") is not None:
            # --name (alone: flag_value), --name VALUE, and --no-name for the choice "no"
            parser.add_argument(flag, dest=field.name, nargs="?", const=meta["flag_value"], choices=meta.get("choices"),
                                default=None, help=help_text)
            parser.add_argument("--no-" + flag[2:], dest=field.name, action="store_const", const="no",
                                help=argparse.SUPPRESS)
        else:
            parse = kind if meta.get("range") is None else within(kind, meta["range"])
            parser.add_argument(flag, dest=field.name, type=parse, choices=meta.get("choices"), default=None,
                                metavar=None if meta.get("choices") else field.name.upper(),
                                required=bool(meta.get("required")), help=help_text)


def given(args: argparse.Namespace, config_class) -> dict:
    """The fields the user set on the command line."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
