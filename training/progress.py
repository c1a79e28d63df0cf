"""One way every long command shows progress: a tqdm bar on stderr, with rate and ETA.

The bar goes to stderr only, so JSON on stdout stays clean. It is off when asked (`--no-progress`)
and when stderr is not a terminal: a log file or CI capture would otherwise fill with carriage
returns.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

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
) -> tqdm:
    """A tqdm bar on stderr that vanishes when done; a silent pass-through when not `enabled`
    or stderr is not a terminal."""
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
