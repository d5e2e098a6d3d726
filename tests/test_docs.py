"""The documentation: every page in both languages, a configuration reference that describes every key, short
READMEs whose commands run, no process notes in the product's text, and (where mkdocs is installed) a strict
site build."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
READMES = (ROOT / "README.md", ROOT / "README_ru.md")
MAX_README_LINES = 250


def load_hook_module(name: str):
    """A module of docs/hooks by file path (MkDocs loads them the same way; they are not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    if name == "hooks":
        load_hook_module("config_reference")  # hooks.py imports it by this name, as MkDocs puts its folder on sys.path
    spec = importlib.util.spec_from_file_location(name, DOCS / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)


# ----------------------------------------------------------------------------------------------- pages, languages


def test_every_page_has_its_russian_twin_and_back():
    english = {p for p in pages() if not p.name.endswith(".ru.md")}
    russian = {p for p in pages() if p.name.endswith(".ru.md")}
    assert len(english) >= 20
    missing_ru = [str(p.relative_to(ROOT)) for p in english if p.with_name(p.name[:-3] + ".ru.md") not in russian]
    missing_en = [str(p.relative_to(ROOT)) for p in russian if p.with_name(p.name[:-6] + ".md") not in english]
    assert not missing_ru, f"English pages without a Russian page: {missing_ru}"
    assert not missing_en, f"Russian pages without an English page: {missing_en}"


def test_russian_pages_are_written_in_russian():
    """A Russian page is more than a copy of the English one: most of its prose letters are Cyrillic."""
    for page in (p for p in pages() if p.name.endswith(".ru.md")):
        text = re.sub(r"^:::.*\n(?:[ \t]+.*\n)*", "", page.read_text(encoding="utf-8"), flags=re.M)  # API blocks
        prose = re.sub(r"```.*?```|`[^`]*`|<!--.*?-->|\(.*?\)", "", text, flags=re.S)
        letters = [c for c in prose if c.isalpha()]
        cyrillic = sum("а" <= c.lower() <= "я" or c.lower() == "ё" for c in letters)
        assert cyrillic > 0.4 * len(letters), f"{page.relative_to(ROOT)}: mostly not Russian"


def test_the_site_navigation_lists_every_page():
    class Loader(yaml.SafeLoader):
        """mkdocs.yml names a Python function with a `!!python/...` tag; only the nav matters here."""

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)

    def walk(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
        else:
            yield node

    listed = set(walk(config["nav"]))
    english = {str(p.relative_to(DOCS)) for p in pages() if not p.name.endswith(".ru.md")}
    assert listed == english

    def titles(node):
        for item in node if isinstance(node, list) else []:
            for title, value in item.items():
                yield title
                yield from titles(value)

    (i18n,) = [p["i18n"] for p in config["plugins"] if isinstance(p, dict) and "i18n" in p]
    (russian,) = [lang for lang in i18n["languages"] if lang["locale"] == "ru"]
    assert set(titles(config["nav"])) <= set(russian["nav_translations"])  # the Russian menu is Russian


def test_python_examples_parse():
    for path in [*READMES, *pages()]:
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)):
            try:  # a block inside a list item is indented as a whole
                compile(textwrap.dedent(block), f"{path.name} example {i}", "exec")
            except SyntaxError as err:
                pytest.fail(f"{path.relative_to(ROOT)}: {err}")


NO_PROCESS_WORDS = re.compile(
    r"BEGIN issue|END issue|\bissues?\b|(?<![\w/.])sessions?(?![\w.])|\blent\b|сесси|выдали GPU", re.IGNORECASE
)
"""Words about how the project was built, which mean nothing to a user (file names such as `gpu_session.sh` pass)."""


def test_no_process_notes_in_readmes_and_pages():
    for path in [*READMES, *pages()]:
        found = NO_PROCESS_WORDS.search(path.read_text(encoding="utf-8"))
        assert found is None, f"{path.relative_to(ROOT)}: {found.group(0)!r}"


