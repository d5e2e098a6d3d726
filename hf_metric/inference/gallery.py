"""`Gallery`: enrolled identities (embeddings + labels + groups + row ids) that queries are identified against.

Metric learning is for what a classifier cannot do: identify a query among identities the model never saw,
within a candidate set (the trees of one address), say "unknown" when nothing matches, and enrol a new
identity without retraining. A gallery holds the L2-normalised embeddings of enrolled rows, their labels
(strings: any name, known to the model or not), optional groups (candidate sets) and row ids, and the
fingerprint of the model that embedded them (a hash of its weights: a query embedded by another model, even
the same recipe retrained with another seed, lives in another space and is refused).

Matching is per row (the nearest enrolled row) or per identity (the normalised centroid of an identity's rows
within its group), a stored setting. Search is exact (`neighbors.topk_neighbors`) unless the gallery stores an
approximate index setting (`model.knn_index`, `evaluation.ann`) and is large enough for it.

On disk (a folder, never pickle): `gallery.json` (the manifest), `embeddings-<token>.safetensors` and
`rows-<token>.parquet` (label, group, row_id). `save` writes new data files under a fresh token, then replaces
the manifest in one `os.replace`, then deletes the files no manifest names: an append or removal that fails or
is killed at any point leaves the previous gallery readable and unchanged, and a removed identity's
embeddings are really gone from the folder after a successful save.
"""

from __future__ import annotations

import glob
import json
import os
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import write_json_atomic
from ..errors import ConfigError, DataError
from .gallery_search import GallerySearchResult, as_names, candidate_sets, is_null, rows_by_group, search_targets

GALLERY_FORMAT = "hf_metric.Gallery/1"
MANIFEST_FILE = "gallery.json"
MATCHES = ("row", "identity")


def _unit_rows(x: Any) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (rows, dim), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(a.astype(np.float64), axis=1, keepdims=True)
    return np.ascontiguousarray(a / np.maximum(norms, 1e-12), dtype=np.float32)


def _strings(values: Sequence[Any] | None, n: int, what: str, nullable: bool) -> np.ndarray:
    if values is None:
        return np.full(n, None, dtype=object)
    out = as_names(values)
    if len(out) != n:
        raise ValueError(f"{n} embeddings but {len(out)} {what}")
    if not nullable and is_null(out).any():
        raise ValueError(f"{what}: row {int(np.flatnonzero(is_null(out))[0])} is null")
    return out


