"""Data as users have it: Parquet shards, an explicit validation set, CSV / JSON Lines files, `datasets` sources and
their own column names all prepare exactly the data of the same rows in one Parquet file; bad input stays one line
that names the shard and the row."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import synthetic_rows, tiny_config, write_parquet

from hf_metric.cli import main
from hf_metric.data.prepare import labels_of
from hf_metric.data.sources import expand_paths, read_training_rows
from hf_metric.errors import ConfigError, DataError
from hf_metric.loading import config_from_dict
from hf_metric.run import build_run

ROWS = synthetic_rows(12, seed=3)  # 48 rows, 4 classes


def _shards(folder, rows, sizes=(10, 15, 23)):
    """`rows` cut into shards named so that their sorted order is the rows' order (written out of order)."""
    assert sum(sizes) == len(rows)
    folder.mkdir()
    bounds = np.cumsum((0, *sizes))
    paths = [folder / f"part-{i:02d}.parquet" for i in range(len(sizes))]
    for i in reversed(range(len(sizes))):
        write_parquet(paths[i], rows[bounds[i] : bounds[i + 1]])
    return paths


def _run_of(tmp_path, tiny_model_dir, parquet_path, batches=3, **data):
    """Prepared data, the first training batches and their losses (model in eval mode) of a tiny run."""
    raw = tiny_config(tiny_model_dir, "x", tmp_path / "ckpt", training={"sampler": "random", "batch_size": 8})
    raw["data"] = {"val_ratio": 0.25, **({"parquet_path": parquet_path} if parquet_path is not None else {}), **data}
    trainer, prepared = build_run(config_from_dict(raw), report_to=[])
    first = list(itertools.islice(iter(trainer.get_train_dataloader()), batches))
    model = trainer.model.eval()
    with torch.no_grad():
        losses = [float(model(**b).loss) for b in first]
    return prepared, first, losses


