"""Training: settings precedence, outputs, learning, exact resume, locking."""

from __future__ import annotations

import errno
import itertools
import json
import math
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

from gru_lm.analysis.evaluate import nll
from gru_lm.errors import UserError
from gru_lm.model import checkpoint
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.text.corpus import load_corpus
from gru_lm.training.resume import check_resumable
from gru_lm.training.run_folder import run_lock
from gru_lm.training.schedule import learning_rate
from gru_lm.training.settings import Settings, resolve
from gru_lm.training.train import train
from gru_lm.training.weight_average import WeightAverage

from .conftest import ROOT


def _losses(run_dir):
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in rows]


def test_settings_precedence(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('hidden_size = 48\nlr = 0.02\ncell = "rnn"\n')
    s = resolve(cfg, {"lr": 0.5, "layers": None})
    assert (s.hidden_size, s.lr, s.cell, s.layers) == (48, 0.5, "rnn", Settings().layers)


@pytest.mark.parametrize(
    "text, words",
    [
        ("hidden_sise = 3\n", "unknown setting"),
        ('hidden_size = "big"\n', "must be a int"),
        ("dropout = 1.5\n", "dropout"),
        ("hidden_size = \n", "not valid TOML"),
    ],
)
def test_bad_config_files(tmp_path, text, words):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(UserError, match=words):
        resolve(cfg, {})


def test_shipped_configs_are_valid():
    names = sorted(p.name for p in (ROOT / "configs").glob("*.toml"))
    assert {"smoke.toml", "shakespeare_gru.toml", "shakespeare_rnn.toml", "timemachine_gru.toml"} <= set(names)
    for p in (ROOT / "configs").glob("*.toml"):
        resolve(p, {})
    # the default of the README is the 5-minute config, and each RNN baseline shares its GRU's budget
    configs = {p.stem: resolve(p, {}) for p in (ROOT / "configs").glob("*.toml")}
    assert configs["shakespeare_gru"] == configs["shakespeare_5min"]
    for gru, rnn in (
        ("shakespeare_5min", "shakespeare_rnn_5min"),
        ("shakespeare_100s", "shakespeare_rnn_100s"),
        ("shakespeare_30min", "shakespeare_rnn_30min"),
        ("shakespeare_gru", "shakespeare_rnn"),
    ):
        g, r = configs[gru], configs[rnn]
        assert (g.cell, r.cell, g.max_time, g.layers, g.dropout) == ("gru", "rnn", r.max_time, r.layers, r.dropout)
    lstm = configs["shakespeare_lstm_5min"]  # the third cell of the 5-minute comparison, on the same budget
    assert (lstm.cell, lstm.max_time, lstm.val_fraction) == ("lstm", configs["shakespeare_5min"].max_time, 0.1)


def test_learning_rate_warms_up_then_decays():
    s = Settings(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=100, max_time=0)
    lrs = [learning_rate(s, i, 0.0) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0, rel=0.03)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)
    t = Settings(lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=0, max_time=100.0)
    assert learning_rate(t, 5, 50.0) == pytest.approx(0.5)  # half the time budget: half-way down the cosine


def test_training_writes_outputs_and_learns(trained_run):
    for name in ("last.pt", "best.pt", "metrics.jsonl", "config.toml"):
        assert (trained_run / name).is_file()
    rows = [json.loads(ln) for ln in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "chars", "elapsed_s", "lr", "train_loss"} <= rows[0].keys()
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 2 and vals[-1] < math.log(65)  # better than a uniform guess over the characters
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5
    written = tomllib.loads((trained_run / "config.toml").read_text())
    assert written["max_steps"] == 60 and written["hidden_size"] == 32
    state = torch.load(trained_run / "last.pt", weights_only=True)
    assert state["step"] == 60 and state["hidden"].shape == (1, 4, 32)