@pytest.mark.slow  # imports torch and transformers
def test_code_names_in_the_docs_exist():
    """Every `hf_metric.module.name` a page or README mentions can be imported: a moved module fails here."""
    import importlib

    names = set()
    for path in [*READMES, *pages()]:
        text = re.sub(r"^:::.*$", "", path.read_text(encoding="utf-8"), flags=re.M)  # API directives: mkdocs checks
        names.update(re.findall(r"\bhf_metric(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text))
    assert len(names) > 10
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            module = ".".join(parts[:cut])
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if found:
                break
        value = importlib.import_module(module)
        for attribute in parts[cut:]:
            assert hasattr(value, attribute), f"{name}: {module} has no {'.'.join(parts[cut:])}"
            value = getattr(value, attribute)


def test_readme_links_point_at_files():
    for readme in READMES:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme.read_text(encoding="utf-8")):
            if not target.startswith("http"):
                assert (ROOT / target).exists(), f"{readme.name}: broken link {target}"


# ------------------------------------------------------------------------------------- the configuration reference


def test_config_reference_describes_every_key():
    reference = load_hook_module("config_reference")
    keys = reference.config_keys()
    paths = [k.path for k in keys]
    for expected in ("model_name", "training.batch_size", "model.knn_index.ef_search", "data.image_augment.hflip_prob"):
        assert expected in paths
    undocumented = [k.path for k in keys if not k.description.strip()]
    assert not undocumented, f"config keys without a docstring: {undocumented}"
    rendered = reference.render("en")
    for path in paths:
        assert f"| `{path}` |" in rendered


def test_config_reference_walks_every_dataclass_field():
    """Independent of the generator: every field of every section reachable from TrainConfig is listed."""
    from hf_metric.config import TrainConfig

    reference = load_hook_module("config_reference")
    listed = {k.path for k in reference.config_keys()}

    def fields(cls, prefix=""):
        import typing

        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "options":
                continue
            yield prefix + f.name
            inner = [a for a in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(a)]
            if inner:
                yield from fields(inner[0], f"{prefix}{f.name}.")

    assert set(fields(TrainConfig)) == listed


def test_attribute_docstrings_are_read_from_the_class_and_its_bases():
    reference = load_hook_module("config_reference")
    described = reference.attribute_docstrings(_Child)
    assert described == {"documented": "Why it exists.", "inherited": "From the base."}
    keys = {k.path: k for k in reference.config_keys(_Child)}
    assert keys["undocumented"].description == ""  # what the test above reports
    assert keys["inherited"].default == "[1, 2]" and keys["inherited"].type == "list of int"


@dataclasses.dataclass
class _Base:
    inherited: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    """From the base."""


@dataclasses.dataclass
class _Child(_Base):
    documented: int | None = None
    """Why it exists."""
    undocumented: str = "x"


def test_configuration_pages_carry_the_generated_reference():
    hooks = load_hook_module("hooks")
    for name in ("configuration.md", "configuration.ru.md"):
        text = (DOCS / name).read_text(encoding="utf-8")
        assert hooks.CONFIG_MARK in text
        assert "`training.batch_size`" in hooks.expand(text, name)


def test_russian_benchmarks_page_shows_the_rendered_sections():
    hooks = load_hook_module("hooks")
    text = (DOCS / "benchmarks.ru.md").read_text(encoding="utf-8")
    names = hooks.SECTION_MARK.findall(text)
    english = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    rendered = set(re.findall(r"<!-- ([\w-]+):start -->", english))
    assert set(names) == rendered  # every table the scripts render appears on the Russian page too
    expanded = hooks.expand(text, "benchmarks.ru.md")
    assert hooks.benchmark_section("bench_knn") in expanded
    with pytest.raises(ValueError, match="no section 'missing'"):
        hooks.benchmark_section("missing", english)


# ------------------------------------------------------------------------------------------------------ READMEs


def readme_commands(readme: Path) -> list[str]:
    """The shell commands of the README's ```bash blocks, one per line, comments removed."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme.read_text(encoding="utf-8"), flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def ci_test_command() -> str:
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    (command,) = [line.strip() for line in lines if line.strip().startswith("python -m pytest")]
    return command


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_readme_is_a_landing_page(readme: Path):
    lines = readme.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"{readme.name}: {len(lines)} lines"


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_readme_test_command_is_the_one_ci_runs(readme: Path):
    tests = [c for c in readme_commands(readme) if "pytest" in c]
    assert tests == [ci_test_command()]


def test_both_readmes_show_the_same_commands():
    english, russian = (readme_commands(r) for r in READMES)
    assert english == russian


TRAIN_TINY = ("--set", "scheduler.num_training_steps=2", "--set", "metric_validation.plots=false")
"""Appended to every `hf-metric train` of a README: two optimizer steps, no pictures."""

TINY_CLASSES = {"text": 8, "image": 10, "audio": 8}
"""Classes kept in the tiny copies of the shipped data sets: enough for the configs' P x K batches."""


def tiny_copy(source: Path, target: Path, rows_per_class: int = 6) -> Path:
    """The first `rows_per_class` rows of the first classes of `source` (the classes of the training file, so a
    test file keeps only labels the model knows)."""
    table = pq.read_table(source)
    modality = next(c for c in ("text", "image", "audio") if c in table.column_names)
    train = source.with_name("train.parquet")
    classes = sorted(set(pq.read_table(train, columns=["label"]).column("label").to_pylist()))
    keep = classes[: TINY_CLASSES[modality]]
    rows = [table.filter(pc.equal(table.column("label"), label)).slice(0, rows_per_class) for label in keep]
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(rows), target)
    return target


