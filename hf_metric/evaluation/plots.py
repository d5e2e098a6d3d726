"""Pictures of a validation set: the embedding map, the most-confused classes, per-class F1 and the margins.

Plain functions on arrays that return a matplotlib `Figure` (drawn with the Agg renderer, no pyplot state, so
they work in a headless training job and in threads); `save_png` writes one atomically and
`evaluation_plots` draws and saves all four, as the trainer does at every evaluation. They stay readable with
hundreds of classes: legends are capped, tick labels rotated and shortened, and the confusion matrix shows only
the classes that are confused most.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..atomic import write_atomic
from .metrics import nearest_margins, per_class_f1

PLOT_NAMES = ("embedding_map", "confusion_matrix", "per_class_f1", "margin_histogram")
"""The pictures of every evaluation, in the order the report shows them (with a `group` column the evaluator adds
`top2_margin_histogram`, shown after them)."""

MAX_LABEL_CHARS = 28
"""Class names longer than this are shortened on axes and in legends."""


def _short(name: object) -> str:
    text = str(name)
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def _names(classes: np.ndarray, class_names: Mapping[int, str] | Sequence[str] | None) -> list[str]:
    """Display names of class ids (the model's id2label when given, else the ids themselves)."""
    if class_names is None:
        return [_short(c) for c in classes]
    if isinstance(class_names, Mapping):
        return [_short(class_names.get(int(c), c)) for c in classes]
    return [_short(class_names[int(c)]) for c in classes]


def _class_colors(n: int) -> np.ndarray:
    """n distinguishable RGBA colours: tab20 up to 20 classes, then hues stepped by the golden ratio, so that
    classes next to each other (and in the legend) never get near-identical colours."""
    from matplotlib import colormaps

    if n <= 20:
        return colormaps["tab20"](np.arange(n))
    return colormaps["gist_rainbow"]((np.arange(n) * 0.6180339887) % 1.0)


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure of one plot at 100 dpi, drawn without pyplot."""
    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot()


def _finished(fig: Figure, ax: Axes, title: str) -> Figure:
    """`fig` with its title (11 pt, as every picture here) and laid out so that labels and legends fit."""
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def project_2d(embeddings: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, 2) coordinates: the first two principal components (exact, by SVD), or UMAP (`umap-learn`)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if method == "umap":
        import umap

        n_neighbors = max(2, min(15, len(x) - 1))
        return umap.UMAP(n_components=2, n_neighbors=n_neighbors, random_state=seed).fit_transform(x)
    if method != "pca":
        raise ValueError(f"method must be 'pca' or 'umap', got {method!r}")
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    coords = x @ vt[:2].T
    return coords if coords.shape[1] == 2 else np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))


def embedding_map(
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    method: str = "pca",
    max_points: int = 5000,
    max_legend: int = 20,
    seed: int = 0,
) -> Figure:
    """Validation embeddings in 2-D, one colour per class; a random `max_points` rows when there are more.
    The legend lists the `max_legend` largest classes (and how many are left out)."""
    labels = np.asarray(labels)
    embeddings = np.asarray(embeddings)
    if len(labels) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), max_points, replace=False))
        embeddings, labels = embeddings[keep], labels[keep]
    classes, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    coords = project_2d(embeddings, method, seed) if len(labels) > 1 else np.zeros((len(labels), 2))
    colors = _class_colors(len(classes))
    fig, ax = _figure(11, 8)
    ax.scatter(coords[:, 0], coords[:, 1], c=colors[codes], s=10, alpha=0.75, linewidths=0)
    names = _names(classes, class_names)
    largest = np.argsort(-counts, kind="stable")[:max_legend]
    handles = [ax.scatter([], [], color=colors[i], s=30, label=f"{names[i]} ({counts[i]})") for i in sorted(largest)]
    title = f"Validation embeddings, {method.upper()} ({len(labels)} rows, {len(classes)} classes)"
    if len(classes) > max_legend:
        title += f"\nlegend: the {max_legend} largest classes, {len(classes) - max_legend} more not listed"
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    return _finished(fig, ax, title)


def confusion_matrix_plot(
    labels: np.ndarray,
    predictions: np.ndarray,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    top_n: int = 20,
) -> Figure:
    """The confusion matrix (rows: true class, columns: predicted) restricted to the `top_n` classes with the
    most errors (wrong predictions of the class plus wrong predictions as the class)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    classes, inverse = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    n = len(classes)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (inverse[: len(labels)], inverse[len(labels) :]), 1)
    errors = matrix.sum(axis=0) + matrix.sum(axis=1) - 2 * np.diag(matrix)
    order = np.lexsort((-matrix.sum(axis=1), -errors))  # most errors first, then the largest classes
    chosen = np.sort(order[:top_n])
    sub = matrix[np.ix_(chosen, chosen)]
    names = _names(classes[chosen], class_names)
    size = 4 + 0.32 * len(chosen)
    fig, ax = _figure(size + 1.5, size)
    from matplotlib import colormaps

    cmap = colormaps["Reds"].with_extremes(bad="0.88")  # the diagonal (correct rows) in grey, errors in red
    wrong = np.ma.masked_array(sub, mask=np.eye(len(chosen), dtype=bool))
    image = ax.imshow(wrong, cmap=cmap, interpolation="nearest", vmin=0, vmax=max(1, int(wrong.max() or 1)))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="wrongly predicted rows")
    ax.set_xticks(range(len(chosen)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(chosen)), names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i, j in zip(*np.nonzero(sub), strict=True):
        color = "white" if i != j and sub[i, j] > 0.6 * wrong.max() else "black"
        ax.text(j, i, str(sub[i, j]), ha="center", va="center", fontsize=6, color=color)
    shown = f"the {len(chosen)} most-confused of {n} classes" if n > len(chosen) else f"all {n} classes"
    wrong_rows = int(len(labels) - np.trace(matrix))
    title = f"Confusion matrix, {shown}\n({wrong_rows} wrong of {len(labels)} rows; diagonal: correct, grey)"
    return _finished(fig, ax, title)


def per_class_f1_plot(
    labels: np.ndarray,
    predictions: np.ndarray,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    class_counts: Mapping[int, int] | None = None,
    rare_fraction: float = 0.1,
    max_classes: int = 120,
) -> Figure:
    """F1 of each class, worst first, with the macro-F1 line. The rarest `rare_fraction` of classes (by
    `class_counts`, e.g. training rows, else by validation support) are drawn in orange: a low F1 there may be
    a data problem rather than a model one. With more than `max_classes` classes only the worst are shown."""
    classes, f1, support = per_class_f1(predictions, labels)
    present = support > 0  # classes only ever predicted have no F1 of their own to show
    classes, f1, support = classes[present], f1[present], support[present]
    counts = np.array([class_counts.get(int(c), 0) for c in classes]) if class_counts else support
    n_rare = max(1, round(rare_fraction * len(classes)))
    rare = np.zeros(len(classes), bool)
    rare[np.argsort(counts, kind="stable")[:n_rare]] = True
    order = np.lexsort((counts, f1))[:max_classes]
    names = _names(classes[order], class_names)
    width = min(40.0, max(8.0, 0.16 * len(order) + 2))
    fig, ax = _figure(width, 6)
    colors = np.where(rare[order], "tab:orange", "tab:blue")
    ax.bar(range(len(order)), f1[order], color=colors, width=0.8)
    ax.axhline(f1.mean(), color="black", linestyle="--", linewidth=1, label=f"macro-F1 {f1.mean():.3f}")
    from matplotlib.patches import Patch

    rare_patch = Patch(color="tab:orange", label=f"rarest {n_rare} classes (<= {counts[rare].max()} rows)")
    ax.set_xticks(range(len(order)), names, rotation=90, fontsize=7)
    ax.set_xlim(-0.7, len(order) - 0.3)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    shown = f"the worst {len(order)} of {len(classes)}" if len(classes) > len(order) else f"{len(classes)}"
    ax.legend(handles=[*ax.get_legend_handles_labels()[0], rare_patch], loc="upper left", fontsize=8)
    return _finished(fig, ax, f"Per-class F1, {shown} classes, worst first")


def margin_histogram(embeddings: np.ndarray, labels: np.ndarray, bins: int = 50) -> Figure:
    """Histogram of `metrics.nearest_margins` (nearest same-class cosine minus nearest other-class cosine,
    leave-one-out): mass right of 0 means rows sit closer to their own class than to any other."""
    margins = nearest_margins(np.asarray(embeddings, dtype=np.float32), labels) if len(labels) > 1 else np.zeros(0)
    fig, ax = _figure(9, 5)
    if len(margins):
        ax.hist(margins, bins=bins, color="tab:blue", alpha=0.85)
        ax.axvline(0.0, color="tab:red", linewidth=1.2)
        title = (
            f"Margins of {len(margins)} validation rows: mean {margins.mean():.3f}, {(margins > 0).mean():.1%} positive"
        )
    else:
        ax.text(0.5, 0.5, "no row has both a same-class and an other-class neighbour", ha="center")
        title = "Margins: nothing to show"
    ax.set_xlabel("nearest same-class cosine - nearest other-class cosine")
    ax.set_ylabel("rows")
    return _finished(fig, ax, title)


def top2_margin_histogram(margins: np.ndarray, errors: np.ndarray, threshold: float = 0.005, bins: int = 40) -> Figure:
    """Histogram of the top-1 minus top-2 softmax probability (`groups.top2_margins`), errors and correct rows
    apart: errors piled up at 0 are near-ties that a sharper model (or a re-ranker) could flip."""
    margins, errors = np.asarray(margins, dtype=float), np.asarray(errors, dtype=bool)
    fig, ax = _figure(9, 5)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for rows, color, label in ((~errors, "tab:blue", "correct"), (errors, "tab:red", "errors")):
        if rows.any():
            ax.hist(margins[rows], bins=edges, color=color, alpha=0.6, label=f"{label} ({int(rows.sum())})")
    share = (margins[errors] < threshold).mean() if errors.any() else 0.0
    ax.set_xlabel("p(top-1) - p(top-2)")
    ax.set_ylabel("rows")
    ax.set_yscale("log")
    if len(margins):
        ax.legend()
    return _finished(fig, ax, f"Top-1 minus top-2 probability: {share:.1%} of errors below {threshold:g}")


def save_png(fig: Figure, path: str) -> str:
    """Write `fig` as a PNG at `path` (through a temporary file, so a reader never sees half a picture)."""
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi))


