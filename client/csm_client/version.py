"""`--version` for the command-line tools: the installed distribution's version."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version


def package_version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


def add_version_flag(parser: argparse.ArgumentParser, distribution: str = "csm-client") -> None:
    """`PROG --version` prints 'PROG <version of DISTRIBUTION>' and exits 0."""
    parser.add_argument("--version", action="version",
                        version=f"{parser.prog} {package_version(distribution)}")
