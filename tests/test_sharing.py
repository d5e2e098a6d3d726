"""A saved folder loads without hf_metric (remote code), heads move between models, and nothing unpickles."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_hub import UPLOADED
from transformers import AutoTokenizer
from transformers.dynamic_module_utils import get_relative_import_files

import hf_metric
from hf_metric.model.modeling import MetricClassifierModel
from hf_metric.sharing.head_io import HEAD_FILE, export_head, load_head, save_head

ID2LABEL = {0: "a", 1: "b", 2: "c"}
HEAD_TYPES = ["linear", "cosine", "arcface", "subcenter_arcface", "cosface", "circle"]
REMOTE_HEAD_TYPES = ["linear", "subcenter_arcface"]
TEXTS = ["invoice please help", "where is my parcel courier", "login password not working today"]

FRESH_PROCESS = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoHfMetric(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_metric":
                raise ImportError("hf_metric is not installed here")

    sys.meta_path.insert(0, NoHfMetric())
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    texts, folders = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    try:
        AutoModelForSequenceClassification.from_pretrained(folders[0], trust_remote_code=False)
        refused = False
    except ValueError:
        refused = True
    out = {"refused_without_trust": refused, "models": []}
    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    for i, folder in enumerate(folders):
        results = {}
        for auto in (AutoModelForSequenceClassification, AutoModel)[: 2 if i == 0 else 1]:
            model = auto.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                o = model(**inputs)
            results[auto.__name__] = {"logits": o.logits.tolist(), "embeddings": o.embeddings.tolist()}
        results["module"] = type(model).__module__
        if i == 0:
            classifier = pipeline("text-classification", model=folder, trust_remote_code=True)
            out["pipeline"] = classifier(texts)
        out["models"].append(results)
    out["hf_metric_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "hf_metric")
    print("RESULT" + json.dumps(out))
    """
)


def _save(tmp_path: Path, tiny_model_dir: str, head_type: str) -> tuple[Path, MetricClassifierModel]:
    torch.manual_seed(0)
    model = MetricClassifierModel.from_backbone(tiny_model_dir, ID2LABEL, head_type=head_type, projection_dim=8)
    model.eval()
    folder = tmp_path / head_type
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder, model


def test_a_fresh_process_without_hf_metric_loads_with_trust_remote_code(tmp_path, tiny_model_dir):
    """The plainest and the most involved head (every head round-trips in-process in test_model.py)."""
    folders, expected = [], []
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    inputs = tokenizer(TEXTS, return_tensors="pt", padding=True)
    for head_type in REMOTE_HEAD_TYPES:
        folder, model = _save(tmp_path, tiny_model_dir, head_type)
        code = {p.name for p in folder.glob("*.py")}
        # the closed set the docstring promises (knn_fusion.py and neighbors.py for kNN fusion, open_set_scores.py)
        assert code == {name for name in UPLOADED if name.endswith(".py")}
        needed = {Path(p).name for p in get_relative_import_files(str(folder / "modeling.py"))}
        assert needed <= code
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert set(auto_map) == {
            "AutoConfig",
            "AutoModel",
            "AutoModelForSequenceClassification",
            "AutoModelForImageClassification",
            "AutoModelForAudioClassification",
        }
        with torch.no_grad():
            expected.append(model(**inputs))
        folders.append(str(folder))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # the worktree must not be importable either
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, json.dumps(TEXTS), json.dumps(folders)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["refused_without_trust"] and out["hf_metric_modules"] == []
    for head_type, want, got in zip(REMOTE_HEAD_TYPES, expected, out["models"], strict=True):
        assert got["module"].startswith("transformers_modules."), head_type
        for auto, result in got.items():
            if auto != "module":
                assert torch.allclose(torch.tensor(result["logits"]), want.logits, atol=1e-5), (head_type, auto)
                assert torch.allclose(torch.tensor(result["embeddings"]), want.embeddings, atol=1e-5), head_type
    assert set(out["models"][0]) == {"AutoModel", "AutoModelForSequenceClassification", "module"}
    labels = [ID2LABEL[int(i)] for i in expected[0].logits.argmax(-1)]
    assert [r["label"] for r in out["pipeline"]] == labels
    assert [r["score"] for r in out["pipeline"]] == pytest.approx(expected[0].logits.softmax(-1).amax(-1).tolist())


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_a_saved_head_loads_onto_the_same_backbone(tmp_path, tiny_model_dir, head_type):
    torch.manual_seed(1)
    trained = MetricClassifierModel.from_backbone(tiny_model_dir, ID2LABEL, head_type=head_type).eval()
    for p in trained.head.parameters():  # a head unlike any fresh initialisation
        torch.nn.init.normal_(p)
    path = save_head(trained, tmp_path)
    assert path == str(tmp_path / HEAD_FILE)
    other = MetricClassifierModel.from_backbone(tiny_model_dir, {0: "x", 1: "y"}).eval()  # linear, 2 labels
    ids = torch.randint(4, 25, (4, 7), generator=torch.Generator().manual_seed(3))
    load_head(other, path)
    assert other.config.head_type == head_type and other.config.id2label == ID2LABEL
    assert torch.allclose(other(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-6)
    other.save_pretrained(tmp_path / "swapped")  # the swapped head is now the model's own
    reloaded = MetricClassifierModel.from_pretrained(tmp_path / "swapped").eval()
    assert torch.allclose(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-6)


def test_export_head_writes_the_saved_model_head(tmp_path, tiny_model_dir):
    folder, model = _save(tmp_path, tiny_model_dir, "arcface")
    exported = load_file(export_head(folder))
    assert exported.keys() == model.head.state_dict().keys()
    assert all(torch.equal(exported[k], v) for k, v in model.head.state_dict().items())
    mean_pooled = MetricClassifierModel.from_backbone(tiny_model_dir, ID2LABEL, pooling="cls")
    with pytest.raises(ValueError, match="mean-pooled width 32, model has cls"):
        load_head(mean_pooled, folder)


def _calls(tree: ast.AST):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def test_hf_metric_never_trusts_remote_code_nor_unpickles():
    package = Path(hf_metric.__file__).parent
    for source in package.rglob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for call in _calls(tree):
            for kw in call.keywords:
                if kw.arg == "trust_remote_code":
                    assert isinstance(kw.value, ast.Constant) and kw.value.value is False, source
            func = ast.unparse(call.func)
            assert func not in {"torch.load", "pickle.load", "pickle.loads", "joblib.load"}, f"{source}: {func}"
