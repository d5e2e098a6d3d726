"""MkDocs hooks of the documentation site (`hooks:` in mkdocs.yml).

- `<!-- config-reference -->` in a page becomes the configuration reference generated from the config dataclasses
  (`config_reference.render`), so the page can never disagree with the code.
- `<!-- benchmark-section: NAME -->` in a page becomes the text between `<!-- NAME:start -->` and
  `<!-- NAME:end -->` of docs/benchmarks.md, the file the benchmark scripts rewrite: the Russian benchmarks page
  shows the same tables without a second copy that could go stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import config_reference

REPOSITORY = Path(__file__).resolve().parents[2]
# Document this checkout's hf_metric, not another installed copy: import it now, while the path points here (MkDocs
# restores sys.path after loading a hook; the package, once imported, finds its submodules on its own).
sys.path.insert(0, str(REPOSITORY))
try:
    import hf_metric.config  # noqa: F401
finally:
    sys.path.remove(str(REPOSITORY))

CONFIG_MARK = "<!-- config-reference -->"
SECTION_MARK = re.compile(r"<!-- benchmark-section: ([\w-]+) -->")
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks.md"


def page_language(src_path: str) -> str:
    """`ru` for `page.ru.md` (the suffix layout of mkdocs-static-i18n), else `en`."""
    return "ru" if src_path.endswith(".ru.md") else "en"


def benchmark_section(name: str, text: str | None = None) -> str:
    """The rendered section `name` of docs/benchmarks.md, markers included."""
    text = BENCHMARKS.read_text(encoding="utf-8") if text is None else text
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"docs/benchmarks.md has no section {name!r} ({start} ... {end})")
    return start + text.split(start, 1)[1].split(end, 1)[0] + end


def expand(markdown: str, src_path: str) -> str:
    """The page's Markdown with the generated parts filled in."""
    if CONFIG_MARK in markdown:
        markdown = markdown.replace(CONFIG_MARK, config_reference.render(page_language(src_path)))
    return SECTION_MARK.sub(lambda m: benchmark_section(m.group(1)), markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """MkDocs hook: fill in the generated parts of each page before it is rendered."""
    return expand(markdown, page.file.src_path)
