"""Evaluation pictures and the report: real PNGs (also with 100 classes), and the numbers behind them checked
against independent references (scikit-learn, brute force)."""

import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.decomposition import PCA
from sklearn.metrics import f1_score

from hf_metric.evaluation.metrics import macro_f1, nearest_margins, per_class_f1
from hf_metric.evaluation.plots import (
    PLOT_NAMES,
    confusion_matrix_plot,
    embedding_map,
    evaluation_plots,
    per_class_f1_plot,
    project_2d,
)
from hf_metric.evaluation.report import report_markdown, write_report


def _clustered(n_classes: int, rows: int, seed: int = 0, noise: float = 0.6, accuracy: float = 0.7):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, 24))
    labels = rng.integers(0, n_classes, rows)
    emb = (centers[labels] + noise * rng.normal(size=(rows, 24))).astype(np.float32)
    predictions = np.where(rng.random(rows) < accuracy, labels, rng.integers(0, n_classes, rows))
    return emb, labels, predictions


def assert_real_png(path: str, min_bytes: int = 10_000, min_std: float = 0.05) -> np.ndarray:
    """A PNG file (signature), not tiny, whose pixels vary (a blank or single-colour canvas has std ~0)."""
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n", path
    assert os.path.getsize(path) > min_bytes, path
    pixels = imread(path)[..., :3]
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 600, (path, pixels.shape)
    assert pixels.std() > min_std, (path, pixels.std())
    return pixels


@pytest.mark.parametrize("n_classes", [4, 100])
def test_evaluation_pictures_are_real_pngs(tmp_path, n_classes):
    emb, labels, predictions = _clustered(n_classes, 25 * n_classes)
    names = {i: f"intent_{i}_with_a_rather_long_descriptive_name" for i in range(n_classes)}
    counts = {i: 10 + i for i in range(n_classes)}
    paths = evaluation_plots(str(tmp_path), "step7", emb, labels, labels, predictions, names, counts)
    assert list(paths) == list(PLOT_NAMES)
    for name, path in paths.items():
        assert path == str(tmp_path / f"{name}_step7.png")
        assert_real_png(path)


def test_a_blank_picture_fails_the_png_check(tmp_path):
    from matplotlib.figure import Figure

    from hf_metric.evaluation.plots import save_png

    path = save_png(Figure(figsize=(9, 6)), str(tmp_path / "blank.png"))
    with pytest.raises(AssertionError):
        assert_real_png(path, min_bytes=0)


def test_embedding_map_caps_the_legend_with_many_classes():
    emb, labels, _ = _clustered(100, 2000)
    fig = embedding_map(emb, labels, max_legend=20)
    ax = fig.axes[0]
    assert len(ax.get_legend().get_texts()) == 20
    assert "80 more" in ax.get_title()
    largest = np.argsort(-np.bincount(labels, minlength=100), kind="stable")[:20]
    legend_classes = {int(t.get_text().split(" ")[0]) for t in ax.get_legend().get_texts()}
    assert legend_classes == {int(c) for c in largest}


def test_embedding_map_subsamples_large_sets():
    emb, labels, _ = _clustered(5, 3000)
    fig = embedding_map(emb, labels, max_points=500)
    assert len(fig.axes[0].collections[0].get_offsets()) == 500


def test_pca_projection_matches_scikit_learn():
    emb, _, _ = _clustered(6, 300)
    ours = project_2d(emb, "pca")
    ref = PCA(n_components=2).fit_transform(emb.astype(np.float64))
    for k in range(2):  # components are defined up to sign
        sign = np.sign(ours[:, k] @ ref[:, k])
        np.testing.assert_allclose(sign * ours[:, k], ref[:, k], atol=1e-6)


def test_confusion_matrix_shows_the_most_confused_classes():
    labels = np.repeat(np.arange(30), 10)
    predictions = labels.copy()
    predictions[labels == 3] = 7  # class 3 is always predicted as 7
    predictions[np.flatnonzero(labels == 12)[:4]] = 20  # 12 -> 20 four times
    names = [f"c{i}" for i in range(30)]
    fig = confusion_matrix_plot(labels, predictions, names, top_n=4)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["c3", "c7", "c12", "c20"]
    assert all(t.get_rotation() == 90 for t in ax.get_xticklabels())
    cells = {t.get_text() for t in ax.texts}
    assert {"10", "4", "6"} <= cells  # 3 -> 7 ten times, 12 -> 20 four times, 12 right six times


