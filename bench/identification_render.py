"""The tables of `bench/identification.py`: docs/identification_bench.md and its Russian twin, from the results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.docs_section import table_row, write_section

MARKS = ("<!-- identification:start -->", "<!-- identification:end -->")
COLUMNS = (
    ("precision_at_1", 100, 1),
    ("map_at_r", 1, 3),
    ("mrr", 1, 3),
    ("within_group_precision_at_1", 100, 1),
    ("within_group_map_at_r", 1, 3),
    ("eer", 100, 2),
    ("tar@far=0.001", 100, 1),
    ("eer_same_group", 100, 2),
    ("train_seconds", 1, 0),
)
"""(result key, scale, digits) of each column; the titles are in `TEXT`."""
TEXT = {
    "en": {
        "title": "# Identification of unseen classes",
        "intro": (
            "Train on 3/4 of the classes, enrol each held-out class from k rows, identify its test rows among "
            "ALL classes (gallery: the training rows plus the enrolled rows; exact cosine search). "
            "`recipe`: hf_metric with the example config; `ce`: the same pipeline as plain cross-entropy "
            "(linear head, random batches, no metric loss); `untuned`: the pretrained all-MiniLM-L6-v2, mean "
            "pooling, no fine-tuning. Verification on pairs of the query rows (genuine vs random impostors; "
            "`same group`: vs impostors of the same scenario). Written by `python -m bench.identification`; "
            "settings may be chosen on `--protocol val` only (the test file is not read there). The goal: "
            "on unseen classes, precision@1 >= untuned + 10 points and "
            "MAP@R >= untuned + 0.10."
        ),
        "run": "Run",
        "none": "No measured run yet: the script is ready (see the commands above).",
        "model": "model",
        "columns": (
            "precision@1",
            "MAP@R",
            "MRR",
            "precision@1 in group",
            "MAP@R in group",
            "EER %",
            "TAR@FAR=1e-3 %",
            "EER % same group",
            "train s",
        ),
        "heading": "{dataset}, protocol {protocol} ({run_id})",
        "setup": "{seen} + {held} classes, {rows} training rows, epochs {epochs}, {machine}, {threads} threads",
    },
    "ru": {
        "title": "# Идентификация невиданных классов",
        "intro": (
            "Модель обучается на 3/4 классов; каждый отложенный класс регистрируется по k строкам, а его "
            "тестовые строки опознаются среди ВСЕХ классов (галерея: обучающие строки и зарегистрированные; "
            "точный поиск по косинусу). `recipe` — hf_metric с конфигом-примером; `ce` — тот же конвейер с "
            "обычной кросс-энтропией (линейная голова, случайные батчи, без метрического лосса); `untuned` — "
            "предобученная all-MiniLM-L6-v2, усреднение токенов, без дообучения. Верификация — на парах "
            "запросов (свои против случайных чужих; `same group` — против чужих из того же сценария). Таблицы "
            "пишет `python -m bench.identification`; настройки выбираются только на `--protocol val` "
            "(тестовый файл там не читается). Цель: на невиданных классах precision@1 не ниже, чем у "
            "`untuned`, плюс 10 пунктов, и MAP@R не ниже, чем у `untuned`, плюс 0,10."
        ),
        "run": "Запуск",
        "none": "Измерений пока нет: скрипт готов (команды выше).",
        "model": "модель",
        "columns": (
            "precision@1",
            "MAP@R",
            "MRR",
            "precision@1 в группе",
            "MAP@R в группе",
            "EER %",
            "TAR@FAR=1e-3 %",
            "EER %, чужие из группы",
            "обучение, с",
        ),
        "heading": "{dataset}, протокол {protocol} ({run_id})",
        "setup": "{seen} + {held} классов, {rows} обучающих строк, эпох: {epochs}, {machine}, потоков: {threads}",
    },
}


def _cell(row: dict[str, Any], key: str, scale: float, digits: int) -> str:
    value = row.get(key)
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _table_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """(dataset, protocol, setting): the setting is the recipe's overrides, the epochs and the row cap."""
    setting = json.dumps([row.get("overrides") or {}, row["epochs"], row["max_train_rows"]], sort_keys=True)
    return row["dataset"], row["protocol"], setting


def tables(rows: list[dict[str, Any]], lang: str) -> str:
    """One table per dataset, protocol and setting (recipe overrides, epochs, row cap): its latest run, a row per
    model and k."""
    text = TEXT[lang]
    latest: dict[tuple[str, str, str], str] = {}
    for row in rows:
        latest[_table_key(row)] = max(row["run_id"], latest.get(_table_key(row), ""))
    out = []
    for key, run_id in sorted(latest.items()):
        chosen = [r for r in rows if _table_key(r) == key and r["run_id"] == run_id]
        dataset, protocol = key[:2]
        first = chosen[0]
        setup = text["setup"].format(
            seen=first["train_classes"],
            held=first["held_out_classes"],
            rows=first["train_rows"],
            epochs=first["epochs"] or "config",
            machine=first["machine"],
            threads=first["threads"],
        )
        heading = text["heading"].format(dataset=dataset, protocol=protocol, run_id=run_id)
        out += [f"### {heading}", "", setup, "", f"`{first['command']}`", ""]
        out.append(table_row([text["model"], "k", *text["columns"]]))
        out.append(table_row(["---"] * (len(COLUMNS) + 2)))
        for r in chosen:
            out.append(table_row([r["model"], r["k"], *(_cell(r, *column) for column in COLUMNS)]))
        out.append("")
    return "\n".join(out) if out else text["none"] + "\n"


def write_docs(rows: list[dict[str, Any]], base: Path) -> None:
    """Write `<base>.md` (English) and `<base>.ru.md` (Russian); only the section between `MARKS` is replaced."""
    for lang, suffix in (("en", ".md"), ("ru", ".ru.md")):
        path = base.with_name(base.name + suffix)
        text = TEXT[lang]
        if not path.exists():
            path.write_text(f"{text['title']}\n\n{text['intro']}\n")
        write_section(path, f"{MARKS[0]}\n{tables(rows, lang)}{MARKS[1]}", MARKS)
