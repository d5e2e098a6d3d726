"""Should `training.length_grouping` be on by default for text? The validation table that decides it.

    python -m bench.quality --data ../shared/data/banking77 --protocol nested --max-train-per-class 30 --seeds 3 \
        --variants hf_metric length_grouping --threads 1 --results docs/length_grouping_results.jsonl \
        --run-id lg-b77-cap30 --docs ''                 # and the same for hwu64 (run id lg-hwu64-cap30)
    python -m bench.length_grouping_decision           # the docs section from those rows

Both arms are the example config, with and without length grouping, over the same seeds, scored on the
validation split of train (`--protocol nested`: the test file is not read). The rule: length grouping may become
the default when, on every data set, its mean accuracy and mean macro-F1 are no lower than the control's by more
than the seed noise (the larger sample std of the two arms).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.docs_section import read_results, write_section
from bench.quality_render import seeds_tables

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "length_grouping_results.jsonl"
MARKS = ("<!-- length-grouping:start -->", "<!-- length-grouping:end -->")
CONTROL, ARM = "hf_metric", "length_grouping"


def verdict(rows: list[dict]) -> tuple[list[str], bool]:
    """One line per data set and metric (difference of means vs the seed noise), and whether the rule holds."""
    lines, holds = [], True
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for metric in ("accuracy", "macro_f1"):
            control = np.array([r[metric] for r in rows if r["dataset"] == dataset and r["variant"] == CONTROL])
            arm = np.array([r[metric] for r in rows if r["dataset"] == dataset and r["variant"] == ARM])
            if len(control) < 2 or len(arm) < 2:
                return [f"{dataset}: fewer than 2 seeds per arm, no decision"], False
            noise = max(control.std(ddof=1), arm.std(ddof=1))
            diff = arm.mean() - control.mean()
            ok = diff >= -noise
            holds &= bool(ok)
            lines.append(
                f"- {dataset} {metric}: {ARM} {arm.mean():.4f} vs {CONTROL} {control.mean():.4f} "
                f"({diff:+.4f}; seed noise {noise:.4f}): {'within the noise or better' if ok else 'worse'}."
            )
    return lines, holds


def section(rows: list[dict]) -> str:
    lines, holds = verdict(rows)
    return "\n".join(
        [
            MARKS[0],
            "## Length grouping on or off: accuracy on validation (`bench/length_grouping_decision.py`)",
            "",
            *seeds_tables(rows),
            *lines,
            "",
            f"Rule (mean no lower than the control's by more than the seed noise, on every data set and both "
            f"metrics): **{'holds' if holds else 'does not hold'}**.",
            MARKS[1],
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    text = section(read_results(Path(args.results)))
    print(text)
    if args.docs:
        write_section(Path(args.docs), text, MARKS)


if __name__ == "__main__":
    main()
