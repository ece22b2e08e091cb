"""Flags, `--config` files and `--print-config`, all generated from the declarations in `scratch_gpt.args`.

A command's options are one dataclass. Every declared field becomes a flag (older spellings hidden),
a `--config` key (the flag's name, with `-` or `_`) and a checked value. The value of an option is,
from weakest to strongest: the field's default, the command's default, the `--config` file, the
command line; argparse reads only the command line (no defaults), so that order is a dict merge.
"""

import argparse
import json
import sys
from dataclasses import Field
from pathlib import Path

from scratch_gpt.args import (
    as_config,
    check_values,
    declared,
    default_of,
    flag_of,
    value_type,
)
from scratch_gpt.errors import BadInput, MissingFile


def on_command_line(cls) -> list[Field]:
    return [f for f in declared(cls) if f.metadata["cli"]]


def group_title(cls, f: Field) -> str:
    """The `--help` group of a field: the GROUP of the most derived class that declares it."""
    owner = next(base for base in cls.__mro__ if f.name in getattr(base, "__annotations__", {}))
    return getattr(owner, "GROUP", "options")


def converter(f: Field):
    return f.metadata["parse"] or value_type(f)[0]


def help_text(f: Field, default) -> str:
    meta = f.metadata
    if meta["required"] and default in (None, []):
        return f"{meta['help']} (required)"
    if default is None or default is False or default == [] or meta["positional"]:
        return meta["help"].replace("%", "%%")
    shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
    return meta["help"].replace("%", "%%") + f" (default: {shown})"


def add_option(group, f: Field, default) -> None:
    """One declared field as a flag (or a positional argument) of `group`."""
    meta, (kind, count) = f.metadata, value_type(f)
    if meta["positional"]:
        group.add_argument(f.name, metavar=meta["metavar"] or f.name.upper(), help=meta["help"])
        return
    kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text(f, default))
    if kind is bool:  # a switch: the flag sets the opposite of the field's default (--no-progress)
        kwargs["action"] = "store_false" if f.default is True else "store_true"
    else:
        static = meta["choices"] if isinstance(meta["choices"], tuple) else None
        kwargs.update(type=converter(f), choices=static, metavar=meta["metavar"])
        if meta["repeat"]:
            kwargs["action"] = "append"
        elif count is not None and not meta["parse"]:  # a parse function reads the whole value (a,b,c)
            kwargs["nargs"] = count or "+"
    group.add_argument(flag_of(f), **kwargs)
    for alias in meta["aliases"]:
        if isinstance(alias, tuple):  # an older flag that sets one value
            group.add_argument(alias[0], dest=f.name, action="store_const", const=alias[1], default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS)  # fmt: skip
        else:
            group.add_argument(alias, **{**kwargs, "help": argparse.SUPPRESS})


def build_parser(prog: str, cls, defaults: dict, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", metavar="FILE", help="YAML/JSON file of options (keys: the flag names); flags win")
    parser.add_argument("--print-config", action="store_true", help="print the options as a --config file, and exit")
    groups = {}
    for f in on_command_line(cls):
        title = group_title(cls, f)
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        add_option(group, f, defaults.get(f.name, default_of(f)))
    return parser


def parse(prog: str, cls, argv: list[str], defaults: dict, required: tuple = (), description: str = ""):
    """`(options, print_config)`: the options of `cls` that `argv` (with `--config`) describes, checked."""
    parser = build_parser(prog, cls, defaults, description)
    given = vars(parser.parse_args(argv))
    config_file, print_config = given.pop("config"), given.pop("print_config")
    values = {f.name: default_of(f) for f in on_command_line(cls)} | defaults
    values |= read_config_file(config_file, cls) if config_file else {}
    values |= given
    needed = [f for f in on_command_line(cls) if f.metadata["required"] or f.name in required]
    missing = [flag_of(f) for f in needed if values.get(f.name) in (None, [])]
    if missing:
        flags = ", ".join(missing)
        parser.error(f"the following arguments are required: {flags} (on the command line or in --config); see --help.")
    check_values(cls, values, flag_of)  # the message names the flag the user gave
    return cls(**values), print_config


# ----------------------------------------------------------------------------------------------
# --config files in, --print-config (and a run folder's config.yaml) out


def config_keys(cls) -> dict[str, Field]:
    """Every key a --config file may use: each flag and older spelling, with `-` or `_`."""
    keys = {}
    for f in on_command_line(cls):
        if f.metadata["positional"]:
            continue
        for flag in (flag_of(f), *(alias if isinstance(alias, str) else alias[0] for alias in f.metadata["aliases"])):
            name = flag.lstrip("-")
            keys[name] = keys[name.replace("-", "_")] = f
    return keys


def read_config_file(path: str, cls) -> dict:
    """The options in a YAML/JSON file as `{field: value}`; one clear error for anything wrong in it."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise MissingFile(f"The config file {path!r} does not exist; check the --config path.")
    try:
        text = file.read_text(encoding="utf-8")
        values = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None) or getattr(error, "lineno", None)
        line = f" (line {where.line + 1})" if hasattr(where, "line") else f" (line {where})" if where else ""
        raise BadInput(f"The config file {path!r} is not valid YAML/JSON{line}; fix its syntax.") from None
    if not isinstance(values, dict):
        raise BadInput(f"The config file {path!r} must hold a mapping of option names to values.")
    keys = config_keys(cls)
    unknown = sorted(str(key) for key in values if str(key) not in keys)
    if unknown:
        known = ", ".join(sorted(flag_of(f).lstrip("-") for f in set(keys.values())))
        raise BadInput(f"Unknown option(s) {', '.join(unknown)} in {path!r}; valid keys are the flag names: {known}.")
    return dict(config_value(keys[str(key)], str(key), value, path) for key, value in values.items())


def config_value(f: Field, key: str, value, path: str):
    """(field, value) for one key of a config file, typed as the flag would be."""
    kind, count = value_type(f)
    const = next((alias[1] for alias in f.metadata["aliases"] if isinstance(alias, tuple) and alias[0].lstrip("-") in
                  (key, key.replace("_", "-"))), None)  # fmt: skip
    if kind is bool or const is not None:
        if not isinstance(value, bool):
            raise BadInput(f"Option {key!r} in {path!r} is a switch; give it true or false.")
        if const is not None:
            return f.name, const if value else default_of(f)
        return f.name, (not value) if f.default is True else value  # `no-progress: true` switches progress off
    many = (count is not None and not f.metadata["parse"]) or f.metadata["repeat"]
    if not many and isinstance(value, list):
        raise BadInput(f"Option {key!r} in {path!r} takes one value, got a list.")
    items = value if isinstance(value, list) else [value]  # one string for a list option is one item
    try:
        items = [converter(f)(item) if item is not None else item for item in items]
    except (TypeError, ValueError):
        wanted = "mapping" if f.metadata["parse"] else kind.__name__
        raise BadInput(f"Option {key!r} in {path!r} has the value {value!r}, which is not a valid {wanted}.") from None
    if count and len(items) != count:
        raise BadInput(f"Option {key!r} in {path!r} takes {count} values, got {value!r}.")
    return f.name, items if many else items[0]


def print_config(options) -> None:
    import yaml

    sys.stdout.write(yaml.safe_dump(as_config(options), sort_keys=False, allow_unicode=True))


__all__ = ["parse", "build_parser", "read_config_file", "print_config"]
