"""Fitting the model to the machine: the choice follows the characters each candidate sees in the budget,
the run records what it chose, and a size given on the command line always wins."""

from __future__ import annotations

import json
import tomllib

import pytest
import torch

from gru_lm.training import fit_to_machine as fitting
from gru_lm.training import settings as settings_module
from gru_lm.training.fit_to_machine import Candidate, choose, curve_chars, dropout_for, embed_size_for, worth
from gru_lm.training.settings import DEFAULTS, resolve
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
    s = resolve(SMOKE, {"fit_to_machine": True, "max_time": 2.0, "max_steps": 0})  # a time budget alone
    result = train(corpus, s, tmp_path / "fitted", progress=False)
    assert (
        train(
            corpus,
            resolve(SMOKE, {"fit_to_machine": True, "max_time": 2.0, "max_steps": 3}),
            tmp_path / "steps",
            progress=False,
        ).step
        == 3
    )  # a step budget: the settings as they stand, no fit
    assert tomllib.loads((tmp_path / "steps" / "config.toml").read_text())["hidden_size"] == 32
    written = tomllib.loads((tmp_path / "fitted" / "config.toml").read_text())
    assert (written["hidden_size"], written["layers"]) == (24, 2)  # "small": the lower curve
    assert written["lr"] == 0.01  # the config's own learning rate wins over the candidate's
    assert written["fit_to_machine"] is False  # so the config re-runs exactly this size
    state = torch.load(tmp_path / "fitted" / "last.pt", weights_only=True)
    assert state["model_config"]["hidden_size"] == 24 and result.step > 0
    flags = resolve(SMOKE, {"fit_to_machine": True, "hidden_size": 20})
    assert flags.fit_to_machine is False and flags.hidden_size == 20  # --hidden-size switches fitting off
    assert resolve(SMOKE, {"fit_to_machine": True, "layers": 2}).fit_to_machine is False


def test_the_shipped_table_has_fitted_curves_for_its_candidates():
    alpha, candidates = fitting.load_table()
    assert 0.1 <= alpha <= 1.5 and len(candidates) >= 2
    for c in candidates:
        assert c.b > 0 and 1.0 < c.a < 2.0, c  # the loss falls with characters seen, towards a plausible floor
        resolve(None, c.settings)  # and the recipe is valid


def test_repeated_passes_are_worth_less_than_new_text():
    assert worth(5e5, 1e6) == 5e5 and worth(3e6, 1e6) < 3e6
    assert worth(1e9, 1e5) <= 1e5 * (1 + fitting.REPEAT_HALF_VALUE)  # a small text saturates
    assert worth(2e6, 1e5) < worth(4e6, 1e5)  # though each pass still adds a little
    u = fitting.CURVE_TEXT_CHARS
    assert curve_chars(4e6, u) == pytest.approx(4e6)  # the curves' own text: no change
    assert curve_chars(6e6, 120_000) < 2.5e6  # 50 passes over a small text: worth a few passes of the curves' text
    assert curve_chars(6e6, 12e6) > 6e6  # half a pass over a large text: all new, worth more than repeats


def test_a_small_text_chooses_a_smaller_model_than_a_large_one_at_the_same_speeds():
    small = Candidate("small", {"hidden_size": 16, "layers": 1}, a=1.50, b=0.10)
    big = Candidate("big", {"hidden_size": 32, "layers": 2}, a=1.30, b=0.40)
    rates = [40e3, 20e3]
    assert choose([small, big], rates, 600, 0.5, unique=20e6)[0][1] is big
    assert choose([small, big], rates, 600, 0.5, unique=50e3)[0][1] is small


def test_the_recipe_follows_the_passes_and_the_alphabet():
    assert [dropout_for(p) for p in (0.5, 3, 5, 8, 20)] == [(0.0, 0.0), (0.0, 0.0), (0.1, 0.0), (0.2, 0.0), (0.3, 0.1)]
    assert [embed_size_for(v) for v in (65, 225, 6172, 60_000)] == [64, 64, 160, 256]


