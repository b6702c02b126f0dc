"""The `gru-lm train` options made from config.Settings: one option per setting, with its help and default."""

from __future__ import annotations

import inspect

import typer

from gru_lm.training.settings import DEFAULTS, FIELD_TYPES, HELP


def with_settings_options(command):
    """Give a command one option per training setting (--hidden-size, ...), help and default from config.Settings.

    Each option defaults to None, meaning "not given": the setting then comes from --config, a resumed
    run or the built-in default, in that order of precedence (settings.resolve).
    """
    types = {"int": int, "float": float, "str": str, "bool": bool}
    sig = inspect.signature(command)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for name, kind in FIELD_TYPES.items():
        default = DEFAULTS[name]
        if name == "reset_after":
            decl, shown = "--reset-after/--reset-before", "reset-after" if default else "reset-before"
        elif kind == "bool":  # --name / --no-name
            flag = name.replace("_", "-")
            decl, shown = f"--{flag}/--no-{flag}", "on" if default else "off"
        else:
            decl, shown = "--" + name.replace("_", "-"), default if default != "" else "none"
        option = typer.Option(None, decl, help=f"{HELP[name]} [default: {shown}]", show_default=False)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=types[kind] | None)
        )
    command.__signature__ = sig.replace(parameters=params)
    return command
