"""The tables of docs/results.md: rendered from report.json, the sweep's rows and the Quick start's rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import quality, quick_start
from bench.summary import ResultFile
from gru_lm.analysis.report import groups_table, report_markdown, spread_of, write_report
from gru_lm.training.train import train

from .conftest import ROOT


def spread(mean: float, n: int = 1, std: float | None = None) -> dict:
    return {"n": n, "mean": mean, "std": std, "low": mean - 0.01, "high": mean + 0.01}


def group(name: str, cell: str, loss: float, n: int = 1) -> dict:
    stats = {key: spread(loss, n, 0.005 if n > 1 else None) for key in ("val_loss", "perplexity", "bpc")}
    size = {"layers": 1, "hidden": 8, "params": 1000}
    return {"name": name, "cell": cell, **size, "runs": n, **stats, "chars_per_s": spread(5000.0, n)}


def report(groups: list[dict], budget_s: float = 300.0, against: dict | None = None) -> ResultFile:
    runs = [{"machine": "Test CPU (AVX2), float32, torch 2", "budget_s": budget_s, "group": g["name"]} for g in groups]
    data = {"runs": runs, "groups": groups, "pairs": [], "gru_against_rnn": against}
    return ResultFile("reports/x/report.json", data)


def test_gru_against_rnn_shows_the_pair_the_report_chose_and_says_when_no_rnn_was_trained():
    against = {"gru": "b", "rnn": "c", "perplexity_ratio": 0.9}
    two = report([group("a", "gru", 1.50), group("b", "gru", 1.45, n=3), group("c", "rnn", 1.6)], 100, against)
    lone = report([group("a", "gru", 1.40), group("b", "gru", 1.30)], 1800)
    lines = quality.gru_rnn([two, lone]).splitlines()
    assert lines[2].startswith("| 100 s | Test CPU (AVX2), float32 | **1.4500** ± 0.0050 (1 × 8, 3 seeds) |")
    assert "| 1.6000 (1 × 8) | 0.900× | [reports/x](../reports/x/report.md) |" in lines[2]
    assert lines[3].startswith("| 30 min |") and "**1.3000** (1 × 8) | not measured |  |" in lines[3]
    with pytest.raises(ValueError, match="no GRU"):
        quality.gru_rnn([report([group("c", "rnn", 1.6)])])


def test_the_groups_table_gives_a_range_only_where_a_config_has_seeds():
    lines = quality.report_groups([report([group("x", "gru", 1.4, 3), group("y", "lstm", 1.5)])]).splitlines()
    assert "| **1.4000 ± 0.0050** [1.3900–1.4100] | 1.400 ± 0.005 |" in lines[2]
    assert lines[3] == "| y | LSTM | 1 × 8 | 1,000 | 5.0k | 1.5000 | 1.500 | 1.500 |"


def test_a_run_without_evaluations_makes_its_group_nan_in_report_md_not_a_crash():
    stats = {key: spread_of([float("nan"), 1.5]) for key in ("val_loss", "perplexity", "bpc")}
    line = groups_table([{"name": "g", "cell": "gru", "runs": 2, **stats}]).splitlines()[2]
    assert line.startswith("| g | gru | 2 | nan ± nan")


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (ROOT / "reports").glob("*/report.json")))
def test_a_committed_report_json_gives_the_tables_of_its_report_md(folder: str):
    def tables(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(("|", "Best GRU"))]

    data = json.loads((ROOT / "reports" / folder / "report.json").read_text(encoding="utf-8"))
    assert tables(report_markdown(data)) == tables((ROOT / "reports" / folder / "report.md").read_text())


def test_pairs_are_named_by_their_cells_where_those_tell_them_apart():
    pairs = [{"a": "x", "b": "y", "diff": -0.02, "low": -0.03, "high": -0.01, "decided": True}]
    cells = report([group("x", "gru", 1.4, 3), group("y", "lstm", 1.42, 3)])
    cells.data["pairs"] = pairs
    assert quality.report_pairs([cells]).splitlines()[2] == (
        "| GRU − LSTM | −0.0200 | [−0.0300, −0.0100] | the GRU is better |"
    )
    same = report([group("x", "gru", 1.4, 3), group("y", "gru", 1.42, 3)])
    same.data["pairs"] = [pairs[0] | {"decided": False, "low": -0.03, "high": 0.01}]
    assert quality.report_pairs([same]).splitlines()[2].startswith("| x − y |")
    assert quality.report_pairs([same]).endswith("| the seeds cannot tell |")


def sweep_row(candidate: str, budget_s: float, loss: float, **extra: str) -> dict:
    head = {"cpu": "Test CPU", "isa": "AVX2", "dtype": "float32", "candidate": candidate, "budget_s": budget_s}
    return head | {"best_val_loss": loss, "chars": 2_000_000, "chars_per_s": 20000.0} | extra


def test_the_sweep_table_has_a_column_per_budget_and_marks_the_best_and_the_fitted_runs():
    settings = {"layers": 1, "hidden_size": 8, "dropout": 0.1, "lr": 0.007, "min_lr": 1e-5, "weight_decay": 0.1}
    table = {"candidates": [{"name": "small", "settings": settings}, {"name": "big", "settings": settings}]}
    rows = [
        sweep_row("small", 100, 1.50),
        sweep_row("big", 100, 1.60),
        sweep_row("big", 1800, 1.40, source="a config"),
        {"candidate": "small", "budget_s": 100, "best_val_loss": 1.0},  # no CPU named: not a candidates sweep
    ]
    text = quality.sweep([ResultFile("s.jsonl", {"rows": rows}), ResultFile("c.json", table)])
    lines = text.splitlines()
    assert lines[0] == "| candidate (Test CPU, AVX2, float32) | recipe | 100 s | 30 min |"
    recipe = "1 × 8, dropout 0.1, lr 0.007 → 1e-5, weight decay 0.1"
    assert lines[2] == f"| small | {recipe} | **1.5000** (2.00M, 20.0k/s) |  |"
    assert lines[3].endswith("| 1.6000 (2.00M, 20.0k/s) | **1.4000** (2.00M, 20.0k/s)* |")


def test_quick_start_rows_of_one_cpu_and_size_merge_into_their_range():
    def row(loss: float, rate: float | None, runs: int = 1) -> dict:
        head = {"cpu": "Test CPU", "cpuid": "family 1 model 2", "isa": "AVX2", "dtype": "float32", "size": "1 × 8"}
        return head | {"runs": runs, "chars_per_s": [rate, rate] if rate else None, "best_val_loss": [loss, loss]}

    rows = [row(1.41, 20000.0), row(1.43, None), row(1.40, 25000.0, runs=3)]
    text = quality.quick_start([ResultFile("q.jsonl", {"rows": rows})])
    assert text.splitlines()[2] == (
        "| Test CPU (family 1 model 2) | AVX2 | float32 | 1 × 8 | 20.0k–25.0k (4 of the runs) | 1.4000–1.4300 | 5 |"
    )
    timed = quality.quick_start([ResultFile("q.jsonl", {"rows": rows[:1]})])
    assert timed.splitlines()[2].endswith("| 20.0k | 1.4100 | 1 |")


def test_a_quick_start_row_is_the_run_as_its_report_summarises_it(trained_run: Path):
    row = quick_start.row_of(trained_run)
    metrics = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    best = min(m["val_loss"] for m in metrics if "val_loss" in m)
    assert row["best_val_loss"] == [round(best, 4)] * 2 and row["dtype"] == "float32" and row["runs"] == 1
    assert row["size"] == "1 × 32" and row["chars_per_s"][0] == row["chars_per_s"][1] > 0


def test_the_tables_of_a_report_render_what_gru_lm_compare_wrote(corpus, smoke, trained_run, tmp_path):
    rnn = tmp_path / "rnn"
    train(corpus, smoke(cell="rnn", max_steps=60, eval_every=30), rnn, progress=False)
    write_report([trained_run, rnn], tmp_path / "report", "smoke")
    written = ResultFile("reports/smoke/report.json", json.loads((tmp_path / "report" / "report.json").read_text()))
    (gru_row,) = quality.gru_rnn([written]).splitlines()[2:]
    best = written.data["gru_against_rnn"]
    assert f"**{best['gru_loss']:.4f}**" in gru_row and f"{best['perplexity_ratio']:.3f}×" in gru_row
    runs = quality.report_runs([written]).splitlines()[2:]
    assert [line.split(" | ")[1] for line in runs] == ["GRU", "RNN"]
