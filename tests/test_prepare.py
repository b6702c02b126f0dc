"""gru-lm prepare: the streaming encoder, the prepared folder, and training and scoring on it."""

from __future__ import annotations

import codecs
import json

import numpy as np
import pytest
import torch

from gru_lm.analysis.evaluate import measure
from gru_lm.errors import UserError
from gru_lm.text import prepared as P
from gru_lm.text import reading as T
from gru_lm.text.corpus import load_corpus
from gru_lm.text.reading import read_text
from gru_lm.text.vocab import Vocab
from gru_lm.training.train import train

from .conftest import assert_user_error, gru_lm

MIXED = "Ünïcödé lines: 雪 ☃ 😀 — and ASCII.\nΣοφία, мир, 日本語!\n" * 40


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 bytes: every multi-byte character is cut across a chunk edge somewhere."""
    monkeypatch.setattr(T, "CHUNK_BYTES", 7)


def test_iter_text_decodes_across_chunk_edges(tmp_path, small_chunks):
    for codec, bom in (
        ("utf-8", b""),
        ("utf-8", codecs.BOM_UTF8),
        ("utf-16-le", codecs.BOM_UTF16_LE),
        ("utf-32-be", codecs.BOM_UTF32_BE),
    ):
        p = tmp_path / "t.txt"
        p.write_bytes(bom + MIXED.encode(codec))
        assert "".join(T.iter_text(p)) == MIXED, (codec, bom)


@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8])
def test_invalid_utf8_offset_is_exact_across_chunks(tmp_path, small_chunks, bom):
    raw = bom + "abcdé☃fgh".encode() + b"\xff" + b"tail"
    p = tmp_path / "bad.txt"
    p.write_bytes(raw)
    at = raw.index(b"\xff")  # counted from the file's first byte, BOM included
    with pytest.raises(UserError, match=f"offset {at}\\)"):
        list(T.iter_text(p))


def test_a_file_that_changes_between_the_passes_is_refused(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello world")
    sc = P.scan(p)
    p.write_text("hello world!")  # a new character, and a longer text
    with pytest.raises(UserError, match="changed while it was being read"):
        list(P.encode_chunks(p, sc))
    p.write_text("hello")  # shorter
    with pytest.raises(UserError, match="changed while it was being read"):
        list(P.encode_chunks(p, sc))


@pytest.mark.parametrize("n_chars, dtype", [(60, "uint8"), (256, "uint8"), (257, "uint16"), (70_000, "uint32")])
def test_prepare_round_trips_and_is_compact(tmp_path, small_chunks, n_chars, dtype):
    alphabet = "".join(chr((0x4E00 if n_chars < 1000 else 0x10000) + i) for i in range(n_chars))
    text = alphabet + alphabet[::-1] if n_chars < 1000 else alphabet
    if n_chars >= 1000:
        P.CHUNK_BYTES = 1 << 16  # 70,000 characters 7 bytes at a time would be slow, and prove nothing more
    src = tmp_path / "src.txt"
    src.write_text(text, encoding="utf-8")
    meta = P.prepare_corpus(src, tmp_path / "prep", progress=False)
    assert meta["dtype"] == dtype
    pr = P.load_prepared(tmp_path / "prep")
    assert pr.ids.dtype == np.dtype(dtype) and len(pr.ids) == len(text)
    assert (tmp_path / "prep" / P.IDS).stat().st_size == len(text) * np.dtype(dtype).itemsize
    assert pr.chars == "".join(sorted(set(text)))
    assert Vocab(pr.chars).decode(pr.ids.tolist()) == text


def test_prepare_matches_the_in_memory_encoding(tmp_path, corpus):
    P.prepare_corpus(corpus, tmp_path / "prep", progress=False)
    pr = P.load_prepared(tmp_path / "prep")
    sc, ids = P.encode_file(corpus)
    text = read_text(corpus)
    assert np.array_equal(pr.ids, ids) and pr.chars == sc.chars
    assert torch.equal(torch.from_numpy(ids).long(), Vocab(sc.chars).encode(text)[0].long())
    from gru_lm.analysis.evaluate import text_sha256

    assert pr.sha256 == sc.sha256 == text_sha256(text)


def test_train_and_perplexity_on_a_prepared_folder(tmp_path, corpus, smoke):
    prep = tmp_path / "prep"
    P.prepare_corpus(corpus, prep, progress=False)
    s = smoke(max_steps=20, eval_every=10)
    run = train(prep, s, tmp_path / "run", progress=False)
    assert run.step == 20
    c = load_corpus(prep, s)
    n = len(read_text(corpus))
    cut = int(n * (1 - s.val_fraction))
    assert len(c.train_ids) == cut and len(c.val_ids) == n - cut
    assert c.train_ids.data_ptr() == c.val_ids.data_ptr() - cut  # views of the one memory map, not copies
    # perplexity finds the validation split of the prepared folder again, and --file takes a folder
    mine = measure(tmp_path / "run" / "best.pt")
    assert "[validation split]" in mine["file"] and mine["chars"] == n - cut - 1
    whole = measure(tmp_path / "run" / "best.pt", prep)
    assert whole["chars"] == n - 1
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert state["data"]["prepared"] and state["data"]["val_start"] == cut


def test_eval_chars_limits_validation_during_training(tmp_path, corpus, smoke):
    r = train(corpus, smoke(max_steps=10, eval_every=10, eval_chars=300), tmp_path / "a", progress=False)
    full = train(corpus, smoke(max_steps=10, eval_every=10, eval_chars=0), tmp_path / "b", progress=False)
    from gru_lm.analysis.evaluate import nll
    from gru_lm.model.checkpoint import build_model, load

    state = load(tmp_path / "a" / "last.pt")
    c = load_corpus(corpus, smoke())
    total, n = nll(build_model(state), c.val_ids[:300], smoke().eval_streams)
    assert n == 299 and r.val_loss == pytest.approx(total / n, rel=1e-6)
    assert full.val_loss != r.val_loss


@pytest.mark.slow
def test_bad_prepared_folders_are_user_errors(tmp_path, corpus):
    prep = tmp_path / "prep"
    P.prepare_corpus(corpus, prep, progress=False)
    ids = prep / P.IDS
    ids.write_bytes(ids.read_bytes()[:-5])
    assert_user_error(gru_lm("train", prep, "--max-steps", "1", "-q", "--out", tmp_path / "r"), "prepare again")
    meta = json.loads((prep / P.META).read_text())
    (prep / P.META).write_text("{not json")
    assert_user_error(gru_lm("train", prep, "-q", "--out", tmp_path / "r"), "vocab.json")
    meta["format"] = 99
    (prep / P.META).write_text(json.dumps(meta))
    assert_user_error(gru_lm("train", prep, "-q", "--out", tmp_path / "r"), "format 99")
    assert not (tmp_path / "r").exists()


def test_prepare_command_line(tmp_path):
    src = tmp_path / "mixed.txt"
    src.write_text(MIXED, encoding="utf-8")
    r = gru_lm("prepare", src, "--out", tmp_path / "p", "-q")
    assert r.returncode == 0, r.stderr
    assert f"{len(MIXED):,} characters" in r.stderr and "MB/s" in r.stderr
    assert P.is_prepared(tmp_path / "p")
    assert_user_error(gru_lm("prepare", tmp_path / "nope.txt", "--out", tmp_path / "q"), "no such file")
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02" * 10)
    assert_user_error(gru_lm("prepare", tmp_path / "bin.dat", "--out", tmp_path / "q"), "binary")
    assert not P.is_prepared(tmp_path / "q")
