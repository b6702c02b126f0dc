"""Checkpoints of earlier format versions load through checkpoint_migration, and resume and score as before.

tests/data/checkpoint_v1 is a run folder written by the last gru-lm of format version 1 (a GRU of 32 units with
weight averaging, trained 20 steps with configs/smoke.toml on the first 20,000 bytes of data/timemachine.txt).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from gru_lm.analysis.evaluate import nll
from gru_lm.model import checkpoint, checkpoint_migration
from gru_lm.text.vocab import Vocab
from gru_lm.training import resume
from gru_lm.training.train import train

from .conftest import ROOT

V1 = ROOT / "tests" / "data" / "checkpoint_v1"


def _v1_text(tmp_path):
    """The run's training text again, where the test can write it (the checkpoint records its SHA-256)."""
    path = tmp_path / "tm20k.txt"
    path.write_bytes((ROOT / "data" / "timemachine.txt").read_bytes()[:20_000])
    return path


def test_a_version_1_checkpoint_loads_as_the_current_version():
    raw = torch.load(V1 / "last.pt", weights_only=True)
    assert raw["version"] == 1
    state = checkpoint.load(V1 / "last.pt")
    assert state["version"] == checkpoint.VERSION == checkpoint_migration.CURRENT
    for key in ("model", "train_model", "optimizer", "hidden", "vocab", "step", "data"):  # nothing else is touched
        assert type(state[key]) is type(raw[key])
    assert state["step"] == 20 and state["machine"] == raw["machine"]
    assert state["settings"] == {**raw["settings"], "val_blocks": 1}  # every earlier run kept its text's last part


def test_the_migration_fills_each_key_version_1_grew_with_what_its_writers_did():
    raw = torch.load(V1 / "last.pt", weights_only=True)
    for key in ("loss_sum", "loss_n", "stale_evals", "machine"):
        del raw[key]
    for key in ("eval_chars", "init_from", "extend_vocab"):
        del raw["settings"][key]
    for key in ("reset_after", "weight_drop"):
        del raw["model_config"][key]
    state = checkpoint_migration.upgrade(raw)
    assert state["settings"]["eval_chars"] == 0  # those runs validated on the whole split
    assert (state["settings"]["init_from"], state["settings"]["extend_vocab"]) == ("", False)
    assert (state["loss_sum"], state["loss_n"], state["stale_evals"]) == (0.0, 0, 0)
    assert (state["model_config"]["reset_after"], state["model_config"]["weight_drop"]) == (False, 0.0)
    assert state["machine"].startswith("not recorded")
    bare = checkpoint_migration.upgrade({"version": 1, "model_config": {"vocab_size": 3}, "vocab": "abc", "model": {}})
    assert "settings" not in bare and "machine" not in bare  # a bare model gains no training state


def test_a_version_1_model_scores_as_it_did_and_its_run_resumes(tmp_path):
    state = checkpoint.load(V1 / "best.pt")
    model = checkpoint.build_model(state)
    text = _v1_text(tmp_path).read_text(encoding="utf-8")
    val = Vocab(state["vocab"]).encode(text[state["data"]["val_start"] :], drop_unknown=True)[0]
    total, n = nll(model, val, num_streams=state["settings"]["eval_streams"])
    assert total / n == pytest.approx(state["best_val_loss"], abs=1e-4)  # the loss it recorded when saved
    run = tmp_path / "run"
    shutil.copytree(V1, run)
    point = resume.load(run)
    result = train(
        _v1_text(tmp_path),
        resume.resume_settings(point, None, {"max_steps": 24}),
        run,
        resume=True,
        progress=False,
        resume_point=point,
    )
    assert result.step == 24
    assert checkpoint.load(run / "last.pt")["version"] == checkpoint.VERSION
    assert torch.load(run / "last.pt", weights_only=True)["version"] == checkpoint.VERSION  # the current format
