"""Reports: the comparison table, the GRU-versus-RNN line and the loss plots."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from gru_lm.analysis.report import markdown_table, summarize, write_report
from gru_lm.errors import UserError
from gru_lm.machine.cpu import cpu_model, isa_level
from gru_lm.training.train import train

from .conftest import ROOT
from .test_cli import SMOKE, gru_lm


def test_summary_matches_the_run(trained_run):
    s = summarize(trained_run)
    rows = [json.loads(ln) for ln in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert s["steps"] == 60 and s["chars"] == rows[-1]["chars"]
    assert s["val_loss"] == min(r["val_loss"] for r in rows if "val_loss" in r)
    assert s["perplexity"] == pytest.approx(math.exp(s["val_loss"])) and s["cell"] == "gru"
    table = markdown_table([s])
    assert table.count("\n") == 3 and f"{s['val_loss']:.4f}" in table


def test_report_compares_gru_and_rnn(corpus, smoke, trained_run, tmp_path):
    rnn = tmp_path / "rnn"
    train(corpus, smoke(cell="rnn", max_steps=60, eval_every=30), rnn, progress=False)
    report = write_report([trained_run, rnn], tmp_path / "report", "smoke")
    text = report.read_text()
    assert "| gru |" in text and "| rnn |" in text and "Best GRU against best RNN" in text
    assert f"Trained on: {cpu_model()} ({isa_level()}), float32, torch {torch.__version__}." in text  # both runs here
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["cell"] for r in data["runs"]] == ["gru", "rnn"] and data["pairs"][0]["low"] is None
    best = data["gru_against_rnn"]
    assert f"{best['gru_loss']:.4f} against {best['rnn_loss']:.4f}" in text
    assert best["perplexity_ratio"] == pytest.approx(math.exp(best["gru_loss"] - best["rnn_loss"]))
    png = (tmp_path / "report" / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_compare_with_seeds_reports_means_spreads_and_an_interval(corpus, tmp_path):
    """--seeds 2: each config trains twice with the seeds s and s+1 into runs/<config>/seed<s>; the report
    gives each config's mean and range and the pair's difference with an interval; a second call reuses
    the finished runs."""
    from gru_lm.analysis.report import write_report
    from gru_lm.training.compare import train_configs

    cfg_rnn = tmp_path / "smoke_rnn.toml"
    cfg_rnn.write_text((ROOT / "configs" / "smoke.toml").read_text().replace('cell = "gru"', 'cell = "rnn"'))
    configs = [ROOT / "configs" / "smoke.toml", cfg_rnn]
    groups, stopped = train_configs(corpus, configs, tmp_path / "cmp", None, False, False, seeds=2)
    assert stopped is None and [g.name for g in groups] == ["smoke", "smoke_rnn"]
    assert [r.name for r in groups[0].runs] == ["seed1", "seed2"] and all(
        (r / "best.pt").is_file() for g in groups for r in g.runs
    )
    text = write_report(groups, tmp_path / "cmp", "seeds").read_text()
    assert "smoke (seed 1)" in text and "smoke (seed 2)" in text and "± " in text and "95% interval" in text
    assert ("is better" in text) != ("cannot tell them apart" in text)
    data = json.loads((tmp_path / "cmp" / "report.json").read_text())
    (pair,) = data["pairs"]
    assert [g["runs"] for g in data["groups"]] == [2, 2] and pair["low"] < pair["diff"] < pair["high"]
    assert f"{pair['diff']:+.4f} | [{pair['low']:+.4f}, {pair['high']:+.4f}]" in text
    before = (groups[0].runs[0] / "last.pt").stat().st_mtime_ns
    train_configs(corpus, configs, tmp_path / "cmp", None, False, False, seeds=2)
    assert (groups[0].runs[0] / "last.pt").stat().st_mtime_ns == before  # reused, not trained again


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match=r"no metrics.jsonl"):
        summarize(tmp_path)


@pytest.mark.slow
def test_plot_and_compare_commands(corpus, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    r = gru_lm("plot", run)
    assert r.returncode == 0, r.stderr
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    r = gru_lm("compare", corpus, "--config", SMOKE, "--run", run, "--out", tmp_path / "cmp", "-q")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "| smoke |" in text and "| run |" in text
    r = gru_lm("plot", tmp_path / "nothing")
    assert r.returncode == 2 and "no metrics.jsonl" in r.stderr


def test_compare_stops_at_an_interrupted_training(corpus, tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM during one of compare's trainings saves that run and stops (exit 130): it
    does not go on to train the next config, nor write a report of a run without best.pt."""
    from typer.testing import CliRunner

    from gru_lm.cli import main as cli
    from gru_lm.training import train as training

    trained = []

    def interrupted(file, s, out, **kw):
        trained.append(out)
        return training.TrainResult(out, 3, 192, 0.5, math.nan, math.inf, interrupted=True)

    monkeypatch.setattr(training, "train", interrupted)
    out = tmp_path / "cmp"
    r = CliRunner().invoke(
        cli.app, ["compare", str(corpus), "-c", str(SMOKE), "-c", str(SMOKE), "--out", str(out), "-q"]
    )
    assert r.exit_code == 130 and len(trained) == 1, r.output
    assert "interrupted at step 3" in r.output and not (out / "report.md").exists()