class Gallery:
    """Enrolled rows that queries are searched against (module doc).

    Args:
        embeddings: (n, dim) rows, normalised here.
        labels: n identity names (any values; stored as strings).
        groups: n candidate-set names or None (no group).
        row_ids: n ids of the source rows (unique where given) or None.
        fingerprint: the embedding model's `model_fingerprint`.
        match: "row" (nearest enrolled row) or "identity" (nearest identity centroid).
        index: `model.knn_index` settings for large galleries (None: exact).
        calibration: the unknown-identity rule (`gallery_calibration.calibrate_gallery`), or None.
    """

    def __init__(
        self,
        embeddings: Any,
        labels: Sequence[Any],
        groups: Sequence[Any] | None = None,
        row_ids: Sequence[Any] | None = None,
        fingerprint: str = "",
        match: str = "row",
        index: dict[str, Any] | None = None,
        calibration: dict[str, Any] | None = None,
    ) -> None:
        if match not in MATCHES:
            raise ConfigError(f"match: must be one of {', '.join(MATCHES)}, got {match!r}")
        self.embeddings = _unit_rows(embeddings)
        n = len(self.embeddings)
        self.labels = _strings(labels, n, "labels", nullable=False)
        self.groups = _strings(groups, n, "groups", nullable=True)
        self.row_ids = _strings(row_ids, n, "row ids", nullable=True)
        _check_unique_ids(self.row_ids)
        self.fingerprint = fingerprint
        self.match = match
        self.index = dict(index) if index else None
        self.calibration = calibration
        self._searcher = None
        self._identities: tuple | None = None
        self._members: dict[str, np.ndarray] | None = None
        self._row_members: dict[str, np.ndarray] | None = None

    # --- building ---------------------------------------------------------------------------------------------

    @classmethod
    def from_parquet(cls, model: Any, path: str, **options: Any) -> Gallery:
        """Embed and enrol every row of a labelled Parquet file, streamed in record batches (bounded memory).

        `model`: a model folder or a loaded backend (`inference.backends.load_backend`). Options: `featurizer`,
        `settings` (`predict.StreamSettings`), `match`, `index`, and the columns `label_column="label"`,
        `group_column="group"` (optional in the file), `id_column="id"` (optional; default ids are
        `<file name>#<row>`). See `gallery_build.gallery_from_parquet`.
        """
        from .gallery_build import gallery_from_parquet

        return gallery_from_parquet(model, path, **options)

    def add(
        self,
        embeddings: Any,
        labels: Sequence[Any] | None = None,
        groups: Sequence[Any] | None = None,
        row_ids: Sequence[Any] | None = None,
    ) -> Gallery:
        """Enrol more rows (another `Gallery` of the same model, or arrays as in the constructor); returns self.
        Searching afterwards equals searching a gallery built from all rows at once. Saving is a separate,
        atomic step (`save`)."""
        if isinstance(embeddings, Gallery):
            other = embeddings
            if self.fingerprint and other.fingerprint and other.fingerprint != self.fingerprint:
                raise ConfigError(
                    f"the rows to add were embedded by another model (fingerprint {short(other.fingerprint)}), "
                    f"this gallery's is {short(self.fingerprint)}"
                )
            new = other
        else:
            if labels is None:
                raise ValueError("add(embeddings, labels, ...): labels are required")
            new = Gallery(embeddings, labels, groups, row_ids, self.fingerprint, self.match)
        if len(self) and new.embeddings.shape[1] != self.embeddings.shape[1]:
            raise ConfigError(f"the rows to add have dimension {new.embeddings.shape[1]}, the gallery {self.dim}")
        row_ids = np.concatenate([self.row_ids, new.row_ids])
        _check_unique_ids(row_ids)
        self.embeddings = np.concatenate([self.embeddings, new.embeddings]) if len(self) else new.embeddings
        self.labels = np.concatenate([self.labels, new.labels])
        self.groups = np.concatenate([self.groups, new.groups])
        self.row_ids = row_ids
        self.fingerprint = self.fingerprint or new.fingerprint
        self._changed()
        return self

    def remove(self, labels: str | Sequence[str]) -> int:
        """Delete every row of the identity (or identities) `labels`; returns the rows removed. After `save` their
        embeddings are gone from the folder too."""
        names = {labels} if isinstance(labels, str) else {str(x) for x in labels}
        missing = sorted(names - set(self.labels.tolist()))
        if missing:
            raise DataError(f"label {missing[0]!r} is not in the gallery")
        keep = ~np.isin(self.labels.astype(str), sorted(names))
        removed = int((~keep).sum())
        self.embeddings, self.labels = self.embeddings[keep], self.labels[keep]
        self.groups, self.row_ids = self.groups[keep], self.row_ids[keep]
        self._changed()
        return removed

    def set_match(self, match: str) -> None:
        """Match per "row" or per "identity" from now on (a search setting: the rows stay as they are)."""
        if match not in MATCHES:
            raise ConfigError(f"match: must be one of {', '.join(MATCHES)}, got {match!r}")
        self.match = match
        self._identities = self._members = None

    def _changed(self) -> None:
        # the calibration is kept: `hf-metric index --append` says to redo it
        self._identities = self._members = self._row_members = None

    # --- searching --------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def identities(self) -> list[str]:
        """The distinct labels, sorted."""
        return sorted(set(self.labels.tolist()))

    @property
    def threshold(self) -> float | None:
        """Matches scoring below this are unknown identities (None: not calibrated)."""
        return None if self.calibration is None else float(self.calibration["threshold"])

    def targets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """What a query is compared with: (embeddings, labels, groups, row ids): the rows, or per identity the
        normalised centroid of each (label, group) (row ids None)."""
        if self.match == "row":
            return self.embeddings, self.labels, self.groups, self.row_ids
        if self._identities is None:
            pairs = zip(self.labels.tolist(), self.groups.tolist(), strict=True)
            keys = np.asarray([json.dumps([lab, g]) for lab, g in pairs])
            _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            sums = np.zeros((len(first), self.dim), dtype=np.float64)
            np.add.at(sums, inverse, self.embeddings.astype(np.float64))
            self._identities = (_unit_rows(sums), self.labels[first], self.groups[first], None)
        return self._identities

    def search(self, queries: Any, k: int = 5, groups: Sequence[Any] | None = None) -> GallerySearchResult:
        """The `k` best matches of each query embedding (cosine, best first), only among the gallery rows of the
        query's group when `groups` is given (`gallery_search` doc: statuses, padding)."""
        q = _unit_rows(queries)
        if len(self) and q.shape[1] != self.dim:
            raise ConfigError(f"queries have dimension {q.shape[1]}, the gallery {self.dim}")
        emb, labels, target_groups, ids = self.targets()
        if groups is not None and self._members is None:
            self._members = rows_by_group(target_groups)
        return search_targets(q, emb, labels, target_groups, ids, k, groups, self._search(), self._members)

    def candidate_rows(self, group: Any) -> tuple[np.ndarray | None, str]:
        """The enrolled rows a query of `group` is compared with (None: all of them) and its status, by the rule
        of `search` (`gallery_search.candidate_sets`): the kNN pipeline's vote among a group's rows."""
        if self._row_members is None:
            self._row_members = rows_by_group(self.groups)
        _, rows, status = next(candidate_sets(1, [group], members=self._row_members))
        return rows, status

    def _search(self):
        if self._searcher is None:
            from ..evaluation.ann import IndexedSearch

            self._searcher = IndexedSearch(self.index)
        return self._searcher

    def group_sizes(self) -> dict[str, int]:
        """Group -> number of distinct identities enrolled in it (the candidates a grouped query has)."""
        return {g: len(set(self.labels[rows].tolist())) for g, rows in rows_by_group(self.groups).items()}

    def check_model(self, fingerprint: str, where: str = "the gallery") -> None:
        """A one-line `ConfigError` unless the gallery was built by the model with this fingerprint."""
        if self.fingerprint and fingerprint != self.fingerprint:
            raise ConfigError(
                f"gallery {where} was built by another model (fingerprint {short(self.fingerprint)}), "
                f"this model is {short(fingerprint)}"
            )

    # --- storage ----------------------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        return {
            "format": GALLERY_FORMAT,
            "model_fingerprint": self.fingerprint,
            "rows": len(self),
            "identities": len(self.identities),
            "dim": self.dim if len(self) else None,
            "match": self.match,
            "index": self.index,
            "calibration": self.calibration,
        }

    def save(self, directory: str | os.PathLike) -> str:
        """Write the gallery into `directory` atomically (module doc); returns the folder."""
        from safetensors.numpy import save_file

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        files = {"embeddings_file": f"embeddings-{token}.safetensors", "rows_file": f"rows-{token}.parquet"}
        paths = [os.path.join(directory, name) for name in files.values()]
        try:
            save_file({"embeddings": self.embeddings}, paths[0], metadata={"format": GALLERY_FORMAT})
            rows = pa.table(
                {
                    "label": pa.array(self.labels.tolist(), pa.string()),
                    "group": pa.array(self.groups.tolist(), pa.string()),
                    "row_id": pa.array(self.row_ids.tolist(), pa.string()),
                }
            )
            pq.write_table(rows, paths[1])
            write_json_atomic(os.path.join(directory, MANIFEST_FILE), {**self.manifest(), **files})
        except BaseException:
            for path in paths:
                if os.path.exists(path):
                    os.remove(path)
            raise
        _delete_unreferenced(directory, files.values())
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Gallery:
        """Read a gallery written by `save`; a folder that is not one is a one-line `ConfigError`."""
        from safetensors.numpy import load_file

        directory = os.fspath(directory)
        manifest = read_manifest(directory)
        try:
            embeddings = load_file(os.path.join(directory, manifest["embeddings_file"]))["embeddings"]
            rows = pq.read_table(os.path.join(directory, manifest["rows_file"])).to_pydict()
        except (OSError, KeyError, pa.ArrowInvalid) as err:
            raise ConfigError(f"gallery {directory}: unreadable ({type(err).__name__}: {err})") from None
        if embeddings.shape[0] == 0:
            embeddings = np.zeros((0, manifest.get("dim") or 0), dtype=np.float32)
        return cls(
            embeddings,
            rows["label"],
            rows["group"],
            rows["row_id"],
            manifest.get("model_fingerprint", ""),
            manifest.get("match", "row"),
            manifest.get("index"),
            manifest.get("calibration"),
        )