def test_per_class_f1_matches_scikit_learn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 12, 400)
    predictions = np.where(rng.random(400) < 0.6, labels, rng.integers(0, 14, 400))  # 12, 13: predicted only
    classes, f1, support = per_class_f1(predictions, labels)
    np.testing.assert_allclose(f1, f1_score(labels, predictions, labels=classes, average=None, zero_division=0))
    np.testing.assert_array_equal(support, [(labels == c).sum() for c in classes])
    assert macro_f1(predictions, labels) == pytest.approx(f1_score(labels, predictions, average="macro"))


def test_per_class_f1_marks_the_rarest_training_classes():
    from matplotlib.colors import to_rgba

    labels = np.repeat(np.arange(20), 5)
    predictions = labels.copy()
    predictions[:3] = 1  # class 0 gets the lowest F1, so it is drawn first
    counts = {i: 100 for i in range(20)} | {4: 3, 9: 2}  # classes 4 and 9 are rare in training
    fig = per_class_f1_plot(labels, predictions, [f"c{i}" for i in range(20)], counts, rare_fraction=0.1)
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_xticklabels()]
    bars = ax.patches[: len(names)]
    assert names[0] == "c0" and bars[0].get_height() == pytest.approx(4 / 7)  # 2 TP, 3 FN, 0 FP
    orange = {name for name, bar in zip(names, bars, strict=True) if bar.get_facecolor() == to_rgba("tab:orange")}
    assert orange == {"c4", "c9"}


def test_nearest_margins_match_brute_force():
    emb, labels, _ = _clustered(5, 120, noise=1.5)
    labels[0] = 99  # a class of one row: it has no same-class neighbour and is left out
    got = nearest_margins(emb, labels)
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = z.astype(np.float64) @ z.T.astype(np.float64)
    np.fill_diagonal(sim, -np.inf)
    same = labels[:, None] == labels[None, :]
    want = [sim[i][same[i]].max() - sim[i][~same[i]].max() for i in range(len(labels)) if same[i].sum() > 1]
    assert len(got) == len(labels) - 1
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_report_links_pictures_relative_to_the_run_folder(tmp_path):
    emb, labels, predictions = _clustered(4, 80)
    plots = evaluation_plots(str(tmp_path / "plots"), "final", emb, labels, labels, predictions)
    metrics = {"eval_f1": 0.8125, "eval_recall@1|x": 0.5}
    path = write_report(str(tmp_path), metrics, plots, "training:\n  batch_size: 32\n")
    text = Path(path).read_text(encoding="utf-8")
    assert text == report_markdown(str(tmp_path), metrics, plots, "training:\n  batch_size: 32\n", tmp_path.name)
    assert "| eval_f1 | 0.8125 |" in text and "eval_recall@1\\|x" in text
    links = [line[line.index("(") + 1 : -1] for line in text.splitlines() if line.startswith("![")]
    assert links == [f"plots/{name}_final.png" for name in PLOT_NAMES]
    assert all((tmp_path / link).is_file() for link in links)
    assert "```yaml\ntraining:\n  batch_size: 32\n```" in text
    assert not os.path.exists(path + ".tmp")


def test_umap_map_asks_for_umap_learn_when_it_is_missing(monkeypatch):
    import hf_metric.config.sections
    from hf_metric.config import ConfigError, MetricValidationSection

    monkeypatch.setattr(hf_metric.config.sections, "available", lambda module: module != "umap")
    with pytest.raises(ConfigError, match=r"metric_validation\.embedding_map: umap needs `pip install umap-learn`"):
        MetricValidationSection(embedding_map="umap").validate()
    MetricValidationSection(embedding_map="umap", plots=False).validate()  # no pictures: nothing to draw with


def test_umap_embedding_map(tmp_path):
    pytest.importorskip("umap")
    emb, labels, _ = _clustered(5, 200)
    assert project_2d(emb, "umap").shape == (200, 2)
    from hf_metric.evaluation.plots import save_png

    assert_real_png(save_png(embedding_map(emb, labels, method="umap"), str(tmp_path / "umap.png")))