def _assert_same_run(a, b) -> None:
    (data_a, batches_a, losses_a), (data_b, batches_b, losses_b) = a, b
    assert data_a.id2label == data_b.id2label
    for split in ("train", "val"):
        left, right = getattr(data_a, split).with_format(None), getattr(data_b, split).with_format(None)
        assert left.column_names == right.column_names
        for column in left.column_names:
            assert left[column] == right[column], (split, column)
    assert len(batches_a) == len(batches_b) > 0
    for x, y in zip(batches_a, batches_b, strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert losses_a == losses_b


@pytest.fixture
def one_file(tmp_path):
    return write_parquet(tmp_path / "all.parquet", ROWS)


def test_shards_give_the_same_run_as_one_file(tmp_path, tiny_model_dir, one_file):
    paths = _shards(tmp_path / "shards", ROWS)
    reference = _run_of(tmp_path, tiny_model_dir, str(one_file))
    assert labels_of(reference[0].val).size > 0
    for form in (str(tmp_path / "shards"), str(tmp_path / "shards" / "part-*.parquet"), [str(p) for p in paths]):
        _assert_same_run(reference, _run_of(tmp_path, tiny_model_dir, form))


def test_shard_order_is_sorted_within_a_folder_or_glob_and_as_given_in_a_list(tmp_path):
    paths = _shards(tmp_path / "s", ROWS)
    assert expand_paths(str(tmp_path / "s")) == [str(p) for p in paths]
    assert expand_paths(str(tmp_path / "s" / "*.parquet")) == [str(p) for p in paths]
    assert expand_paths([str(paths[2]), str(paths[0])]) == [str(paths[2]), str(paths[0])]
    with pytest.raises(DataError, match="no file matches"):
        expand_paths(str(tmp_path / "s" / "*.csv"))


def test_val_path_is_used_as_given_and_no_row_of_it_trains(tmp_path, tiny_model_dir, one_file):
    val_rows = [dict(r, text=f"held out {i} " + r["text"]) for i, r in enumerate(synthetic_rows(3, seed=9))]
    val_rows = [r for r in val_rows if r["label"] != "card"]  # a subset of training's classes, in another order
    val = write_parquet(tmp_path / "val.parquet", val_rows)
    data, _, _ = _run_of(tmp_path, tiny_model_dir, str(one_file), val_path=str(val))
    assert data.summary["train_rows"] == len(ROWS) and data.summary["val_rows"] == len(val_rows)
    label2id = {name: i for i, name in data.id2label.items()}
    assert labels_of(data.val).tolist() == [label2id[r["label"]] for r in val_rows]
    assert sorted(labels_of(data.train).tolist()) == sorted(label2id[r["label"]] for r in ROWS)


def test_val_label_unknown_to_training_is_one_line_unless_out_of_scope(tmp_path, tiny_model_dir, one_file):
    val = write_parquet(tmp_path / "val.parquet", [*synthetic_rows(2), dict(ROWS[0], label="refund")])
    with pytest.raises(DataError) as info:
        _run_of(tmp_path, tiny_model_dir, str(one_file), val_path=str(val))
    assert str(info.value) == f"{val}: column 'label': 1 label(s) unknown to training: 'refund'"
    data, _, _ = _run_of(tmp_path, tiny_model_dir, str(one_file), val_path=str(val), out_of_scope_label="refund")
    assert labels_of(data.val).tolist().count(-1) == 1 and -1 not in labels_of(data.train)


def _renamed(rows):
    return [
        {"utterance": r["text"], "intent": r["label"], "m": r["metric_mask"], "c": r["classifier_mask"]} for r in rows
    ]


MAPPING = {"text": "utterance", "label": "intent", "metric_mask": "m", "classifier_mask": "c"}


def test_csv_jsonl_and_datasets_sources_give_the_same_run(tmp_path, tiny_model_dir, one_file):
    import datasets

    reference = _run_of(tmp_path, tiny_model_dir, str(one_file))
    table = pa.Table.from_pylist(ROWS)
    csv_path, jsonl_path = tmp_path / "all.csv", tmp_path / "all.jsonl"
    table.to_pandas().to_csv(csv_path, index=False)
    jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    datasets.Dataset(table).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "pq").mkdir()
    pq.write_table(table, tmp_path / "pq" / "train-00000.parquet")
    renamed = tmp_path / "renamed.csv"
    pa.Table.from_pylist(_renamed(ROWS)).to_pandas().to_csv(renamed, index=False)
    runs = {
        "csv": _run_of(tmp_path, tiny_model_dir, str(csv_path)),
        "jsonl": _run_of(tmp_path, tiny_model_dir, str(jsonl_path)),
        "save_to_disk": _run_of(tmp_path, tiny_model_dir, None, dataset={"path": str(tmp_path / "saved")}),
        "parquet folder": _run_of(tmp_path, tiny_model_dir, None, dataset={"path": str(tmp_path / "pq")}),
        "columns": _run_of(tmp_path, tiny_model_dir, str(renamed), columns=MAPPING),
    }
    for name, run in runs.items():
        try:
            _assert_same_run(reference, run)
        except AssertionError as err:
            raise AssertionError(name) from err


def test_dataset_val_split_validates_as_given(tmp_path, tiny_model_dir):
    import datasets

    val_rows = synthetic_rows(2, seed=5)
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "validation": datasets.Dataset.from_list(val_rows)}
    ).save_to_disk(str(tmp_path / "dd"))
    data, _, _ = _run_of(
        tmp_path, tiny_model_dir, None, dataset={"path": str(tmp_path / "dd"), "val_split": "validation"}
    )
    assert data.summary["train_rows"] == len(ROWS) and data.summary["val_rows"] == len(val_rows)


def test_a_mapping_to_a_missing_column_names_it(tmp_path):
    path = write_parquet(tmp_path / "u.parquet", _renamed(ROWS))
    cfg = config_from_dict({"data": {"parquet_path": str(path), "columns": {**MAPPING, "label": "intnet"}}})
    with pytest.raises(DataError) as info:
        read_training_rows(cfg.data)
    assert (
        str(info.value) == f"{path}: column 'intnet' (data.columns.label) is missing (found: utterance, intent, m, c)"
    )


