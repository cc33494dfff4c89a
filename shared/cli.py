"""Command-line pieces every entry point shares: config dataclasses as flags, bad-input exits.

    python -m shared.cli split --data-dir DIR [--split RULE] [--split-seed S]   # a split's
                                                   # sizes and fingerprint
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path

from shared.data.spec import DataSpec, load
from shared.data.watson import DataError

EXIT_BAD_INPUT = 2
METAVARS = {int: "N", float: "X", Path: "DIR"}
# Argument-group titles of nested config sections (a config field holding a dataclass).
SECTION_TITLES = {"data": "data and split", "lora": "LoRA"}


@contextlib.contextmanager
def exit_on_bad_input():
    """Turn bad-input exceptions into a one-line `error:` on stderr and exit code 2 (or the
    error's own `exit_code`: 3 for a run directory another process holds)."""
    try:
        yield
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", EXIT_BAD_INPUT))


def trainer_main(parse_config, prepare, run, argv=None) -> None:
    """A trainer's command: parse flags and check every input (bad input: one `error:` line,
    exit 2, nothing written), then run; `prepare` returns None when there is nothing to do."""
    with exit_on_bad_input():
        setup = prepare(parse_config(argv))
    if setup is not None:
        run(setup)


def check_fields(config, checks) -> None:
    """Raise a one-line ValueError for the first (flag, ok, problem) whose `ok` is false."""
    for flag, ok, problem in checks:
        if not ok:
            raise ValueError(f"--{flag} {getattr(config, flag.replace('-', '_'))}: {problem}")


# ---------------------------------------------------------------- config dataclasses as flags

def add_config_flags(parser: argparse.ArgumentParser, cls, *, title: str,
                     rename: dict | None = None, section: str = "") -> None:
    """One flag per dataclass field: --field-name, typed by the annotation, help = the comment
    after the field, so a config's documentation and its --help cannot drift apart. A field
    holding a dataclass (a config section, e.g. `data: DataSpec`) gets its own group; a field
    with metadata {"flag": False} gets none (another flag sets it). `rename` maps a field's
    dotted path in the config (`lora.dropout`) to its flag name."""
    rename = rename or {}
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    comments = dict(re.findall(r"^\s+(\w+): .*?  # (.*)$", inspect.getsource(cls), re.M))
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if not field.metadata.get("flag", True):
            continue
        if dataclasses.is_dataclass(kind):
            add_config_flags(parser, kind, title=SECTION_TITLES.get(field.name, field.name),
                             rename=rename, section=section + field.name + ".")
            continue
        default = (field.default_factory() if field.default is dataclasses.MISSING
                   else field.default)
        help_text = comments[field.name].replace("%", "%%")
        if "[default:" not in help_text:  # a comment may say what a None default means
            shown = ",".join(default) if isinstance(default, tuple) else default
            help_text += f" [default: {shown}]"
        options = {"default": default, "help": help_text}
        if isinstance(kind, types.UnionType):  # `int | None`: the flag takes an int
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            options["type"], options["metavar"] = _comma_list, "A,B"
        else:
            options["type"], options["metavar"] = kind, METAVARS.get(kind, field.name.upper())
        group.add_argument("--" + flag_dest(section + field.name, rename).replace("_", "-"),
                           **options)


def config_from_flags(cls, values: dict, *, rename: dict | None = None, section: str = ""):
    """The dataclass `cls` (sections included) from parsed flags (`vars(namespace)`); raises
    the config's own one-line ValueError on a bad value."""
    rename = rename or {}
    hints = typing.get_type_hints(cls)
    fields = {}
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if not field.metadata.get("flag", True):
            continue  # its default; the config derives it from other fields
        fields[field.name] = (config_from_flags(kind, values, rename=rename,
                                                section=section + field.name + ".")
                              if dataclasses.is_dataclass(kind)
                              else values[flag_dest(section + field.name, rename)])
    return cls(**fields)


def config_flags(config) -> list[str]:
    """The flags that give a flat config (e.g. a DataSpec) back through add_config_flags and
    config_from_flags: one per field that differs from its default."""
    flags = []
    for field in dataclasses.fields(config):
        default = (field.default_factory() if field.default is dataclasses.MISSING
                   else field.default)
        value = getattr(config, field.name)
        if not field.metadata.get("flag", True) or value == default:
            continue
        name = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(name if value else "--no-" + name[2:])
        elif value is None:
            raise ValueError(f"{name}: a None that is not the default has no flag")
        else:
            flags += [name, ",".join(value) if isinstance(value, tuple) else str(value)]
    return flags


def flag_dest(path: str, rename: dict) -> str:
    """The argparse destination of the flag of the field at dotted `path`."""
    return rename.get(path, path.rpartition(".")[2]).replace("-", "_")


def config_to_dict(config) -> dict:
    """A config dataclass (sections included) as JSON-ready values: paths become strings."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# ---------------------------------------------------------------- python -m shared.cli split

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.cli",
                                     description="Project commands that need no trainer.")
    commands = parser.add_subparsers(dest="command", required=True)
    split = commands.add_parser("split", help="print a split's sizes and fingerprint")
    add_config_flags(split, DataSpec, title="data and split")
    args = parser.parse_args(argv)
    with exit_on_bad_input():
        data = load(config_from_flags(DataSpec, vars(args)))
        print(json.dumps(data.split.describe(), indent=2))


if __name__ == "__main__":
    main()


def error_line(stderr: str) -> str:
    """The line that says why a child process failed: its last one-line `error:` (without the
    prefix), else the last traceback line naming an exception (JAX ends tracebacks with a note
    about filtered frames, which names nothing), else its last line."""
    lines = stderr.strip().splitlines() or ["no message"]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    named = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
    return (errors or named or lines)[-1]