def read_manifest(directory: str) -> dict[str, Any]:
    """A gallery folder's `gallery.json`, or a one-line `ConfigError`."""
    path = os.path.join(directory, MANIFEST_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"gallery {directory}: not a gallery (no {MANIFEST_FILE}; build one with `hf-metric index`)"
        ) from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"gallery {directory}: unreadable {MANIFEST_FILE} ({type(err).__name__})") from None
    if manifest.get("format") != GALLERY_FORMAT:
        raise ConfigError(f"gallery {directory}: unknown format {manifest.get('format')!r} (want {GALLERY_FORMAT})")
    return manifest


def short(fingerprint: str) -> str:
    """The first 12 hex digits: enough to tell models apart in a message."""
    return fingerprint[:12] if fingerprint else "<none>"


def _check_unique_ids(row_ids: np.ndarray) -> None:
    given = [r for r in row_ids.tolist() if r is not None]
    if len(given) != len(set(given)):
        seen: set[str] = set()
        duplicate = next(r for r in given if r in seen or seen.add(r))
        raise DataError(f"row id {duplicate!r} is enrolled twice (row ids must be unique in a gallery)")


def _delete_unreferenced(directory: str, keep: Sequence[str]) -> None:
    """Remove data files of earlier versions (the manifest no longer names them)."""
    for pattern in ("embeddings-*.safetensors", "rows-*.parquet"):
        for path in glob.glob(os.path.join(directory, pattern)):
            if os.path.basename(path) not in keep:
                os.remove(path)
