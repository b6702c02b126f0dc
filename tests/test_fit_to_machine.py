"""Fitting the model to the machine: the choice follows the characters each candidate sees in the budget,
the run records what it chose, and a size given on the command line always wins."""

from __future__ import annotations

import json
import tomllib

import pytest
import torch

from gru_lm.training import fit_to_machine as fitting
from gru_lm.training.fit_to_machine import Candidate, choose
from gru_lm.training.settings import resolve
from gru_lm.training.train import train

from .conftest import SMOKE


def test_the_choice_follows_the_characters_each_candidate_affords():
    small = Candidate("small", {"hidden_size": 16, "layers": 1}, a=1.50, b=0.10)
    big = Candidate("big", {"hidden_size": 32, "layers": 2}, a=1.30, b=0.40)
    # small's curve is lower up to ~4M characters and big's beyond: the same speeds, two budgets
    assert choose([small, big], [20e3, 10e3], 100, 0.5)[0][1] is small  # 1.9M / 0.9M characters
    assert choose([small, big], [20e3, 10e3], 3000, 0.5)[0][1] is big  # 56M / 28M characters
    # the same budget on a machine where big runs relatively faster
    assert choose([small, big], [20e3, 19e3], 300, 0.5)[0][1] is big
    rows = choose([small, big], [20e3, 10e3], 100, 0.5)
    assert rows[0][0] == pytest.approx(small.loss(20e3 * 100 * fitting.TRAINING_SHARE, 0.5))


def _table(tmp_path):
    table = {
        "about": "test",
        "alpha": 0.5,
        "candidates": [
            {"name": "tiny", "settings": {"hidden_size": 16, "layers": 1, "lr": 0.01}, "a": 3.0, "b": 0.0},
            {"name": "small", "settings": {"hidden_size": 24, "layers": 2, "lr": 0.02}, "a": 1.0, "b": 0.0},
        ],
    }
    path = tmp_path / "fit_candidates.json"
    path.write_text(json.dumps(table))
    return path


def test_a_candidate_without_a_fitted_curve_is_never_chosen(corpus, tmp_path, monkeypatch):
    table = json.loads(_table(tmp_path).read_text())
    table["candidates"][0]["b"] = 0.5  # "tiny" fitted (1 + ...); "small" left as a placeholder (a = b = 0)
    table["candidates"][1]["a"] = 0.0
    (tmp_path / "fit_candidates.json").write_text(json.dumps(table))
    s = resolve(SMOKE, {"fit_to_machine": True, "max_time": 60.0})
    train_ids = torch.randint(0, 10, (5000,))
    chosen, line = fitting.fit_to_machine(s, 10, train_ids, torch.device("cpu"), None, tmp_path / "fit_candidates.json")
    assert (chosen.hidden_size, chosen.layers) == (16, 1) and "tiny" in line
    table["candidates"][0].update(a=0.0, b=0.0)
    (tmp_path / "fit_candidates.json").write_text(json.dumps(table))
    kept, line = fitting.fit_to_machine(s, 10, train_ids, torch.device("cpu"), None, tmp_path / "fit_candidates.json")
    assert kept == s and "no fitted candidate" in line


@pytest.mark.slow
def test_a_fitted_run_records_its_choice_and_a_given_size_wins(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(fitting, "FIT_CANDIDATES_FILE", _table(tmp_path))
    s = resolve(SMOKE, {"fit_to_machine": True, "max_time": 2.0, "max_steps": 5})
    result = train(corpus, s, tmp_path / "fitted", progress=False)
    written = tomllib.loads((tmp_path / "fitted" / "config.toml").read_text())
    assert (written["hidden_size"], written["layers"], written["lr"]) == (24, 2, 0.02)  # "small": the lower curve
    assert written["fit_to_machine"] is False  # so the config re-runs exactly this size
    state = torch.load(tmp_path / "fitted" / "last.pt", weights_only=True)
    assert state["model_config"]["hidden_size"] == 24 and result.step == 5
    flags = resolve(SMOKE, {"fit_to_machine": True, "hidden_size": 20})
    assert flags.fit_to_machine is False and flags.hidden_size == 20  # --hidden-size switches fitting off
    assert resolve(SMOKE, {"fit_to_machine": True, "layers": 2}).fit_to_machine is False


def test_the_shipped_table_has_fitted_curves_for_its_candidates():
    alpha, candidates = fitting.load_table()
    assert 0.1 <= alpha <= 1.5 and len(candidates) >= 2
    for c in candidates:
        assert c.b > 0 and 1.0 < c.a < 2.0, c  # the loss falls with characters seen, towards a plausible floor
        resolve(None, c.settings)  # and the recipe is valid
