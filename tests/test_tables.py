from hf_metric.evaluation.tables import format_metrics_table, metrics_markdown_table


def test_console_table_sorted_and_formatted():
    text = format_metrics_table({"eval_loss": 0.123456, "epoch": 3, "eval_accuracy": 0.5})
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["epoch", "eval_accuracy", "eval_loss"]
    assert lines[4].endswith("0.1235") and lines[2].endswith("3")


def test_markdown_table_rows_and_escaping():
    text = metrics_markdown_table({"eval_recall@1": 0.9, "a|b": 2})
    lines = text.splitlines()
    assert lines[:2] == ["| metric | value |", "|---|---|"]
    assert lines[2] == "| a\\|b | 2 |" and lines[3] == "| eval_recall@1 | 0.9000 |"