def runnable(command: str, workdir: Path) -> list[str] | None:
    """A README command as it runs in the test: tiny data, two training steps, the worktree's hf_metric; None
    for a command that installs packages or is the test command itself."""
    words = shlex.split(command)
    if words[:2] == ["pip", "install"] or "pytest" in words:
        return None
    assert words[0] == "hf-metric", f"unexpected README command: {command}"
    for i, word in enumerate(words):
        if word.endswith(".parquet") and (ROOT / word).is_file():
            words[i] = str(tiny_copy(ROOT / word, workdir / "tiny" / word))
    if words[1] == "train":
        config = yaml.safe_load((ROOT / words[words.index("--config") + 1]).read_text(encoding="utf-8"))
        data = config["data"]["parquet_path"]
        words += [*TRAIN_TINY, "--set", f"data.parquet_path={tiny_copy(ROOT / data, workdir / 'tiny' / data)}"]
    return [sys.executable, "-c", "import sys; from hf_metric.cli import app; sys.exit(app())", *words[1:]]


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path: Path):
    """The commands of both READMEs, in order, in a fresh folder that sees the repository's configs and data."""
    for name in ("configs", "data"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    commands = list(dict.fromkeys(c for r in READMES for c in readme_commands(r)))
    ran = 0
    for command in commands:
        argv = runnable(command, tmp_path)
        if argv is None:
            continue
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        ran += 1
    assert ran >= 7
    assert (tmp_path / "onnx").is_dir() and (tmp_path / "labelled_onnx.parquet").is_file()
    assert (tmp_path / "checkpoints" / "quickstart_audio" / "best" / "config.json").is_file()


# --------------------------------------------------------------------------------------------------- the site


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path):
    """`mkdocs build --strict` (CI runs it too): a broken link, a missing page or a missing Russian twin fails."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocs_static_i18n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    reference = (tmp_path / "site" / "configuration" / "index.html").read_text(encoding="utf-8")
    keys = {k.path: k for k in load_hook_module("config_reference").config_keys()}
    assert "training.batch_size" in reference
    assert keys["loss"].description.split(":")[0] in reference  # this checkout's docstrings, not an installed copy's
    assert (tmp_path / "site" / "ru" / "configuration" / "index.html").is_file()