def test_a_shard_with_another_schema_or_a_bad_row_is_named(tmp_path):
    paths = _shards(tmp_path / "s", ROWS)
    write_parquet(paths[1], [{k: v for k, v in r.items() if k != "metric_mask"} for r in ROWS[10:25]])
    cfg = config_from_dict({"data": {"parquet_path": str(tmp_path / "s")}})
    with pytest.raises(DataError) as info:
        read_training_rows(cfg.data)
    assert str(info.value) == (
        f"{paths[1]}: schema differs from the first shard {paths[0]}: missing column(s) 'metric_mask'"
    )
    from hf_metric.data.parquet import read_labeled_parquet

    all_null = pa.Table.from_pylist(ROWS[10:25]).set_column(1, "label", pa.nulls(15, pa.null()))
    pq.write_table(all_null, paths[1])  # a column that is null in a whole shard has no type: it takes the others'
    with pytest.raises(DataError, match=f"^{paths[1]}: column 'label', row 0: label is null"):
        read_labeled_parquet(read_training_rows(cfg.data))

    bad = [dict(r) for r in ROWS[25:]]
    bad[4]["text"] = "  "
    write_parquet(paths[1], [dict(reversed(r.items())) for r in ROWS[10:25]])  # column order does not matter
    write_parquet(paths[2], bad)
    with pytest.raises(DataError) as info:
        read_labeled_parquet(read_training_rows(cfg.data))
    assert str(info.value) == f"{paths[2]}: column 'text', row 4: text is null or empty"


def test_cli_exits_2_on_a_bad_shard(tmp_path, tiny_model_dir, capsys):
    paths = _shards(tmp_path / "s", ROWS)
    write_parquet(paths[2], [dict(r, label=None if i == 3 else r["label"]) for i, r in enumerate(ROWS[25:])])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_model_dir, tmp_path / "s", tmp_path / "ckpt")))
    assert main(["--config", str(config)]) == 2
    assert f"{paths[2]}: column 'label', row 3: label is null" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dataset": {"path": "d"}, "parquet_path": "x"}, "data.dataset: is given together with data.parquet_path"),
        ({"dataset": {"path": ""}}, "data.dataset.path: is required"),
        ({"parquet_path": "x", "columns": {"txt": "u"}}, "data.columns.txt: unknown column"),
        ({"parquet_path": "x", "columns": {"text": "u", "label": "u"}}, "data.columns: column 'u' is mapped twice"),
        ({"parquet_path": "x", "val_path": "v", "validate_on_train": True}, "data.validate_on_train: cannot be"),
        ({"parquet_path": ["a", ""]}, "data.parquet_path: must be a non-empty list"),
        ({"dataset": {"path": "d", "val_split": "v"}, "val_path": "v"}, "data.val_path: is given together"),
    ],
)
def test_source_keys_are_validated(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"data": data})


def test_image_shards_resolve_their_own_relative_paths_and_name_a_bad_row(tmp_path):
    import re

    from media_fixtures import png_bytes

    from hf_metric.data.parquet import read_labeled_parquet
    from hf_metric.data.sources import read_paths

    paths = []
    for i, folder in enumerate("ab"):
        (tmp_path / folder / "img").mkdir(parents=True)
        for j in range(2):
            (tmp_path / folder / "img" / f"{j}.png").write_bytes(png_bytes((10, 20 * i, 30), j))
        paths.append(str(tmp_path / folder / "s.parquet"))
        pq.write_table(pa.table({"image": [f"img/{j}.png" for j in range(2)], "label": ["x", "y"]}), paths[-1])
    labeled = read_labeled_parquet(read_paths(paths))
    cells = labeled.table.column("image").to_pylist()
    assert [c["path"] for c in cells] == [str(tmp_path / f / "img" / f"{j}.png") for f in "ab" for j in range(2)]
    assert labeled.where(3) == (paths[1], 1)  # what a decoding error in training names
    (tmp_path / "b" / "img" / "1.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=rf"^{re.escape(paths[1])}: column 'image', row 1: "):
        read_labeled_parquet(read_paths(paths))


def test_source_keys_round_trip_through_the_resolved_config():
    raw = {"data": {"dataset": {"path": "d", "val_split": "validation"}, "columns": {"text": "utterance"}}}
    cfg = config_from_dict(raw)
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again.data.dataset == cfg.data.dataset and again.data.columns == {"text": "utterance"}


def test_commands_on_a_trained_model_accept_a_dataset_config(tmp_path):
    from types import SimpleNamespace

    from hf_metric.commands.common import model_config

    path = tmp_path / "resolved_config.yaml"
    path.write_text(yaml.safe_dump({"data": {"dataset": {"path": "d"}, "columns": {"label": "intent"}}}))
    args = SimpleNamespace(config=str(path), model=str(tmp_path / "best"), overrides=[])
    assert model_config(args).data.dataset.path == "d"
    cfg = model_config(args, data="test.parquet")  # the command's file replaces the training source
    assert cfg.data.dataset is None and cfg.data.parquet_path == "test.parquet"