def test_a_fit_on_the_built_in_settings_fits_the_text_and_keeps_what_the_user_set(tmp_path):
    table = _table(tmp_path)
    s = resolve(None, {"max_time": 60.0, "batch_size": 4, "seq_len": 8, "device": "cpu"})
    train_ids = torch.randint(0, 3000, (4000,))
    chosen, line = fitting.fit_to_machine(s, 3000, train_ids, torch.device("cpu"), None, table)
    assert (chosen.hidden_size, chosen.layers, chosen.embed_size) == (24, 2, 96)  # 2·√3000 ≈ 110 → 96
    assert chosen.fit_to_machine is False and chosen.min_lr == DEFAULTS["min_lr"]
    # 60 s afford thousands of passes over 4,000 characters: the run makes MAX_PASSES of them and ends sooner,
    # at a gentler learning rate than the candidate's, with the most dropout and weight drop
    assert chosen.max_time < 60 and chosen.lr == fitting.GENTLE_LR < 0.02
    assert (chosen.dropout, chosen.weight_drop) == (0.3, 0.1)
    assert f"past {fitting.MAX_PASSES}" in line
    assert "passes over the text" in line and "predicted" not in line and "3,000 distinct" in line
    given = resolve(None, {"max_time": 60.0, "batch_size": 4, "seq_len": 8, "dropout": 0.05, "lr": 0.001})
    kept, _ = fitting.fit_to_machine(given, 3000, train_ids, torch.device("cpu"), None, table)
    assert (kept.dropout, kept.lr, kept.weight_drop) == (0.05, 0.001, 0.1)


def test_a_setting_given_keeps_its_value_even_when_it_equals_the_default(tmp_path, monkeypatch):
    table = _table(tmp_path)
    monkeypatch.setattr(settings_module, "FIT_CANDIDATES_FILE", table)
    train_ids = torch.randint(0, 3000, (4000,))  # thousands of passes: the fit would pick dropout 0.3, embed 96
    flags = {"max_time": 60.0, "batch_size": 4, "seq_len": 8, "dropout": 0.0, "weight_drop": 0.0, "embed_size": 64}
    s = resolve(None, flags)
    kept, _ = fitting.fit_to_machine(s, 3000, train_ids, torch.device("cpu"), None, table, given=set(flags))
    assert (kept.dropout, kept.weight_drop, kept.embed_size) == (0.0, 0.0, 64)
    assert kept.hidden_size == 24  # the size is still the fit's
    # a config that names its candidates takes their recipes, but not over a setting given on top of it
    s = resolve(None, {"max_time": 60.0, "batch_size": 4, "seq_len": 8, "lr": 0.001, "fit_candidates": "small"})
    named, _ = fitting.fit_to_machine(s, 3000, train_ids, torch.device("cpu"), None, table)
    assert named.lr == 0.02
    given, _ = fitting.fit_to_machine(s, 3000, train_ids, torch.device("cpu"), None, table, given={"lr"})
    assert given.lr == 0.001 and given.hidden_size == 24


def test_a_large_text_trains_the_whole_budget_without_dropout(tmp_path):
    s = resolve(None, {"max_time": 2.0, "batch_size": 4, "seq_len": 8, "device": "cpu"})
    train_ids = torch.randint(0, 65, (2_000_000,))  # far more than a 2-second run sees: under one pass
    chosen, line = fitting.fit_to_machine(s, 65, train_ids, torch.device("cpu"), None, _table(tmp_path))
    assert chosen.max_time == 2.0 and (chosen.dropout, chosen.weight_drop) == (0.0, 0.0)
    assert chosen.embed_size == 64 and chosen.lr == 0.02 and "ends sooner" not in line


def test_a_large_alphabet_takes_the_gentler_learning_rate(tmp_path):
    s = resolve(None, {"max_time": 2.0, "batch_size": 4, "seq_len": 8, "device": "cpu"})
    train_ids = torch.randint(0, 2000, (2_000_000,))
    chosen, _ = fitting.fit_to_machine(s, 2000, train_ids, torch.device("cpu"), None, _table(tmp_path))
    assert chosen.max_time == 2.0 and chosen.lr == fitting.GENTLE_LR and chosen.embed_size == 96


def test_the_command_and_the_api_name_the_settings_the_user_gave(corpus, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import gru_lm
    from gru_lm.cli.main import app
    from gru_lm.training import train as training

    seen = []

    def fake_train(*args, given=(), **kwargs):
        seen.append(set(given))
        raise gru_lm.UserError("stop here")

    monkeypatch.setattr(training, "train", fake_train)
    out = tmp_path / "run"
    CliRunner().invoke(app, ["train", str(corpus), "-c", str(SMOKE), "--dropout", "0", "--out", str(out)])
    with pytest.raises(gru_lm.UserError):
        gru_lm.train(corpus, config=SMOKE, out=out, dropout=0.0, lr=None)
    assert seen == [{"dropout"}, {"dropout"}]  # a flag at its default counts; a keyword of None does not
