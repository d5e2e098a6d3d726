"""Atomic writes: every file or folder hf_metric produces appears whole or not at all.

A reader (a resumed run, a tracker, a user's script) never sees half a file, and an interrupted write never
replaces a good file with a broken one: everything is written next to its target and renamed into place.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike, unique: bool = False) -> Iterator[str]:
    """Yield a temporary sibling path to write the file into; on success it is renamed to `path`. `unique`: a
    temporary name of its own (`PATH.<pid>.<random>.tmp`), for a file that several processes may write at once."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp" if unique else f"{path}.tmp"
    try:
        yield tmp
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[str], Any]) -> str:
    """Call `write(tmp_path)` and rename the result to `path` (e.g. `safetensors.save_file`, `fig.savefig`)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return os.fspath(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return write_atomic(path, write)


def write_json_atomic(path: str | os.PathLike, data: Any) -> str:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def replace_directory(staged: str, final: str) -> None:
    """Move a completely written folder `staged` to `final`, dropping an older `final`."""
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(staged, final)


@contextmanager
def atomic_directory(final_path: str) -> Iterator[str]:
    """Yield a temporary sibling folder to write into; on success it replaces `final_path` in one rename."""
    parent = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(final_path)}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, final_path)
