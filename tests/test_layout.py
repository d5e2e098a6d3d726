"""The package's layout rules: the config is a leaf (no model/data/training/evaluation code, no torch), so a
config error answers without loading torch; the config's model defaults are the saved model's own."""

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import hf_metric

PACKAGE = Path(hf_metric.__file__).parent
HEAVY = ("model", "data", "training", "evaluation", "inference", "sharing")


def _imported_modules(path: Path) -> list[str]:
    """Every module a file imports, relative imports resolved against the package."""
    tree = ast.parse(path.read_text())
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.append(".".join([*base, *([node.module] if node.module else [])]))
            else:
                found.append(node.module or "")
    return found


def test_config_imports_no_model_data_training_or_evaluation_code():
    offending = []
    for path in sorted((PACKAGE / "config").glob("*.py")):
        for module in _imported_modules(path):
            root = module.split(".")
            if module.startswith(("torch", "transformers")) or (
                root[0] == "hf_metric" and len(root) > 1 and root[1] in HEAVY
            ):
                offending.append(f"{path.name}: {module}")
    assert not offending, offending


def test_the_ast_check_would_see_a_forbidden_import(tmp_path, monkeypatch):
    bad = PACKAGE / "config" / "_probe_bad_import.py"
    bad.write_text("from ..model.heads import HEADS\n")
    try:
        assert "hf_metric.model.heads" in _imported_modules(bad)
    finally:
        bad.unlink()


def test_importing_the_config_and_the_package_loads_no_torch():
    code = (
        "import sys, hf_metric, hf_metric.config, hf_metric.errors; "
        "hf_metric.config.parse_config({'data': {'parquet_path': 'x.parquet'}}); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_model_section_defaults_are_the_saved_models_defaults():
    import inspect

    from hf_metric.config.model_sections import ModelSection
    from hf_metric.model.configuration import MetricClassifierConfig

    saved = inspect.signature(MetricClassifierConfig.__init__).parameters
    defaults = {f.name: f.default for f in dataclasses.fields(ModelSection)}
    for name in ModelSection.MODEL_CONFIG_FIELDS:
        if name != "knn_fusion_weight":  # trained models fuse by default; a bare config does not
            assert defaults[name] == saved[name].default, name


def test_scheduler_names_are_the_installed_transformers_names():
    from transformers.trainer_utils import SchedulerType

    from hf_metric.config.sections import SCHEDULER_NAMES

    assert set(SCHEDULER_NAMES) == {s.value for s in SchedulerType}


def test_lazy_top_level_names_resolve():
    for name in hf_metric.__all__:
        assert getattr(hf_metric, name) is not None, name
