"""Entry point: the `vh` group with every command registered.

Each command lives in a small ``vh/cmd_*.py`` module: it loads the config, applies overrides
and calls one library function. Heavy imports (torch, jax) happen inside the commands.
"""

from __future__ import annotations

import importlib

from vh.shell import main

for _mod in (
    "cmd_synth",
    "cmd_inspect",
    "cmd_trunk",
    "cmd_extract",
    "cmd_fit",
    "cmd_eval",
    "cmd_export",
    "cmd_demo",
):
    try:
        importlib.import_module(f"vh.{_mod}")
    except ModuleNotFoundError as e:  # a phase not built yet
        if e.name != f"vh.{_mod}":
            raise

__all__ = ["main"]

if __name__ == "__main__":
    main()
