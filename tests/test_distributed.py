"""Data-parallel training with 2 processes on CPU (gloo), launched through `gru-lm train --nproc 2` (torchrun)."""

from __future__ import annotations

import json

import pytest
import torch

from gru_lm.errors import UserError
from gru_lm.machine.distributed import Dist, streams
from gru_lm.text.batches import StreamBatcher

from .conftest import ROOT, assert_user_error, gru_lm

TINY = [
    "--config",
    str(ROOT / "configs" / "smoke.toml"),
    "--batch-size",
    "8",
    "--seq-len",
    "16",
    "--hidden-size",
    "32",
    "--eval-every",
    "10",
    "-q",
]


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> list[str]:
    """Smoke settings with a constant learning rate: a run cut in two follows the schedule of one run."""
    cfg = tmp_path_factory.mktemp("cfg") / "flat.toml"
    text = (ROOT / "configs" / "smoke.toml").read_text()
    cfg.write_text(text.replace("warmup_steps = 5", "warmup_steps = 0") + "min_lr = 0.01\ndropout = 0.1\n")
    return ["--config", str(cfg), "--batch-size", "8", "--seq-len", "16", "--eval-every", "10", "-q"]


def rows(run) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_each_process_takes_a_disjoint_share_of_the_streams(world):
    B = 12
    shares = [streams(B, Dist(r, world)) for r in range(world)]
    owned = [b for sl in shares for b in range(B)[sl]]
    assert sorted(owned) == list(range(B))  # every stream once: disjoint, and none left out
    batcher = StreamBatcher(torch.arange(5000), B, 16, seed=3)
    for epoch, k in ((0, 0), (1, 5)):
        x, _ = batcher.get(epoch, k)
        parts = [x[:, sl] for sl in shares]
        assert torch.equal(torch.cat(parts, dim=1), x)
        # each process's windows follow on from its own previous window: TBPTT stays contiguous per stream
        nxt, _ = batcher.get(epoch, k + 1)
        for sl in shares:
            assert torch.equal(nxt[0, sl], x[-1, sl] + 1)


def test_uneven_split_is_a_user_error():
    with pytest.raises(UserError, match="multiple of 3"):
        streams(8, Dist(0, 3))


@pytest.fixture(scope="module")
def pair(corpus, flat, tmp_path_factory):
    """A 2-process run of 40 steps, and the same run cut at step 20 and resumed with 2 processes."""
    d = tmp_path_factory.mktemp("ddp")
    whole, cut = d / "whole", d / "cut"
    args = [corpus, *flat, "--nproc", "2"]
    r = gru_lm("train", *args, "--max-steps", "40", "--out", whole, timeout=300)
    assert r.returncode == 0, r.stderr
    r = gru_lm("train", *args, "--max-steps", "20", "--out", cut, timeout=300)
    assert r.returncode == 0, r.stderr
    r2 = gru_lm("train", *args, "--max-steps", "40", "--out", cut, "--resume", timeout=300)
    assert r2.returncode == 0, r2.stderr
    return whole, cut, r.stderr


@pytest.mark.slow
def test_two_processes_train_and_only_rank0_writes(pair):
    whole, _, stderr = pair
    log = rows(whole)
    assert [r["step"] for r in log] == sorted({r["step"] for r in log})  # one line per step: rank 0 alone logs
    assert log[-1]["step"] == 40 and log[-1]["chars"] == 40 * 8 * 16  # chars count all processes' streams
    assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.1  # the loss falls
    assert stderr.count("done:") == 1
    state = torch.load(whole / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2
    assert state["hidden"].shape == (1, 8, 32)  # both processes' streams, gathered
    assert not torch.equal(state["rank_rng"][0]["cpu"], state["rank_rng"][1]["cpu"])  # own dropout masks


def test_a_two_process_checkpoint_resumes_exactly(pair):
    whole, cut, _ = pair
    a, b = rows(whole), rows(cut)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-6, abs=1e-7), x["step"]
        if "val_loss" in x:
            assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-6, abs=1e-7), x["step"]


@pytest.mark.slow
def test_resume_needs_the_same_number_of_processes(pair, corpus, flat):
    _, cut, _ = pair
    r = gru_lm("train", corpus, *flat, "--max-steps", "50", "--out", cut, "--resume")
    assert_user_error(r, "2 processes", "same number")


@pytest.mark.slow
def test_two_processes_average_to_the_one_process_gradient(corpus, tmp_path):
    """Without dropout, 2 processes of B/2 streams each take the steps 1 process takes with B."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert gru_lm("train", corpus, *TINY, "--max-steps", "20", "--out", one).returncode == 0
    r = gru_lm("train", corpus, *TINY, "--max-steps", "20", "--out", two, "--nproc", "2", timeout=300)
    assert r.returncode == 0, r.stderr
    for x, y in zip(rows(one), rows(two), strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4), x["step"]


@pytest.mark.slow
def test_nproc_mistakes_are_one_line(corpus, tmp_path, pair):
    r = gru_lm("train", corpus, *TINY, "--batch-size", "7", "--max-steps", "2", "--out", tmp_path / "r", "--nproc", "2")
    assert_user_error(r, "multiple of 2")
    assert not (tmp_path / "r").exists()
    _, cut, _ = pair
    assert_user_error(gru_lm("train", corpus, *TINY, "--out", cut, "--resume", "--nproc", "4"), "2 processes")
    # a mistake only the processes find (here: a text too short for the batch) is one line too
    short = tmp_path / "short.txt"
    short.write_text("abc" * 30)
    assert_user_error(
        gru_lm("train", short, *TINY, "--out", tmp_path / "s", "--nproc", "2", timeout=300), "training characters"
    )


def test_a_process_that_joined_a_group_exits_without_the_teardown(monkeypatch):
    """torch 2.13's gloo can abort a process at interpreter exit after destroy_process_group (rates in
    docs/scaling.md): a process that joined a group ends with os._exit once its work is done."""
    import gru_lm.machine.distributed as dmod
    import gru_lm.machine.process as process

    exits: list[int] = []
    monkeypatch.setattr(process.os, "_exit", exits.append)
    dmod.end_joined_process(3)
    assert exits == []  # never joined a group: it returns, and the process exits the usual way
    monkeypatch.setattr(dmod, "_joined", True)
    dmod.end_joined_process(3)
    assert exits == [3]


def test_the_launcher_checks_nproc_and_the_split_before_starting_anything(tmp_path):
    from gru_lm.errors import UserError
    from gru_lm.machine import launcher

    with pytest.raises(UserError, match="at least 1"):
        launcher.check_nproc(0)
    launcher.check_nproc(2)
    with pytest.raises(UserError, match="multiple of 2"):
        launcher.check_job(2, tmp_path / "text.txt", 7)
    with pytest.raises(UserError, match="no such file"):
        launcher.check_job(2, tmp_path / "text.txt", 8)
    args = ["train", "f.txt", "--nproc", "2", "--out", "r", "--nproc=3", "-q"]
    assert launcher.without_nproc(args) == ["train", "f.txt", "--out", "r", "-q"]
