"""Static checks of hf_metric's own code: no pickle loads but `torch.load(weights_only=True)`, `yaml.safe_load` only,
and `trust_remote_code` never switched on. Each check is shown to catch a planted violation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hf_metric

PACKAGE = Path(hf_metric.__file__).parent
UNSAFE_CALLS = {
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("yaml", "load_all"),
    ("yaml", "unsafe_load_all"),
    ("pickle", "load"),
    ("pickle", "loads"),
    ("joblib", "load"),
    ("np", "load"),
    ("numpy", "load"),
}


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def violations(source: str, name: str = "<src>") -> list[str]:
    """Unsafe deserialisation or remote-code calls in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        dotted = (
            (func.value.id, func.attr) if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        )
        keywords = {k.arg: k.value for k in node.keywords}
        where = f"{name}:{node.lineno}"
        if dotted == ("torch", "load") and not _is_true(keywords.get("weights_only")):
            found.append(f"{where} torch.load without weights_only=True")
        if dotted in UNSAFE_CALLS and not (dotted[0] in ("np", "numpy") and not _is_true(keywords.get("allow_pickle"))):
            found.append(f"{where} {'.'.join(dotted)}")
        if "trust_remote_code" in keywords and not (
            isinstance(keywords["trust_remote_code"], ast.Constant) and keywords["trust_remote_code"].value is False
        ):
            found.append(f"{where} trust_remote_code not False")
    return found


def test_hf_metric_has_no_unsafe_loads_or_remote_code():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    found = [v for path in files for v in violations(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))]
    assert found == []


@pytest.mark.parametrize(
    "planted",
    [
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "yaml.load(text, Loader=yaml.Loader)",
        "yaml.unsafe_load(text)",
        "pickle.loads(blob)",
        "np.load(path, allow_pickle=True)",
        "AutoModel.from_pretrained(path, trust_remote_code=True)",
        "AutoModel.from_pretrained(path, trust_remote_code=flag)",
    ],
)
def test_the_scan_catches_a_planted_violation(planted):
    assert len(violations(planted)) == 1


@pytest.mark.parametrize(
    "safe",
    ["torch.load(path, weights_only=True)", "yaml.safe_load(text)", "np.load(path)", "f(trust_remote_code=False)"],
)
def test_the_scan_passes_safe_calls(safe):
    assert violations(safe) == []
