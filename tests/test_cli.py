"""The command line end to end (subprocesses, as a user runs it): train, sample, perplexity, help.

Bad input is catalogued in test_bad_input.py; Ctrl-C, kills and concurrent runs in test_crash_safety.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .conftest import SMOKE, gru_lm


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


def test_help_explains_every_command():
    for cmd in ("train", "sample", "perplexity"):
        r = gru_lm(cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout
    assert "--reset-after" in gru_lm("train", "--help").stdout