@pytest.mark.parametrize("ema_decay, cell", [(0.0, "gru"), (0.9, "gru"), (0.0, "lstm")])
def test_exact_resume_matches_an_uninterrupted_run(corpus, smoke, tmp_path, ema_decay, cell):
    s = smoke(max_steps=40, eval_every=15, dropout=0.2, layers=2, ema_decay=ema_decay, cell=cell)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(corpus, s, straight, progress=False)
    first = train(corpus, s, split, progress=False, should_stop=lambda step: step == 22)
    assert first.interrupted and first.step == 22
    train(corpus, s, split, resume=True, progress=False)
    assert _losses(split) == _losses(straight)  # every step's train loss and every val loss, bit for bit
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (straight, split))
    assert ("train_model" in a) == ("train_model" in b) == bool(ema_decay)  # the optimiser's weights beside the average
    for key in ("model", "train_model") if ema_decay else ("model",):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name])


def test_weight_average_follows_the_weights_with_a_warm_up():
    model = torch.nn.Linear(2, 1)
    avg = WeightAverage(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.fill_(1.0)
    avg.update(step=0)  # the first decay is 1/10: the average moves most of the way
    assert torch.allclose(avg.model.weight, 0.1 * start + 0.9)
    before = avg.model.weight.detach().clone()
    avg.update(step=10_000)  # later the decay is 0.9
    assert torch.allclose(avg.model.weight, 0.9 * before + 0.1)
    assert not avg.model.weight.requires_grad and avg.model.weight.data_ptr() != model.weight.data_ptr()


def test_averaged_weights_are_what_is_evaluated_and_saved(corpus, smoke, tmp_path):
    s = smoke(max_steps=30, eval_every=15, ema_decay=0.95)
    result = train(corpus, s, tmp_path / "r", progress=False)
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    val = load_corpus(corpus, s).val_ids
    losses = {}
    for key in ("model", "train_model"):
        model = CharModel(ModelConfig(**state["model_config"]))
        model.load_state_dict(state[key])
        total, n = nll(model, val, s.eval_streams)
        losses[key] = total / n
    assert losses["model"] == pytest.approx(result.val_loss, abs=1e-6)  # the logged loss is the average's
    assert abs(losses["train_model"] - losses["model"]) > 1e-4  # and the two sets of weights differ
    best = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    assert "train_model" not in best and best["model"].keys() == state["model"].keys()  # best.pt: the average only
    with pytest.raises(UserError, match="train_model"):  # so it cannot stand in for last.pt
        check_resumable(best, tmp_path / "r" / "best.pt")
    with pytest.raises(UserError, match="ema_decay"):
        resolve(None, {"ema_decay": 1.0})


def test_resume_continues_to_a_larger_max_steps(corpus, smoke, tmp_path):
    out = tmp_path / "r"
    train(corpus, smoke(max_steps=10), out, progress=False)
    result = train(corpus, smoke(max_steps=25), out, resume=True, progress=False)
    assert result.step == 25
    assert [r[0] for r in _losses(out)] == list(range(1, 26))


def test_seed_makes_runs_reproducible(corpus, smoke, tmp_path):
    train(corpus, smoke(max_steps=8), tmp_path / "a", progress=False)
    train(corpus, smoke(max_steps=8), tmp_path / "b", progress=False)
    train(corpus, smoke(max_steps=8, seed=2), tmp_path / "c", progress=False)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b") != _losses(tmp_path / "c")


def test_lstm_trains_and_carries_h_and_c(corpus, smoke, tmp_path):
    result = train(corpus, smoke(cell="lstm", max_steps=30), tmp_path / "lstm", progress=False)
    state = checkpoint.load(tmp_path / "lstm" / "last.pt")
    assert state["model_config"]["cell"] == "lstm" and state["model"]["rnn.weight_hh_l0"].shape == (4 * 32, 32)
    assert state["hidden"].shape == (1, 4, 2 * 32)  # the carried (h, c) of every stream, side by side
    h, c = state["hidden"].chunk(2, dim=-1)
    assert h.abs().max() < 1 and (c - h).abs().max() > 1e-3  # really two states: h = o ⊙ tanh(c)
    assert result.val_loss < math.log(65)


def test_rnn_baseline_trains(corpus, smoke, tmp_path):
    train(corpus, smoke(cell="rnn", max_steps=30), tmp_path / "rnn", progress=False)
    state = checkpoint.load(tmp_path / "rnn" / "best.pt")
    assert state["model_config"]["cell"] == "rnn" and "model.rnn.weight_hh_l0" not in state["model"]
    assert state["model"]["rnn.weight_hh_l0"].shape == (32, 32)


def test_refuses_to_overwrite_or_share_a_run(corpus, smoke, trained_run, tmp_path):
    before = (trained_run / "last.pt").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train(corpus, smoke(), trained_run, progress=False)
    with pytest.raises(UserError, match="no checkpoint to resume"):
        train(corpus, smoke(), tmp_path / "empty", resume=True, progress=False)
    with run_lock(trained_run):
        with pytest.raises(UserError, match="another training"), run_lock(trained_run):
            pass
        # the lock is checked first: whatever the flags, a live training is what the second one hears about
        for resume, overwrite in ((False, False), (True, False), (False, True)):
            with pytest.raises(UserError, match="another training is writing to this folder"):
                train(corpus, smoke(), trained_run, resume=resume, overwrite=overwrite, progress=False)
    assert (trained_run / "last.pt").read_bytes() == before


def test_nan_loss_stops_without_a_poisoned_checkpoint(corpus, smoke, tmp_path):
    out = tmp_path / "nan"
    train(corpus, smoke(max_steps=10), out, progress=False)
    before = (out / "last.pt").read_bytes()
    state = checkpoint.load(out / "last.pt")
    state["model"]["head.bias"][0] = float("nan")
    checkpoint.save(out / "last.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    poisoned = (out / "last.pt").read_bytes()
    with pytest.raises(UserError, match="loss became nan at step 11"):
        train(corpus, smoke(max_steps=20), out, resume=True, progress=False)
    assert (out / "last.pt").read_bytes() == poisoned != before


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the 60-step run (smoke settings, max_steps 60, eval_every 30) to continue."""
    shutil.copytree(trained_run, tmp_path / "run")
    return tmp_path / "run"


class _NaNGradient(CharModel):
    """A model whose read-out bias gets a NaN gradient at every step (while the loss stays finite)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.head.bias.register_hook(lambda g: torch.full_like(g, float("nan")))


@pytest.mark.parametrize(
    "poison, message",
    [
        ("inf loss", "the loss became inf at step 61"),
        ("nan gradient", "the gradient norm became nan at step 61"),
        ("nan validation loss", "the validation loss became nan at step 70"),
    ],
)
def test_non_finite_values_never_reach_a_checkpoint(poison, message, corpus, smoke, run_copy, monkeypatch):
    s = smoke(max_steps=70, eval_every=30)
    if poison == "inf loss":  # the model gives the space character no chance at all: its loss is infinite
        state = checkpoint.load(run_copy / "last.pt")
        state["model"]["head.bias"][state["vocab"].index(" ")] = float("-inf")
        checkpoint.save(run_copy / "last.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    elif poison == "nan gradient":
        monkeypatch.setattr("gru_lm.training.train.CharModel", _NaNGradient)
    else:
        monkeypatch.setattr("gru_lm.training.train.nll", lambda *a, **k: (math.nan, 10))
    before = {n: (run_copy / n).read_bytes() for n in ("last.pt", "best.pt")}
    with pytest.raises(UserError, match=f"{message}; stopped without saving it: .*last.pt still holds step 60"):
        train(corpus, s, run_copy, resume=True, progress=False)
    assert {n: (run_copy / n).read_bytes() for n in before} == before
    steps = [r[0] for r in _losses(run_copy)]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] < 70  # the poisoned step is not logged either


def test_a_fresh_run_that_diverges_says_no_checkpoint_was_written(corpus, smoke, tmp_path, monkeypatch):
    monkeypatch.setattr("gru_lm.training.train.CharModel", _NaNGradient)
    with pytest.raises(UserError, match="at step 1; stopped without saving it: no checkpoint had been written yet"):
        train(corpus, smoke(), tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_exact_resume_when_interrupted_between_log_lines(corpus, smoke, tmp_path):
    """With log_every > 1 the logged loss is a mean over steps; an interruption mid-way must not change it."""
    s = smoke(max_steps=14, eval_every=7, log_every=4)
    train(corpus, s, tmp_path / "straight", progress=False)
    train(corpus, s, tmp_path / "split", progress=False, should_stop=lambda step: step == 6)
    train(corpus, s, tmp_path / "split", resume=True, progress=False)
    assert _losses(tmp_path / "split") == _losses(tmp_path / "straight")


class _Killed(BaseException):
    """Stands for a SIGKILL at one exact point of the program."""


def test_a_crash_between_the_two_checkpoint_writes_keeps_them_consistent(corpus, smoke, tmp_path, monkeypatch):
    """best.pt is written before last.pt: killed in between, last.pt is one evaluation behind and never
    remembers a best validation loss that no best.pt holds; resuming redoes the evaluation."""
    s = smoke(max_steps=20, eval_every=5)
    train(corpus, s, tmp_path / "straight", progress=False)
    real_save, writes = checkpoint.save, []

    def save(path, state):
        if state["step"] == 10 and writes[-1][1] == 10:  # the second write of step 10's evaluation
            raise _Killed
        writes.append((Path(path).name, state["step"]))
        real_save(path, state)

    monkeypatch.setattr("gru_lm.training.train.checkpoint.save", save)
    with pytest.raises(_Killed):
        train(corpus, s, tmp_path / "split", progress=False)
    monkeypatch.undo()
    assert writes[-1] == ("best.pt", 10)  # step 10 improved on step 5
    best, last = (checkpoint.load(tmp_path / "split" / n) for n in ("best.pt", "last.pt"))
    assert last["step"] == 5 and best["val_loss"] <= last["best_val_loss"]
    train(corpus, s, tmp_path / "split", resume=True, progress=False)
    assert _losses(tmp_path / "split") == _losses(tmp_path / "straight")
    for name in ("best.pt", "last.pt"):
        a, b = (checkpoint.load(tmp_path / d / name) for d in ("straight", "split"))
        assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_cleans_up_after_a_crash(corpus, smoke, run_copy):
    """Temporary files of killed writes are removed; a torn last metrics line is dropped; others are kept."""
    stale = [".last.pt.k2j4_x.tmp", ".best.pt.abc.tmp", ".metrics.jsonl.q1.tmp", ".config.toml.z.tmp"]
    for name in stale:
        (run_copy / name).write_bytes(b"half a checkpoint")
    (run_copy / ".notes.tmp").write_text("not ours")
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 61, "chars": 39')  # a line cut short
    train(corpus, smoke(max_steps=62, eval_every=30), run_copy, resume=True, progress=False)
    names = {p.name for p in run_copy.iterdir()}
    assert not names & set(stale) and ".notes.tmp" in names
    assert [r[0] for r in _losses(run_copy)] == list(range(1, 63))
    assert checkpoint.load(run_copy / "last.pt")["step"] == 62


def test_a_failing_disk_during_training_is_a_user_error(corpus, smoke, run_copy, monkeypatch):
    before = (run_copy / "last.pt").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("gru_lm.model.checkpoint.os.fsync", full)
    with pytest.raises(UserError, match=r"could not write the run \(No space left on device\); .*last.pt keeps"):
        train(corpus, smoke(max_steps=62, eval_every=30), run_copy, resume=True, progress=False)
    monkeypatch.undo()
    assert (run_copy / "last.pt").read_bytes() == before
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp")]


def test_resume_needs_a_complete_checkpoint(corpus, smoke, run_copy):
    state = checkpoint.load(run_copy / "last.pt")
    del state["optimizer"]
    checkpoint.save(run_copy / "last.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    with pytest.raises(UserError, match=r"last.pt: cannot resume from this checkpoint: it holds no 'optimizer'"):
        train(corpus, smoke(max_steps=62), run_copy, resume=True, progress=False)


def test_patience_stops_after_evaluations_without_a_new_best(corpus, smoke, tmp_path, monkeypatch):
    import gru_lm.training.train as tr

    def flat(model, ids, streams, device=None, bounds=None):
        return 2.0 * (len(ids) - 1), len(ids) - 1

    monkeypatch.setattr(tr, "nll", flat)
    out = tmp_path / "early"
    result = train(corpus, smoke(max_steps=100, eval_every=5, patience=2), out, progress=False)
    assert result.step == 15 and not result.interrupted  # best at 5, no better at 10 and 15
    state = checkpoint.load(out / "last.pt")
    assert state["step"] == 15 and state["stale_evals"] == 2
    assert train(corpus, smoke(max_steps=100, eval_every=5, patience=3), out, resume=True, progress=False).step == 20


def test_written_config_is_usable_as_config(trained_run, corpus, smoke, tmp_path):
    s = resolve(trained_run / "config.toml", {})
    assert s == smoke(max_steps=60, eval_every=30)


def test_overwrite_removes_the_old_checkpoints_first(corpus, smoke, trained_run, tmp_path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(trained_run, out)
    train(
        corpus, smoke(max_steps=3, eval_every=100), out, overwrite=True, progress=False, should_stop=lambda step: False
    )
    assert checkpoint.load(out / "last.pt")["step"] == 3
    assert not (out / "best.pt").exists() or checkpoint.load(out / "best.pt")["step"] == 3


def test_validation_text_without_known_characters(corpus, smoke, tmp_path):
    val = tmp_path / "val.txt"
    val.write_text("☃☃☃☃", encoding="utf-8")
    with pytest.raises(UserError, match="fewer than 2 characters that occur in the training text"):
        train(corpus, smoke(val_file=str(val)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("units", [True, False])
def test_dtype_auto_takes_bfloat16_only_on_a_cpu_with_bfloat16_units(units, monkeypatch):
    from gru_lm.machine import device

    monkeypatch.setattr(device, "has_bfloat16_units", lambda: units)
    assert device.pick_autocast_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if units else None)
    assert device.pick_autocast_dtype("float32", torch.device("cpu")) is None
    assert device.pick_autocast_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(UserError, match="float32, bfloat16 or auto"):
        device.pick_autocast_dtype("half", torch.device("cpu"))


def test_bfloat16_training_learns_like_float32(corpus, smoke, tmp_path):
    """Mixed precision moves the losses by rounding only: the same seed gives nearly the same curve."""
    exact = train(corpus, smoke(max_steps=30), tmp_path / "f32", progress=False)
    mixed = train(corpus, smoke(max_steps=30, dtype="bfloat16"), tmp_path / "bfloat16", progress=False)
    assert mixed.val_loss != exact.val_loss
    assert abs(mixed.val_loss - exact.val_loss) < 0.02
    state = checkpoint.load(tmp_path / "bfloat16" / "last.pt")
    assert all(t.dtype == torch.float32 for t in state["model"].values())


def test_averaging_can_start_or_stop_on_resume(corpus, smoke, tmp_path):
    out = tmp_path / "r"
    train(corpus, smoke(max_steps=10), out, progress=False)
    train(corpus, smoke(max_steps=20, ema_decay=0.9), out, resume=True, progress=False)  # starts from the weights
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 20 and "train_model" in state
    assert any(not torch.equal(state["model"][k], state["train_model"][k]) for k in state["model"])
    train(corpus, smoke(max_steps=25), out, resume=True, progress=False)  # back to the optimiser's own weights
    after = torch.load(out / "last.pt", weights_only=True)
    assert after["step"] == 25 and "train_model" not in after
