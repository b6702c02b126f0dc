"""The command line end to end (subprocesses, as a user runs it): smoke runs, bad input, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import ROOT

SMOKE = str(ROOT / "configs" / "smoke.toml")


def gru_lm(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gru_lm", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def assert_user_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gru-lm: error:"), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


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


def _files(t: Path) -> None:
    (t / "empty.txt").write_text("")
    (t / "short.txt").write_text("To be, or not to be")
    (t / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (t / "latin1.txt").write_bytes("caf\xe9 au lait, " .encode("latin-1") * 50)
    (t / "bad.toml").write_text("hidden_sise = 3\n")
    (t / "badtype.toml").write_text('layers = "two"\n')


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "{t}/missing.txt"], ["missing.txt", "no such file"]),
        (["train", "{t}"], ["directory"]),
        (["train", "{t}/empty.txt"], ["empty.txt", "empty"]),
        (["train", "{t}/short.txt", "--config", SMOKE], ["short.txt", "fewer than"]),
        (["train", "{t}/image.png"], ["image.png", "binary"]),
        (["train", "{t}/latin1.txt"], ["latin1.txt", "not UTF-8"]),
        (["train", "{corpus}", "--config", "{t}/bad.toml"], ["bad.toml", "unknown setting 'hidden_sise'"]),
        (["train", "{corpus}", "--config", "{t}/badtype.toml"], ["badtype.toml", "layers"]),
        (["train", "{corpus}", "--dropout", "2"], ["dropout"]),
        (["train", "{corpus}", "--cell", "lstmx"], ["cell"]),
        (["train", "{corpus}", "--out", "{t}/fresh", "--resume"], ["no checkpoint to resume"]),
        (["train", "{corpus}", "--hidden-size", "abc"], ["hidden-size"]),
        (["sample", "{run}/best.pt", "--prime", "snow☃"], ["never seen"]),
        (["sample", "{run}/best.pt", "--temperature", "-1"], ["temperature"]),
        (["sample", "{run}/best.pt", "--top-k", "0"], ["top-k"]),
        (["sample", "{run}/best.pt", "--top-p", "1.5"], ["top-p"]),
        (["sample", "{run}/best.pt", "--length", "-5"], ["length"]),
        (["sample", "{t}/missing.pt"], ["missing.pt", "no such checkpoint"]),
        (["sample", "{t}/short.txt"], ["short.txt", "not a readable checkpoint"]),
        (["perplexity", "{run}/best.pt", "--file", "{t}/image.png"], ["image.png", "binary"]),
        (["perplexity", "{t}/empty.txt"], ["empty.txt"]),
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(args, words, corpus, run_copy, tmp_path):
    t = tmp_path / "files"
    t.mkdir()
    _files(t)
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.suffix == ".pt"}
    fill = dict(t=t, corpus=corpus, run=run_copy)
    r = gru_lm(*[a.format(**fill) for a in args], cwd=tmp_path)
    assert_user_error(r, *[w.format(**fill) for w in words])
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.suffix == ".pt"} == before
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no partial run folder
    assert not (t / "fresh").exists()


def test_corrupt_checkpoints_are_reported(run_copy, tmp_path):
    data = (run_copy / "last.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[:1000])
    assert_user_error(gru_lm("sample", tmp_path / "trunc.pt"), "trunc.pt", "corrupt or truncated")
    state = torch.load(run_copy / "last.pt", weights_only=True)
    state["version"] = 7
    torch.save(state, tmp_path / "v7.pt")
    assert_user_error(gru_lm("perplexity", tmp_path / "v7.pt"), "version 7")


def test_training_into_a_finished_run_leaves_it_untouched(corpus, run_copy):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    assert_user_error(gru_lm("train", corpus, "--config", SMOKE, "--out", run_copy), "already holds a run")
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before


def test_resume_cannot_change_the_model(corpus, run_copy):
    assert_user_error(gru_lm("train", corpus, "--config", SMOKE, "--out", run_copy, "--resume", "--hidden-size", 64),
                      "hidden_size")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(corpus, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert_user_error(gru_lm("train", corpus, "--config", SMOKE, "--out", ro / "run"), "cannot create")


def test_ctrl_c_saves_last_pt_and_exits_130(corpus, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "gru_lm", "train", str(corpus), "--config", SMOKE, "--out", str(out),
                          "--max-steps", "0", "--max-time", "0", "--eval-every", "100000", "-q"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 200:
        assert time.time() < deadline and p.poll() is None, p.stderr.read() if p.poll() is not None else "timeout"
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] >= 1
    r = gru_lm("train", corpus, "--config", SMOKE, "--out", out, "--resume", "--max-steps", state["step"] + 3, "-q")
    assert r.returncode == 0, r.stderr
    assert torch.load(out / "last.pt", weights_only=True)["step"] == state["step"] + 3
