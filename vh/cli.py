"""Entry point: the `vh` group with every command registered.

Each command lives in a small ``vh/cmd_*.py`` module: it loads the config, applies overrides
and calls one library function. Heavy imports (torch, jax) happen inside the commands, so
``vh --help`` stays fast.
"""

from __future__ import annotations

# importing a command module registers its commands on the group
from vh import (  # noqa: F401
    cmd_bench,
    cmd_demo,
    cmd_eval,
    cmd_export,
    cmd_extract,
    cmd_fit,
    cmd_inspect,
    cmd_play,
    cmd_synth,
    cmd_trunk,
)
from vh.shell import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
