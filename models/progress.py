"""One way every long command shows progress: a tqdm bar on stderr, with rate and ETA.

The bar goes to stderr only, so JSON on stdout stays clean. It is off when asked (`--no-progress`)
and when stderr is not a terminal: a log file or CI capture would otherwise fill with carriage
returns. tqdm comes with the `[train]` extra; where it is not installed (the CPU image's export
stage) the commands run without a bar. Shared by `training/` and `vae-export` (`app/`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def progress_wanted(no_progress: bool = False) -> bool:
    """True when a bar helps: not switched off, and stderr is a terminal someone watches."""
    return not no_progress and sys.stderr.isatty()


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    enabled: bool = True,
) -> Any:
    """A tqdm bar on stderr that vanishes when done; a silent pass-through when not `enabled`,
    when stderr is not a terminal, or without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return NoBar(iterable)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        disable=not (enabled and sys.stderr.isatty()),
    )


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """The same `--no-progress` on every command."""
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is also off when stderr is not a terminal)",
    )


class NoBar(Generic[T]):
    """What `progress_bar` gives without tqdm: iterates, and ignores what a bar would show."""

    def __init__(self, iterable: Iterable[T] | None = None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[T]:
        return iter(self.iterable or ())

    def __enter__(self) -> NoBar[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix(self, *args: object, **kwargs: object) -> None:
        return None

    def close(self) -> None:
        return None
