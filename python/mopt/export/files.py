"""Atomic output for the exporters: write into a temporary sibling, rename into place."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator

__all__ = ["ExportError", "atomic_dir", "atomic_file", "check_output_dir", "check_output_file"]


class ExportError(ValueError):
    """The model or the request cannot be exported (the message names what and why)."""


def check_output_dir(export_dir: str | os.PathLike) -> pathlib.Path:
    """`export_dir` as a Path; FileExistsError when it exists and is not an empty folder."""
    p = pathlib.Path(export_dir)
    if p.exists():
        if not p.is_dir():
            raise FileExistsError(f"export path {str(p)!r} exists and is not a folder")
        if any(p.iterdir()):
            raise FileExistsError(
                f"export folder {str(p)!r} exists and is not empty; choose a new folder or "
                "remove it first (an export never overwrites files)"
            )
    return p


def check_output_file(path: str | os.PathLike) -> pathlib.Path:
    """`path` as a Path; FileExistsError when something is already there."""
    p = pathlib.Path(path)
    if p.exists():
        raise FileExistsError(f"export file {str(p)!r} already exists (an export never "
                              "overwrites files)")
    if not p.parent.exists():
        raise FileNotFoundError(f"folder of the export file {str(p)!r} does not exist")
    return p


@contextlib.contextmanager
def atomic_dir(export_dir: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a fresh temporary folder beside `export_dir`; on success it becomes `export_dir`
    (an existing empty folder is replaced), on any exception it is removed and `export_dir` is
    left as it was."""
    target = check_output_dir(export_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent))
    try:
        yield tmp
        check_output_dir(target)  # nothing appeared there while we wrote
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temporary path beside `path`; on success it is renamed to `path`, on any
    exception removed (nothing is left at `path`)."""
    target = check_output_file(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = pathlib.Path(name)
    try:
        yield tmp
        check_output_file(target)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
