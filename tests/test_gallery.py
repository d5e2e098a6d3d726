"""`hf_metric.Gallery` on random embeddings, checked against float64 brute force written here: exact search,
within-group search, append == build at once, atomic saves (a failed or killed append leaves the old gallery),
remove really deletes, per-identity matching, the model fingerprint and the unknown-identity calibration."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hf_metric.errors import ConfigError, DataError
from hf_metric.inference.gallery import Gallery


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_gallery(n: int = 200, dim: int = 16, identities: int = 40, groups: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim))
    labels = [f"id{rng.integers(identities)}" for _ in range(n)]
    group = [f"g{rng.integers(groups)}" for _ in range(n)]
    ids = [f"row{i}" for i in range(n)]
    return emb, labels, group, ids


def brute_force(queries: np.ndarray, ref: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine in float64 by a full sort (ties: lower index first)."""
    scores = unit(queries) @ unit(ref).T
    order = np.lexsort((np.broadcast_to(np.arange(len(ref)), scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_exact_search_equals_float64_brute_force():
    emb, labels, groups, ids = random_gallery()
    gallery = Gallery(emb, labels, groups, ids, "fp")
    queries = np.random.default_rng(1).normal(size=(37, emb.shape[1]))
    result = gallery.search(queries, k=7)
    want_scores, want_index = brute_force(queries, emb, 7)
    np.testing.assert_array_equal(result.indices, want_index)
    np.testing.assert_allclose(result.scores, want_scores, atol=1e-6)
    assert result.labels.tolist() == np.asarray(labels, dtype=object)[want_index].tolist()
    assert result.row_ids.tolist() == np.asarray(ids, dtype=object)[want_index].tolist()
    assert set(result.status.tolist()) == {"ok"}


def test_within_group_search_never_returns_another_groups_row():
    emb, labels, groups, ids = random_gallery(n=400, groups=60, seed=3)
    gallery = Gallery(emb, labels, groups, ids)
    rng = np.random.default_rng(4)
    queries = rng.normal(size=(300, emb.shape[1]))
    query_groups = [f"g{rng.integers(70)}" for _ in range(300)]  # g60..g69 have no gallery rows
    query_groups[:5] = [None] * 5
    k = 6
    result = gallery.search(queries, k, query_groups)
    g = np.asarray(groups, dtype=object)
    for row, group in enumerate(query_groups):
        if group is None:
            assert result.status[row] == "no_group"
            want_scores, want_index = brute_force(queries[row : row + 1], emb, k)
            np.testing.assert_array_equal(result.indices[row], want_index[0])
            continue
        members = np.flatnonzero(g == group)
        if len(members) == 0:
            assert result.status[row] == "no_candidates"
            assert (result.indices[row] == -1).all() and result.labels[row].tolist() == [None] * k
            assert np.isnan(result.scores[row]).all()
            continue
        assert result.status[row] == "ok"
        found = result.indices[row][result.indices[row] >= 0]
        assert set(g[found].tolist()) == {group}  # never another group's row
        want_scores, want_index = brute_force(queries[row : row + 1], emb[members], k)
        np.testing.assert_array_equal(found, members[want_index[0]])
        np.testing.assert_allclose(result.scores[row][: len(found)], want_scores[0], atol=1e-6)
        assert len(found) == min(k, len(members))
    assert (result.status == "no_candidates").sum() > 0


def test_append_then_search_equals_building_at_once(tmp_path):
    emb, labels, groups, ids = random_gallery()
    queries = np.random.default_rng(5).normal(size=(50, emb.shape[1]))
    whole = Gallery(emb, labels, groups, ids, "fp")
    Gallery(emb[:120], labels[:120], groups[:120], ids[:120], "fp").save(tmp_path / "g")
    part = Gallery.load(tmp_path / "g")
    part.add(Gallery(emb[120:], labels[120:], groups[120:], ids[120:], "fp")).save(tmp_path / "g")
    appended = Gallery.load(tmp_path / "g")
    for query_groups in (None, groups[:50]):
        a, b = appended.search(queries, 5, query_groups), whole.search(queries, 5, query_groups)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.scores, b.scores)
        assert a.row_ids.tolist() == b.row_ids.tolist()
    assert len(glob.glob(str(tmp_path / "g" / "embeddings-*"))) == 1  # the old version's files are gone


def test_appending_the_same_rows_twice_is_refused():
    emb, labels, groups, ids = random_gallery(n=20)
    gallery = Gallery(emb, labels, groups, ids)
    with pytest.raises(DataError, match="row id 'row0' is enrolled twice"):
        gallery.add(Gallery(emb[:3], labels[:3], groups[:3], ids[:3]))
    assert len(gallery) == 20


def _same(a: Gallery, b: Gallery) -> None:
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    assert a.labels.tolist() == b.labels.tolist() and a.groups.tolist() == b.groups.tolist()
    assert a.row_ids.tolist() == b.row_ids.tolist() and a.fingerprint == b.fingerprint


def test_a_failed_append_leaves_the_old_gallery_readable_and_equal(tmp_path, monkeypatch):
    emb, labels, groups, ids = random_gallery()
    folder = tmp_path / "g"
    Gallery(emb[:100], labels[:100], groups[:100], ids[:100], "fp").save(folder)
    before = sorted(os.listdir(folder))
    gallery = Gallery.load(folder).add(emb[100:], labels[100:], groups[100:], ids[100:])

    def fail(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)  # the manifest swap, the last step of a save
    with pytest.raises(OSError, match="disk full"):
        gallery.save(folder)
    monkeypatch.undo()
    assert sorted(os.listdir(folder)) == before  # the new data files were cleaned up
    _same(Gallery.load(folder), Gallery(emb[:100], labels[:100], groups[:100], ids[:100], "fp"))


def test_a_killed_append_leaves_the_old_gallery_readable_and_equal(tmp_path):
    """A process killed (SIGKILL) after writing the new embeddings, before the manifest swap."""
    emb, labels, groups, ids = random_gallery()
    folder = tmp_path / "g"
    Gallery(emb[:100], labels[:100], groups[:100], ids[:100], "fp").save(folder)
    np.save(tmp_path / "more.npy", emb[100:])
    script = textwrap.dedent(
        f"""
        import os, signal, json
        import numpy as np, pyarrow.parquet as pq
        from hf_metric.inference.gallery import Gallery
        def killed(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        pq.write_table = killed  # dies mid-save: embeddings written, rows and manifest not
        labels, groups, ids = json.loads({json.dumps(json.dumps([labels[100:], groups[100:], ids[100:]]))})
        g = Gallery.load({str(folder)!r}).add(np.load({str(tmp_path / "more.npy")!r}), labels, groups, ids)
        g.save({str(folder)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert len(glob.glob(str(folder / "embeddings-*"))) == 2  # the dead process's file is there, unused
    old = Gallery.load(folder)
    _same(old, Gallery(emb[:100], labels[:100], groups[:100], ids[:100], "fp"))
    old.add(emb[100:], labels[100:], groups[100:], ids[100:]).save(folder)  # the next save cleans up
    assert len(glob.glob(str(folder / "embeddings-*"))) == 1
    _same(Gallery.load(folder), Gallery(emb, labels, groups, ids, "fp"))


def test_remove_really_deletes_the_identitys_embeddings(tmp_path):
    from safetensors.numpy import load_file

    emb, labels, groups, ids = random_gallery()
    gallery = Gallery(emb, labels, groups, ids, "fp")
    gallery.save(tmp_path / "g")
    victim = labels[0]
    gone = unit(emb[np.asarray(labels) == victim]).astype(np.float32)
    assert gallery.remove(victim) == len(gone)
    gallery.save(tmp_path / "g")
    files = glob.glob(str(tmp_path / "g" / "*.safetensors"))
    stored = np.concatenate([load_file(f)["embeddings"] for f in files])
    assert len(stored) == len(emb) - len(gone)
    assert not any(np.isclose(stored, row, atol=1e-7).all(axis=1).any() for row in gone)
    loaded = Gallery.load(tmp_path / "g")
    assert victim not in loaded.identities
    assert victim not in loaded.search(emb[:20], 10).labels.tolist()
    with pytest.raises(DataError, match="is not in the gallery"):
        loaded.remove(victim)


def test_identity_matching_searches_the_normalised_centroids():
    emb, labels, _, ids = random_gallery(n=120, groups=1)
    gallery = Gallery(emb, labels, None, ids, match="identity")
    names = sorted(set(labels))
    centroids = np.stack([unit(emb)[np.asarray(labels) == n].mean(axis=0) for n in names])
    queries = np.random.default_rng(7).normal(size=(30, emb.shape[1]))
    want_scores, want_index = brute_force(queries, centroids, 3)
    result = gallery.search(queries, 3)
    assert result.labels.tolist() == np.asarray(names, dtype=object)[want_index].tolist()
    np.testing.assert_allclose(result.scores, want_scores, atol=1e-6)
    assert result.row_ids.tolist() == [[None] * 3] * 30


def test_another_models_gallery_is_refused_in_one_line():
    gallery = Gallery(np.eye(3), ["a", "b", "c"], fingerprint="1" * 64)
    gallery.check_model("1" * 64)
    with pytest.raises(ConfigError) as err:
        gallery.check_model("2" * 64, "galleries/trees")
    message = str(err.value)
    assert message == (
        "gallery galleries/trees was built by another model (fingerprint 111111111111), this model is 222222222222"
    )


def test_fingerprint_follows_the_embedding_weights_only(tmp_path, tiny_model_dir):
    import torch

    from hf_metric.inference.gallery_build import model_fingerprint
    from hf_metric.model.modeling import MetricClassifierModel

    def saved(seed: int | None, name: str, head_scale: float = 1.0) -> str:
        """The tiny model, its backbone nudged as a training run with `seed` would (None: untouched)."""
        torch.manual_seed(0)
        model = MetricClassifierModel.from_backbone(tiny_model_dir, {0: "a", 1: "b"}, head_type="linear")
        with torch.no_grad():
            for p in model.head.parameters():
                p.mul_(head_scale)
            if seed is not None:
                generator = torch.Generator().manual_seed(seed)
                for p in model.backbone.parameters():
                    p.add_(1e-3 * torch.randn(p.shape, generator=generator))
        model.save_pretrained(tmp_path / name)
        return model_fingerprint(str(tmp_path / name))

    first = saved(1, "a")
    assert saved(1, "a_again") == first and len(first) == 64
    assert saved(1, "other_head", head_scale=2.0) == first  # the head does not change the embedding
    assert saved(2, "other_seed") != first  # "retrained" with another seed: another space
    assert saved(None, "untrained") != first


def test_calibration_reuses_the_open_set_calibration_and_is_the_best_threshold():
    rng = np.random.default_rng(11)
    centres = unit(rng.normal(size=(20, 16)))
    enrolled = [f"id{i}" for i in range(14)]
    gallery = Gallery(centres[:14], enrolled, fingerprint="fp")
    labels = [f"id{rng.integers(20)}" for _ in range(300)]
    queries = np.stack([centres[int(x[2:])] + rng.normal(scale=0.25, size=16) for x in labels])
    from hf_metric.inference.gallery_calibration import calibrate_gallery

    chosen = calibrate_gallery(gallery, queries, labels)
    assert gallery.threshold == chosen["threshold"]
    # independent reference: open-set accuracy of every threshold, by brute force in float64
    sims = unit(queries) @ centres[:14].T
    top, best = sims.max(axis=1), np.asarray(enrolled)[sims.argmax(axis=1)]
    known = np.isin(labels, enrolled)
    candidates = np.unique(np.float32(top))
    accuracy = [np.mean(np.where(known, (best == labels) & (top >= t), top < t)) for t in candidates]
    assert chosen["metrics"]["open_set_accuracy"] == pytest.approx(max(accuracy))
    assert chosen["unknown_queries"] == int((~known).sum())
    with pytest.raises(DataError, match="identities not in it"):
        calibrate_gallery(gallery, queries[known], np.asarray(labels)[known])


def test_knn_pipeline_votes_within_the_group_and_reads_galleries(tiny_model_dir, tmp_path):
    """The kNN pipeline's reference is a Gallery: `groups=` restricts each vote to the group's rows (as
    `knn_predict` on that subset), a group without rows says so, and a gallery folder loads as the reference."""
    from conftest import synthetic_rows
    from test_inference_cli import save_tiny_model
    from transformers import pipeline

    import hf_metric.sharing.pipelines  # noqa: F401 - registers the pipelines
    from hf_metric.evaluation.metrics import knn_predict

    model = save_tiny_model(tiny_model_dir, tmp_path / "model", fusion=0.0, reference=False)
    rows = synthetic_rows(per_class=6, seed=1)
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    groups = [f"site{i % 3}" for i in range(len(rows))]
    knn = pipeline("knn-classification", model=model).fit(texts, labels, groups=groups)
    assert isinstance(knn.gallery, Gallery) and knn.gallery.fingerprint
    queries = ["visa pin please", "parcel courier today"]
    answers = knn(queries, groups=["site1", "site2"], k=3)
    query_emb = knn.embed(queries)
    for answer, q, group in zip(answers, query_emb, ["site1", "site2"], strict=True):
        rows_in = np.flatnonzero(np.asarray(groups) == group)
        want, share = knn_predict(q[None], knn.reference_embeddings[rows_in], np.asarray(labels)[rows_in], 3)
        assert answer == {"label": want[0], "score": pytest.approx(float(share[0])), "status": "ok"}
    assert knn(queries[0], groups="nowhere") == {"label": None, "score": 0.0, "status": "no_candidates"}
    knn.gallery.save(tmp_path / "g")
    reloaded = pipeline("knn-classification", model=model, reference=str(tmp_path / "g"))
    assert reloaded(queries[0], k=3) == knn(queries[0], k=3)


def test_a_configured_approximate_index_is_stored_and_used(tmp_path):
    """`index` settings (model.knn_index) travel with the gallery; from `min_size` rows on, ungrouped searches
    go through faiss (here HNSW, whose top-1 on a small set matches exact search), grouped ones stay exact."""
    pytest.importorskip("faiss")
    emb, labels, groups, ids = random_gallery(n=300, seed=8)
    settings = {"type": "hnsw", "min_size": 100}
    Gallery(emb, labels, groups, ids, "fp", index=settings).save(tmp_path / "g")
    gallery = Gallery.load(tmp_path / "g")
    assert gallery.index == settings
    queries = np.random.default_rng(9).normal(size=(40, emb.shape[1]))
    found = gallery.search(queries, 5)
    assert gallery._search().uses_index(len(gallery)) and gallery._search()._index is not None
    _, want = brute_force(queries, emb, 5)
    assert (found.indices[:, 0] == want[:, 0]).mean() >= 0.95
    grouped = gallery.search(queries, 5, groups[:40])
    for row, group in enumerate(groups[:40]):
        assert set(np.asarray(groups)[grouped.indices[row][grouped.indices[row] >= 0]].tolist()) == {group}
