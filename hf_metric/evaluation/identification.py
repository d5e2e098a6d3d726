"""`IdentificationEvaluator`: every identification, open-set and verification number of queries vs a gallery.

The question after training an identification model: given a gallery of enrolled rows (labels the model may
never have seen), which identity is each query, is it one at all, and are two inputs the same identity? One
object answers it from embeddings and labels (and groups: the candidate set, e.g. the trees at one address), so
the trainer, `hf-metric evaluate --gallery` and the benchmarks report the same numbers under the same names:

- identification (`retrieval.identification_metrics`): precision_at_1, cmc@K, r_precision, map_at_r, mrr over
  the queries whose identity is in the gallery; with `within_group`, each query is searched among its own
  group's gallery rows only, and the accuracy by number of candidates and per group is added;
- open set (`retrieval.open_set_identification`): dir@fpir=f, when some queries' identities are in the gallery
  and some are not (those are the unknowns);
- verification (`verification.verification_metrics`) on pairs of query rows sampled reproducibly
  (`verification.sample_pairs`): verification_auc, eer, tar@far=f; with groups also the same-group protocol
  (genuine pairs vs impostors from the same group), suffixed `_same_group`.

The search is the gallery's (`inference.gallery_search.search_targets`, behind `Gallery.search` and `hf-metric
predict --gallery`): exact cosine, within a group the same candidate set, null-group rule (a query without a
group is compared with the whole gallery), tie order and padding, so evaluation and inference cannot disagree.
The whole-gallery search is `sharded_search.sharded_topk_neighbors` (the plain blocked search in one process,
shared out among the processes of a distributed run).

Two ways in: `evaluate(query_emb, query_labels, gallery_emb, gallery_labels, query_groups=..., gallery_groups=...)`
on arrays (the gallery, the CLI, the benchmark), and, as a registered `base.Evaluator` named "identification"
(`metric_validation.evaluators: [{type: identification, within_group: true}]`), `__call__(predictions,
reference)` during training: the validation rows are the queries, the reference (the bank) is the gallery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..inference.gallery_search import GallerySearchResult, as_names, candidate_counts, rows_by_group, search_targets
from .base import EVALUATORS, EvalPredictions, Evaluator, Reference
from .retrieval import (
    accuracy_by_candidates,
    identification_metrics,
    identification_metrics_by_group,
    open_set_identification,
)
from .verification import IMPOSTOR_SAME_GROUP, sample_pairs, verification_metrics

SAME_GROUP_SUFFIX = "_same_group"


@dataclass
class GallerySearch(GallerySearchResult):
    """`gallery_search.search_targets`' result (the k best gallery rows of each query, padded with None / NaN /
    -1; a status per query) with what the metrics need besides, counted over the rows each query's search saw."""

    relevant: np.ndarray
    """R: the gallery rows sharing each query's label."""
    candidates: np.ndarray
    """Distinct gallery labels each query was compared with."""


def _object(values: Any) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(np.asarray(values).tolist())
    return out


