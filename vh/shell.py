"""The click group and what every command shares: options, config loading, one-line errors."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from vh.errors import VhError


class VhGroup(click.Group):
    """A group whose commands end bad input with one line and a non-zero exit, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VhError as e:
            click.echo(f"error: {e.line()}", err=True)
            sys.exit(e.code)
        except click.UsageError as e:  # a bad option of a subcommand: one line too, with its help
            where = e.ctx.command_path if e.ctx else "vh"
            text = " ".join(e.format_message().split())
            click.echo(f"error: {where}: {text} (see {where} --help)", err=True)
            sys.exit(e.exit_code)
        except OSError as e:
            if e.errno in (
                errno.ENOSPC,
                errno.EACCES,
                errno.EROFS,
                errno.EPERM,
                errno.ENOENT,
                errno.EDQUOT,
                errno.EISDIR,
                errno.ENOTDIR,
                errno.EEXIST,
            ):
                where = f"{e.filename}: " if e.filename else ""
                click.echo(f"error: {where}{e.strerror}", err=True)
                sys.exit(2)
            raise
        except KeyboardInterrupt:
            click.echo("interrupted: rerun the same command to resume", err=True)
            sys.exit(130)


def keep_freed_memory() -> None:
    """Let glibc reuse freed memory instead of handing it back to the OS.

    Every phase makes many short-lived arrays of hundreds of MB (trunk activations, zarr
    chunks, scoring); touching fresh pages is slow on these VMs (MEASUREMENTS.md): with these
    settings `vh bench eval` spends 4 s instead of 16 s in the kernel. Applied once for
    every command by the `vh` group. The same as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2G
    MALLOC_TOP_PAD_=1G in the environment; a no-op without glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # mallopt parameters (malloc.h)
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
    libc.mallopt(m_top_pad, 2**30)


@click.group(cls=VhGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vh")
def main() -> None:
    """vh: train and compare value heads on a frozen 2048 trunk, via an embedding cache.

    \b
    Phases:  vh synth / vh inspect   datasets
             vh extract              trunk -> embedding cache (once)
             vh fit                  heads on the cache (JAX)
             vh eval                 the report
    """
    keep_freed_memory()


@main.group(cls=VhGroup)
def bench() -> None:
    """Benchmarks; each prints its figures and a ratio measured in one run."""


@main.group(cls=VhGroup)
def trunk() -> None:
    """Trunk init dirs (seeded random weights for demos and tests)."""


# --------------------------------------------------------------------------- shared options
# The options several commands take, each built in one place so that its type, metavar and
# bounds agree everywhere; a command passes its own help text (what the folder is *for*).
# A default is always shown (click shows none for None).

# the keys of vh.extract.trunk.PRESETS, spelled out so `vh --help` needs no torch import
# (tests/test_trunk.py checks that the two agree)
PRESET_NAMES = ("tiny", "small", "288x10")

# every command that reads a trunk takes this flag (vh extract, vh export, vh demo, vh trunk show)
trust_pickle_option = click.option(
    "--trust-pickle",
    is_flag=True,
    help="Load a .pt trunk that holds pickled objects beyond tensors. This EXECUTES code "
    "from the file: only for files you trust (better: convert it to safetensors once).",
)


def folder_option(*decls: str, help: str, required: bool = True, **kw: Any) -> Callable:
    """A folder a command reads or writes (``--out DIRECTORY``), required unless it says."""
    folder = click.Path(file_okay=False)
    return click.option(*decls, required=required, type=folder, show_default=True, help=help, **kw)


def file_option(*decls: str, help: str, **kw: Any) -> Callable:
    """A file a command reads or writes (``--md FILE``): a TOML config, a markdown report."""
    return click.option(*decls, type=click.Path(dir_okay=False), show_default=True, help=help, **kw)


def init_option(help: str, **kw: Any) -> Callable:
    """``--init PATH``: a trunk (init dir, .pt bundle or .safetensors file)."""
    return click.option("--init", type=click.Path(), help=help, **kw)


def preset_option(*decls: str, help: str, **kw: Any) -> Callable:
    """``--preset``: a trunk size of :data:`PRESET_NAMES`."""
    choice = click.Choice(PRESET_NAMES)
    return click.option(*(decls or ("--preset",)), type=choice, show_default=True, help=help, **kw)


def seed_option(help: str) -> Callable:
    """``--seed``, 0 by default; int32 like every seed vh takes (numpy, torch and JAX agree)."""
    return click.option(
        "--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True, help=help
    )


def count_option(name: str, default: int, help: str, *, at_least: int = 1) -> Callable:
    """``NAME N``: a count with a shown default (a benchmark's rows, rounds, threads...)."""
    return click.option(
        name, type=click.IntRange(min=at_least), default=default, show_default=True, help=help
    )


def config_options(fn):
    """Add ``--config FILE`` (repeatable) and ``--set section.key=value`` (repeatable)."""

    @file_option(
        "--config", "configs", multiple=True, help="TOML config file (repeatable; later files win)."
    )
    @click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override one config value (repeatable), e.g. --set fit.train.lr=1e-3.",
    )
    @functools.wraps(fn)
    def wrapper(*args, configs=(), sets=(), **kwargs):
        from vh.config import load_config

        cfg = load_config(configs, sets)
        return fn(*args, cfg=cfg, **kwargs)

    return wrapper


def done(message: str) -> None:
    """The closing line of a command: what it wrote where."""
    click.echo(message)
