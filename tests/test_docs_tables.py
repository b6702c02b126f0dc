"""The docs' benchmark tables: rendered from the results files the benchmarks wrote, never edited by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import include, quality, summary, tables

from .conftest import ROOT


def test_every_table_in_the_docs_is_the_one_its_results_files_render():
    stale = [f"{b.doc.name}: {b.kind} of {b.files}" for b in include.stale()]
    assert not stale, f"run `python bench/include.py`: {stale}"


def test_performance_md_and_results_md_have_their_tables_from_the_results_files():
    assert {b.kind for b in include.blocks(ROOT / "docs" / "performance.md")} == set(summary.SPEED)
    assert {b.kind for b in include.blocks(ROOT / "docs" / "results.md")} == set(quality.QUALITY)


def test_a_table_edited_by_hand_is_found_and_rewritten(tmp_path: Path):
    name = "bench/results/export_speed.json"
    doc = tmp_path / "doc.md"
    table = tables.render("export_speed", [name])
    edited = table.replace("0.36×", "0.50×")
    assert edited != table
    doc.write_text(f"text\n\n<!-- table export_speed {name} -->\n{edited}\n<!-- end table -->\n\nmore\n")
    (block,) = include.blocks(doc)
    assert block.text != block.current()
    assert include.rewrite(doc) == 1
    (block,) = include.blocks(doc)
    assert block.text == block.current() and doc.read_text().endswith("<!-- end table -->\n\nmore\n")
    assert include.rewrite(doc) == 0


def machine(**changes: str) -> dict:
    head = {"cpu": "Test CPU", "isa": "AVX-512", "dtype": "float32", "kernels": "avx512", "torch": "2", "threads": 2}
    return head | {"date": "2026-01-01"} | changes


def row(cell: str, ratio: float, layers: int = 1, hidden: int = 256, chars: float = 1000.0) -> dict:
    return {"cell": cell, "layers": layers, "hidden": hidden, "chars_per_s": chars, "ratio": ratio, "of_ceiling": 0.5}


def test_training_table_sets_each_cell_against_torch_nn_of_its_kind():
    rows = [
        row("torch.nn.GRU", 1.0),
        row("ours GRU reset-after [avx512]", 2.0),
        row("ours GRU reset-before [blas]", 1.5),
        row("torch.nn.LSTM", 1.6),
        row("ours LSTM [avx512]", 2.0),
        {"command": "gru-lm train", "chars_per_s": 5.0},
    ]
    text = summary.rnn_speed([summary.ResultFile("x.json", {"machine": machine(), "rows": rows})])
    lines = text.splitlines()
    assert lines[0] == "| layers × hidden | cell | torch.nn | ours [avx512] | ours [blas] |"
    gru, before, lstm = lines[2:]
    assert "2.00×" in gru and "1.50×" in before  # the reset-before GRU against torch.nn.GRU
    assert "1.25×" in lstm  # 2.0 / 1.6: against torch.nn.LSTM, not torch.nn.GRU
    assert lstm.endswith("| 1.0k, 1.25×, 50% | – |")


def test_bfloat16_cells_on_each_path_get_columns_after_the_float32_ones():
    rows = [
        row("torch.nn.GRU", 1.0),
        row("ours GRU reset-after [avx512]", 2.0),
        row("ours GRU reset-after (bfloat16) [blas]", 2.5),
        row("ours GRU reset-after (bfloat16) [avx512]", 3.0),
        row("ours GRU reset-after [blas]", 1.5),
    ]
    text = summary.rnn_speed([summary.ResultFile("x.json", {"machine": machine(), "rows": rows})])
    columns = "torch.nn | ours [avx512] | ours [blas] | ours [avx512] (bfloat16) | ours [blas] (bfloat16)"
    assert text.splitlines()[0] == f"| layers × hidden | cell | {columns} |"
    assert text.splitlines()[2].endswith("| 1.0k, 3.00×, 50% | 1.0k, 2.50×, 50% |")


def test_a_cell_without_a_kernels_ending_runs_the_default_path():
    rows = [row("torch.nn.GRU", 1.0), row("ours GRU reset-after", 1.8)]
    result = {"machine": machine(kernels="avx2"), "rows": rows}
    assert "| ours [avx2] |" in summary.rnn_speed([summary.ResultFile("x.json", result)]).splitlines()[0]


def test_the_caption_names_the_cpu_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(summary, "ROOT", tmp_path)
    figures = {"machine": machine(cpuid="family 6 model 1"), "model": "GRU 1 × 8", "rates": {"gru-lm sample": 10.0}}
    (tmp_path / "r.json").write_text(json.dumps(figures))
    text = tables.render("export_speed", ["r.json"])
    assert text.endswith(
        "CPU Test CPU (family 6 model 1), AVX-512, float32, kernels avx512, torch 2, 2 threads, 2026-01-01: `r.json`"
    )
    with pytest.raises(ValueError, match="no table called"):
        tables.render("nope", ["r.json"])
    with pytest.raises(ValueError, match="one results file"):
        tables.render("export_speed", ["r.json", "r.json"])


def test_a_caption_names_bfloat16_where_the_run_measured_cells_under_it():
    machine = {"dtype": "float32"}
    float_run = {"machine": machine, "rows": [{"cell": "ours GRU reset-after"}]}
    mixed_run = {
        "machine": machine,
        "rows": [{"cell": "ours GRU reset-after"}, {"cell": "torch.nn.GRU" + summary.BF16}],
    }
    assert summary.measured_dtype(float_run) == "float32"
    assert summary.measured_dtype(mixed_run) == "float32 and bfloat16 autocast"
    labelled = {"machine": {"dtype": "float32 and bfloat16 autocast"}, "rows": mixed_run["rows"]}
    assert summary.measured_dtype(labelled) == "float32 and bfloat16 autocast"


def test_a_training_caption_names_the_step_the_run_timed_around_its_cells():
    cells = [{"cell": "torch.nn.GRU", "hidden": 256, "layers": 1, "batch": 32, "window": 64}]
    assert summary.step_note({"machine": machine(step="train"), "rows": cells}) == ", gru-lm train's step"
    assert "plain step" in summary.step_note({"machine": machine(), "rows": cells})  # files from before the key
    assert summary.step_note({"machine": machine(), "rows": [{"command": "gru-lm sample", "chars_per_s": 1.0}]}) == ""