def evaluation_plots(
    out_dir: str,
    tag: str,
    embeddings: np.ndarray | None,
    embedding_labels: np.ndarray | None,
    labels: np.ndarray,
    predictions: np.ndarray,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    class_counts: Mapping[int, int] | None = None,
    method: str = "pca",
) -> dict[str, str]:
    """Draw and save the four pictures of one evaluation as `<out_dir>/<name>_<tag>.png`; returns name -> path.

    `embeddings`/`embedding_labels` feed the map and the margins (None: skipped), `labels`/`predictions` the
    confusion matrix and per-class F1 (no rows: skipped).
    """
    figures: dict[str, Figure] = {}
    if embeddings is not None and embedding_labels is not None and len(embedding_labels):
        figures["embedding_map"] = embedding_map(embeddings, embedding_labels, class_names, method)
    if len(labels):
        figures["confusion_matrix"] = confusion_matrix_plot(labels, predictions, class_names)
        figures["per_class_f1"] = per_class_f1_plot(labels, predictions, class_names, class_counts)
    if embeddings is not None and embedding_labels is not None and len(embedding_labels):
        figures["margin_histogram"] = margin_histogram(embeddings, embedding_labels)
    return {name: save_png(fig, os.path.join(out_dir, f"{name}_{tag}.png")) for name, fig in figures.items()}