def _float32(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor (the trainer's bank)
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def search_gallery(
    query_emb: Any,
    gallery_emb: Any,
    gallery_labels: Any,
    query_labels: Any,
    ks: tuple[int, ...] = (1, 5, 10),
    query_groups: Any = None,
    gallery_groups: Any = None,
    search: Any = None,
) -> GallerySearch:
    """The gallery's search (`gallery_search.search_targets`: exact cosine, with both group arrays each query
    among its own group's rows only; the null-group rule, tie order and padding are the ones `Gallery.search`
    has) with k = max(max R, max ks), so that MAP@R is exact. `search` (default
    `sharded_search.sharded_topk_neighbors`, shared out among the processes of a distributed run) answers the
    queries compared with the whole gallery; a group's rows are few and searched locally."""
    if search is None:
        from .sharded_search import sharded_topk_neighbors as search
    query_emb, gallery_emb = _float32(query_emb), _float32(gallery_emb)
    gallery_labels, query_labels = _object(gallery_labels), _object(query_labels)
    grouped = query_groups is not None and gallery_groups is not None
    groups = query_groups if grouped else None
    members = rows_by_group(gallery_groups) if grouped else None
    relevant, candidates = candidate_counts(query_labels, gallery_labels, groups, None, members)
    k = max(int(relevant.max()) if len(relevant) else 0, max(ks))
    found = search_targets(query_emb, gallery_emb, gallery_labels, None, None, k, groups, search, members)
    return GallerySearch(**vars(found), relevant=relevant, candidates=candidates)


@EVALUATORS.register("identification")
@dataclass
class IdentificationEvaluator(Evaluator):
    """Identification, open-set and verification metrics of (query embeddings, labels[, groups]) against a
    gallery (embeddings, labels[, groups]); see the module docstring. `evaluate` takes arrays, a call takes the
    trainer's predictions and bank; `details` keeps the last call's search, pairs and tables (per group, by number
    of candidates) for a report and the pictures.

    Args:
        ks: the K of cmc@K.
        fars: target false-accept rates of tar@far=f.
        fpirs: target false-positive identification rates of dir@fpir=f.
        within_group: search each query among its own group's gallery rows only (needs both group arrays); a query
            without a group (None or NaN) among all of them, as `Gallery.search` does.
        verification: sample pairs of query rows and report the verification metrics.
        genuine_per_label / impostors / seed: the pair sample (`verification.sample_pairs`).
        search: the exact whole-gallery search (None: `sharded_search.sharded_topk_neighbors`).
    """

    ks: tuple[int, ...] = (1, 5, 10)
    fars: tuple[float, ...] = (1e-3, 1e-2)
    fpirs: tuple[float, ...] = (0.01, 0.1)
    within_group: bool = False
    verification: bool = True
    genuine_per_label: int | None = 100
    impostors: int = 100_000
    seed: int = 0
    search: Any = None
    details: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.ks, self.fars, self.fpirs = tuple(self.ks), tuple(self.fars), tuple(self.fpirs)

    def metric_names(self, groups: bool | None = None) -> tuple[str, ...]:
        """What it returns that `save_best_by` may take (`groups`, default `within_group`: with the per-group
        numbers)."""
        from .names import identification_metric_names

        groups = self.within_group if groups is None else groups
        return identification_metric_names(self.ks, self.fars, self.fpirs, groups)

    def __call__(self, predictions: EvalPredictions, reference: Reference = None) -> dict[str, float]:
        """During training: the labelled rows with metric_mask = 1 (label >= 0) against the reference (embeddings,
        labels); {} without embeddings or reference. A gallery row's group is the group its label has among the
        queries (one group per class, as the group analysis assumes)."""
        p = predictions
        if p.embeddings is None or reference is None or len(reference[1]) == 0:
            return {}
        rows = p.metric_rows & (p.labels >= 0)
        if not rows.any():
            return {}
        gallery_labels = np.asarray(reference[1])
        query_groups = gallery_groups = None
        if p.groups is not None:
            query_groups = _object(p.groups[rows])
            group_of = dict(zip(p.labels[rows].tolist(), query_groups.tolist(), strict=True))
            gallery_groups = _object([group_of.get(y) for y in gallery_labels.tolist()])
        return self.evaluate(
            p.embeddings[rows],
            p.labels[rows],
            reference[0],
            gallery_labels,
            query_groups=query_groups,
            gallery_groups=gallery_groups,
        )

    def evaluate(
        self,
        query_emb: Any,
        query_labels: Any,
        gallery_emb: Any,
        gallery_labels: Any,
        *,
        query_groups: Any = None,
        gallery_groups: Any = None,
    ) -> dict[str, float]:
        if not len(query_labels) or not len(gallery_labels):
            sizes = f"{len(query_labels)} and {len(gallery_labels)}"
            raise ValueError(f"identification needs queries and a gallery, got {sizes} rows")
        if self.within_group and (query_groups is None or gallery_groups is None):
            raise ValueError("within_group identification needs the groups of the queries and of the gallery")
        grouped = self.within_group
        groups = None if query_groups is None else as_names(query_groups)  # as the search names them (NaN: null)
        found = search_gallery(
            query_emb,
            gallery_emb,
            gallery_labels,
            query_labels,
            self.ks,
            groups if grouped else None,
            gallery_groups if grouped else None,
            self.search,
        )
        labels, ranked, relevant = _object(query_labels), found.labels, found.relevant
        out = identification_metrics(labels, ranked, relevant, self.ks)
        known = found.relevant > 0
        self.details = {}
        if groups is not None:
            by_group = identification_metrics_by_group(labels, ranked, relevant, groups, self.ks)
            self.details["per_group"] = by_group
            p1 = [m["precision_at_1"] for m in by_group.values() if m["identification_queries"] > 0]
            out["group_precision_at_1_min"] = float(min(p1)) if p1 else float("nan")
            out["group_precision_at_1_macro"] = float(np.mean(p1)) if p1 else float("nan")
        if grouped:
            buckets = accuracy_by_candidates(labels, ranked, relevant, found.candidates, buckets=True)
            self.details["by_candidates"] = accuracy_by_candidates(labels, ranked, relevant, found.candidates)
            out.update({f"precision_at_1_candidates_{name}": acc for name, (acc, _) in buckets.items()})
        if known.any() and (~known).any():
            top1 = np.where(np.isfinite(found.scores[:, 0]), found.scores[:, 0], -np.inf)
            correct = found.labels[known, 0] == labels[known]
            out.update(open_set_identification(top1[known], correct.astype(bool), top1[~known], self.fpirs))
        if self.verification:
            out.update(self.verification_metrics(query_emb, labels, groups))
        self.details["search"] = found
        return out

    def verification_metrics(self, emb: Any, labels: np.ndarray, groups: Any = None) -> dict[str, float]:
        """Verification on pairs of query rows (and, with groups, the same-group protocol); {} when the rows hold
        no genuine or no impostor pair."""
        from .verification import pair_scores

        pairs = sample_pairs(labels, groups, self.genuine_per_label, self.impostors, self.seed)
        if not pairs.same.any() or pairs.same.all():
            return {}
        scores = pair_scores(emb, pairs)
        self.details["pairs"], self.details["pair_scores"] = pairs, scores
        random = pairs.kind != IMPOSTOR_SAME_GROUP
        out = verification_metrics(scores[random], pairs.same[random], self.fars)
        hard = pairs.kind != "impostor_random"
        if groups is not None and (pairs.kind == IMPOSTOR_SAME_GROUP).any() and pairs.same[hard].any():
            same_group = verification_metrics(scores[hard], pairs.same[hard], self.fars)
            out.update({f"{name}{SAME_GROUP_SUFFIX}": v for name, v in same_group.items()})
        return out
