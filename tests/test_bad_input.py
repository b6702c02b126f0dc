"""Bad input through the real command line (`gru_lm.cli.main.main()` in a fresh process per case, forked from a
warm interpreter: conftest.WarmCLI).

Every mistake a user can make with a file, a flag or a checkpoint must end the same way: exit code 2,
exactly one line on stderr (`gru-lm: error: ...`) naming the problem and the file, no traceback,
nothing on stdout, and nothing written or changed on disk: the whole sandbox (the inputs, a finished
run and the working folder where `runs/` would go) is compared byte for byte before and after.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
from pathlib import Path

import pytest
import torch

from gru_lm.analysis.evaluate import measure
from gru_lm.model import checkpoint

from .conftest import SMOKE, assert_user_error, gru_lm


class _Payload:
    """Unpickling this creates the marker file: proof that loading ran code from the file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def inputs(trained_run, tmp_path_factory) -> tuple[Path, Path]:
    """The bad files, made once: (folder of files, the marker path that hostile pickles would create)."""
    f = tmp_path_factory.mktemp("bad_inputs")
    marker = f.parent / (f.name + "_PWNED")
    (f / "empty.txt").write_text("")
    (f / "short.txt").write_text("To be, or not to be")
    (f / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (f / "random.bin").write_bytes(random.Random(6).randbytes(4096))
    (f / "latin1.txt").write_bytes("caf\xe9 au lait, ".encode("latin-1") * 50)
    (f / "utf16_bad.txt").write_bytes("To be, or not".encode("utf-16") + b"\x00\xd8")  # a lone high surrogate
    (f / "snowman.txt").write_text(
        "To be, or not to be: ☃ that is the thing.\n" * 20, encoding="utf-8"
    )  # ☃: new to the run
    (f / "bad.toml").write_text("hidden_sise = 3\n")
    (f / "badtype.toml").write_text('layers = "two"\n')

    good = (trained_run / "last.pt").read_bytes()
    state = torch.load(trained_run / "last.pt", weights_only=True)
    (f / "trunc.pt").write_bytes(good[: len(good) // 2])
    rot = bytearray(good)
    rot[len(rot) // 2 : len(rot) // 2 + 8] = bytes(b ^ 0xFF for b in rot[len(rot) // 2 : len(rot) // 2 + 8])
    (f / "bitrot.pt").write_bytes(bytes(rot))  # flipped bits inside a tensor: the zip still opens
    torch.save({**state, "version": 7}, f / "v7.pt")
    torch.save({"weights": torch.zeros(2)}, f / "foreign.pt")
    torch.save({**state, "model": {**state["model"], "head.weight": torch.zeros(3, 3)}}, f / "badmodel.pt")
    torch.save({**state, "model": _Payload(str(marker))}, f / "evil.pt")
    for name, ckpt in (("broken_run", "trunc.pt"), ("evil_run", "evil.pt")):  # runs whose last.pt is bad
        shutil.copytree(trained_run, f / name)
        shutil.copyfile(f / ckpt, f / name / "last.pt")
    assert not marker.exists()
    return f, marker


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for folders): the state that must not change."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def sandbox(inputs, trained_run, corpus, tmp_path) -> dict[str, Path]:
    shutil.copytree(inputs[0], tmp_path / "files")
    shutil.copytree(trained_run, tmp_path / "run")
    return {"files": tmp_path / "files", "run": tmp_path / "run", "corpus": corpus, "root": tmp_path}


CASES = {
    # training data
    "missing file": (["train", "{files}/missing.txt"], ["missing.txt", "no such file"]),
    "directory": (["train", "{files}"], ["files", "is a directory"]),
    "empty file": (["train", "{files}/empty.txt"], ["empty.txt", "is empty"]),
    "shorter than a window": (["train", "{files}/short.txt", "--config", SMOKE], ["short.txt", "fewer than"]),
    "PNG": (["train", "{files}/image.png"], ["image.png", "binary"]),
    "random bytes": (["train", "{files}/random.bin"], ["random.bin", "binary"]),
    "invalid UTF-8": (["train", "{files}/latin1.txt"], ["latin1.txt", "not UTF-8", "offset 3"]),
    "invalid UTF-16 after a BOM": (["train", "{files}/utf16_bad.txt"], ["utf16_bad.txt", "not valid UTF-16"]),
    # settings
    "config: unknown key": (
        ["train", "{corpus}", "--config", "{files}/bad.toml"],
        ["bad.toml", "unknown setting 'hidden_sise'"],
    ),
    "config: wrong type": (["train", "{corpus}", "--config", "{files}/badtype.toml"], ["badtype.toml", "'layers'"]),
    "flag out of range": (["train", "{corpus}", "--dropout", "2"], ["dropout"]),
    "flag not a choice": (["train", "{corpus}", "--cell", "lstmx"], ["cell"]),
    "flag not a number": (["train", "{corpus}", "--hidden-size", "abc"], ["hidden-size"]),
    # the run folder
    "--resume without a checkpoint": (
        ["train", "{corpus}", "--out", "{files}/fresh", "--resume"],
        ["fresh/last.pt", "no checkpoint to resume"],
    ),
    "--resume from a truncated last.pt": (
        ["train", "{corpus}", "--out", "{files}/broken_run", "--resume"],
        ["broken_run/last.pt", "corrupt or truncated"],
    ),
    "--resume from a last.pt that would run code": (
        ["train", "{corpus}", "--out", "{files}/evil_run", "--resume"],
        ["evil_run/last.pt", "refused"],
    ),
    "--resume changing the model": (
        ["train", "{corpus}", "--config", SMOKE, "--out", "{run}", "--resume", "--hidden-size", "64"],
        ["hidden_size", "last.pt"],
    ),
    "a finished run without --resume": (
        ["train", "{corpus}", "--config", SMOKE, "--out", "{run}"],
        ["already holds a run"],
    ),
    "output folder cannot be made": (
        ["train", "{corpus}", "--out", "{files}/short.txt/run"],
        ["short.txt/run", "cannot create the output folder"],
    ),
    # fine-tuning: nothing is written, and the checkpoint started from is untouched
    "--init-from a missing checkpoint": (
        ["train", "{corpus}", "--init-from", "{files}/missing.pt"],
        ["missing.pt", "no such checkpoint"],
    ),
    "--init-from changing the model": (
        ["train", "{corpus}", "--config", SMOKE, "--init-from", "{run}/best.pt", "--hidden-size", "64"],
        ["--init-from", "hidden_size is 32", "not 64 (--hidden-size)"],
    ),
    "--init-from with characters the model has never seen": (
        ["train", "{files}/snowman.txt", "--config", SMOKE, "--init-from", "{run}/best.pt"],
        ["snowman.txt", "characters the checkpoint's model has never seen: '☃' ×18;", "--extend-vocab"],
    ),
    "--extend-vocab without --init-from": (["train", "{corpus}", "--extend-vocab"], ["extend-vocab", "--init-from"]),
    # sampling options
    "prime outside the vocabulary": (["sample", "{run}/best.pt", "--prime", "snow☃"], ["best.pt", "never seen", "☃"]),
    "temperature < 0": (["sample", "{run}/best.pt", "--temperature", "-1"], ["--temperature"]),
    "top-k < 1": (["sample", "{run}/best.pt", "--top-k", "0"], ["--top-k"]),
    "top-p = 0": (["sample", "{run}/best.pt", "--top-p", "0"], ["--top-p", "(0, 1]"]),
    "top-p > 1": (["sample", "{run}/best.pt", "--top-p", "1.5"], ["--top-p", "(0, 1]"]),
    "length < 0": (["sample", "{run}/best.pt", "--length", "-5"], ["--length"]),
    "--beam with --temperature": (
        ["sample", "{run}/best.pt", "--beam", "4", "--temperature", "0.5"],
        ["--beam", "takes no --temperature"],
    ),
    "--beam 0": (["sample", "{run}/best.pt", "--beam", "0"], ["--beam must be from 1"]),
    "--length-norm without --beam": (["sample", "{run}/best.pt", "--length-norm", "1"], ["--length-norm", "--beam K"]),
    "--stop outside the vocabulary": (
        ["sample", "{run}/best.pt", "--beam", "2", "--stop", "☃"],
        ["--stop", "never seen"],
    ),
    # checkpoints
    "missing checkpoint": (["sample", "{files}/missing.pt"], ["missing.pt", "no such checkpoint"]),
    "text file as checkpoint": (["sample", "{files}/short.txt"], ["short.txt", "not a readable checkpoint"]),
    "truncated checkpoint": (["sample", "{files}/trunc.pt"], ["trunc.pt", "corrupt or truncated"]),
    "flipped bits in a checkpoint": (["sample", "{files}/bitrot.pt"], ["bitrot.pt", "checksum mismatch"]),
    "checkpoint that would run code": (["sample", "{files}/evil.pt"], ["evil.pt", "refused", "run code"]),
    "weights that do not fit the model": (
        ["sample", "{files}/badmodel.pt"],
        ["badmodel.pt", "not describe a valid model"],
    ),
    "unknown format version": (["perplexity", "{files}/v7.pt"], ["v7.pt", "version 7"]),
    "foreign torch file": (["perplexity", "{files}/foreign.pt"], ["foreign.pt", "not a gru-lm checkpoint"]),
    "empty file as checkpoint": (["perplexity", "{files}/empty.txt"], ["empty.txt", "not a readable checkpoint"]),
    "binary file to score": (["perplexity", "{run}/best.pt", "--file", "{files}/image.png"], ["image.png", "binary"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistake_gets_one_line_exit_2_and_changes_nothing(case, sandbox, inputs, warm, tmp_path_factory):
    args, words = CASES[case]
    before = _tree(sandbox["root"])
    r = warm.run(*[a.format(**sandbox) for a in args], cwd=sandbox["root"], tmp=tmp_path_factory.mktemp("logs"))
    assert_user_error(r, *[w.format(**sandbox) for w in words])
    assert r.stdout == ""
    assert _tree(sandbox["root"]) == before  # no partial run folder, no empty runs/, checkpoints byte for byte
    assert not inputs[1].exists()  # and no code from a checkpoint ran


def test_utf16_with_a_bom_is_decoded(trained_run, corpus, tmp_path):
    text = corpus.read_text(encoding="utf-8")[-3000:]
    (tmp_path / "utf8.txt").write_text(text, encoding="utf-8")
    (tmp_path / "utf16.txt").write_bytes(text.encode("utf-16"))  # with its BOM, as Windows Notepad writes it
    r = gru_lm("perplexity", trained_run / "best.pt", "--file", tmp_path / "utf16.txt", "--json")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    ref = measure(trained_run / "best.pt", tmp_path / "utf8.txt")
    assert (row["chars"], row["unknown"]) == (ref["chars"], 0) and row["loss"] == pytest.approx(ref["loss"], rel=1e-6)


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child, before exec; CPython ignores SIGXFSZ, so a write past it fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


@pytest.mark.slow
def test_a_full_disk_during_save_keeps_the_previous_checkpoint(trained_run, corpus, tmp_path):
    """The resumed run's next checkpoint cannot be written (no file may grow past half of its size)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {n: (run / n).read_bytes() for n in ("last.pt", "best.pt")}
    limit = len(before["last.pt"]) // 2
    assert (run / "metrics.jsonl").stat().st_size < limit  # the log and config.toml still fit
    r = gru_lm("train", corpus, "--out", run, "--resume", "--max-steps", 62, "-q", preexec_fn=_file_size_limit(limit))
    line = assert_user_error(r, "could not write checkpoint", "File too large", "previous one is kept")
    assert f"error: {run / 'best.pt'}:" in line or f"error: {run / 'last.pt'}:" in line  # best.pt goes first
    assert {n: (run / n).read_bytes() for n in before} == before
    assert checkpoint.load(run / "last.pt")["step"] == 60
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # the half-written file is gone


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root may write into a read-only folder; see 'output folder cannot be made'"
)
def test_read_only_output_folder(corpus, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert_user_error(gru_lm("train", corpus, "--config", SMOKE, "--out", ro), str(ro), "not writable")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)
