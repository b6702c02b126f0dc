"""The Python API (gru_lm.train, gru_lm.load, Model.sample, Model.perplexity): the commands' results from Python."""

from __future__ import annotations

import json
import math

import pytest

import gru_lm

from .conftest import SMOKE
from .conftest import gru_lm as cli
from .test_layers import _loaded_after


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    return gru_lm.train(corpus, config=SMOKE, out=out, progress=False, max_steps=12, hidden_size=24)


def test_train_returns_the_finished_run_with_its_settings(run):
    assert run.folder.joinpath("best.pt").is_file() and run.steps == 12 and not run.interrupted
    assert math.isfinite(run.best_loss) and run.best_loss <= run.val_loss + 1e-9
    assert run.model.net.cfg.hidden_size == 24  # the keyword beats the config, as a flag does
    assert "best validation loss" in repr(run)


def test_a_sample_is_what_the_command_prints_for_the_same_seed(run):
    text = run.model.sample(prime="ROMEO:", length=40, seed=1)
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40
    assert text == run.model.sample(prime="ROMEO:", length=40, seed=1)
    printed = cli("sample", run.folder / "best.pt", "--prime", "ROMEO:", "--length", 40, "--seed", 1)
    assert printed.returncode == 0 and printed.stdout == text + "\n"
    assert gru_lm.load(run.folder / "best.pt").sample(prime="ROMEO:", length=40, seed=1) == text


def test_perplexity_of_a_text_is_what_the_command_measures_on_that_file(run, tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    path = tmp_path / "t.txt"
    path.write_text(text)
    got = run.model.perplexity(text)
    row = json.loads(cli("perplexity", run.folder / "best.pt", "--file", path, "--json").stdout)[0]
    assert got.chars == row["chars"] and got.loss == pytest.approx(row["loss"], rel=1e-6)
    assert got.perplexity == pytest.approx(math.exp(got.loss)) and got.bits_per_char == pytest.approx(row["bpc"])


def test_mistakes_raise_the_commands_user_error(run, corpus, tmp_path):
    with pytest.raises(gru_lm.UserError, match="temperature"):
        run.model.sample(temperature=-1)
    with pytest.raises(gru_lm.UserError, match="unknown setting 'hiden_size'"):
        gru_lm.train(corpus, out=tmp_path / "x", hiden_size=8)
    with pytest.raises(gru_lm.UserError, match="hidden_size"):
        gru_lm.train(corpus, config=SMOKE, out=tmp_path / "y", hidden_size=-3, progress=False)
    with pytest.raises(gru_lm.UserError):
        gru_lm.load(tmp_path / "missing.pt")


def test_importing_gru_lm_loads_neither_torch_nor_the_training_loop():
    loaded = _loaded_after("import gru_lm")
    assert "torch" not in loaded and not {m for m in loaded if m.startswith("gru_lm.training")}
    assert _loaded_after("from gru_lm import GRU, LSTMCell") >= {"gru_lm.model.cells", "torch"}
    with pytest.raises(AttributeError):
        _ = gru_lm.no_such_name
