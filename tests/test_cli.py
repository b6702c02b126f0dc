"""The command line end to end (subprocesses, as a user runs it): train, sample, perplexity, help.

Bad input is catalogued in test_bad_input.py; Ctrl-C, kills and concurrent runs in test_crash_safety.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .conftest import SMOKE, gru_lm, run_main


@pytest.mark.slow
def test_train_sample_perplexity_smoke(corpus, tmp_path):
    out = tmp_path / "gru"
    r = gru_lm("train", corpus, "--config", SMOKE, "--out", out, "--max-steps", 12, "--hidden-size", 24)
    assert r.returncode == 0, r.stderr
    assert (out / "best.pt").is_file() and "val loss" in r.stderr
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 12
    assert torch.load(out / "last.pt", weights_only=True)["model_config"]["hidden_size"] == 24  # flag beats config

    r = gru_lm("sample", out / "best.pt", "--prime", "ROMEO:", "--length", 40, "--seed", 1)
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:") and len(r.stdout) == len("ROMEO:") + 40 + 1
    again = gru_lm("sample", out / "best.pt", "--prime", "ROMEO:", "--length", 40, "--seed", 1)
    assert again.stdout == r.stdout
    r3 = gru_lm("sample", out / "best.pt", "--length", 10, "--num-samples", 3, "--temperature", 0)
    assert r3.returncode == 0 and r3.stdout.count("\n\n") >= 2

    rnn = tmp_path / "rnn"
    assert gru_lm("train", corpus, "--config", SMOKE, "--out", rnn, "--cell", "rnn").returncode == 0
    r = gru_lm("perplexity", out / "best.pt", rnn / "best.pt", "--json")
    rows = json.loads(r.stdout)
    assert [Path(x["checkpoint"]).parent.name for x in rows] == ["gru", "rnn"]
    assert set(rows[0]) == {"checkpoint", "file", "chars", "loss", "perplexity", "bpc", "unknown"}
    table = gru_lm("perplexity", out / "best.pt", rnn / "best.pt", "--file", corpus)
    assert table.returncode == 0 and "rnn" in table.stdout and "bpc" in table.stdout


COMMANDS = ("train", "prepare", "sample", "perplexity", "inspect", "plot", "compare", "serve", "export")


def test_every_command_is_listed_and_every_option_has_help():
    import typer.main

    from gru_lm.cli.main import app

    group = typer.main.get_command(app)
    assert sorted(group.commands) == sorted(COMMANDS)
    for name, command in group.commands.items():
        assert (command.help or "").strip(), f"{name} has no description"
        for param in command.params:
            if param.param_type_name == "option":
                assert (param.help or "").strip(), f"{name} {param.opts[0]} has no help text"


def test_help_explains_every_command(monkeypatch, capsys):
    for cmd in COMMANDS:
        code, out, _ = run_main(monkeypatch, capsys, cmd, "--help")
        assert code == 0 and out.startswith("Usage: ") and f" {cmd} [OPTIONS]" in out and "--help" in out, cmd
    assert "--reset-after" in run_main(monkeypatch, capsys, "train", "--help")[1]
    code, out, _ = run_main(monkeypatch, capsys)  # no command: the list of them
    assert code == 0 and all(cmd in out for cmd in COMMANDS)


def test_python_dash_m_gru_lm_is_the_same_command_line():
    r = gru_lm("--help")
    assert r.returncode == 0 and "Usage" in r.stdout and all(cmd in r.stdout for cmd in COMMANDS)
