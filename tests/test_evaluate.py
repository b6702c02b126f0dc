"""Perplexity: the exact definition, streams, unknown characters."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gru_lm.analysis.evaluate import measure, nll, pieces
from gru_lm.errors import UserError
from gru_lm.model import checkpoint


@pytest.fixture(scope="module")
def model(trained_run):
    return checkpoint.build_model(checkpoint.load(trained_run / "best.pt"))


def test_nll_is_each_character_given_all_before_it(model):
    ids = torch.randint(0, model.cfg.vocab_size, (50,))
    total, n = nll(model, ids, num_streams=1, chunk=7)
    # straight-line reference: one character at a time, carrying the state from zeros
    h, ref = None, 0.0
    with torch.no_grad():
        for t in range(49):
            logits, h = model(ids[t : t + 1].view(1, 1), h)
            ref += float(F.cross_entropy(logits[0], ids[t + 1 : t + 2]))
    assert n == 49 and total == pytest.approx(ref, rel=1e-5)


def test_streams_score_every_character_once(model):
    ids = torch.randint(0, model.cfg.vocab_size, (103,))
    for s in (1, 2, 5, 102, 500):
        total, n = nll(model, ids, num_streams=s)
        assert n == 102 and math.isfinite(total)
    one, _ = nll(model, ids, 1)
    many, _ = nll(model, ids, 4)
    assert abs(one - many) / one < 0.2 and one != many


def test_blocks_each_start_from_a_fresh_state(model):
    ids = torch.randint(0, model.cfg.vocab_size, (90,))
    bounds = [30, 25, 35]
    total, n = nll(model, ids, num_streams=1, bounds=bounds)
    apart = [nll(model, part, num_streams=1) for part in ids.split(bounds)]
    assert n == 87 == sum(k for _, k in apart)
    assert total == pytest.approx(sum(t for t, _ in apart), rel=1e-5)
    joined, _ = nll(model, ids, num_streams=1)
    assert joined != pytest.approx(total, rel=1e-6)  # carrying the state over the gaps would score otherwise
    many, m = nll(model, ids, num_streams=7, bounds=bounds)  # more streams: pieces never cross a block's end
    assert m == 87 and abs(many - total) / total < 0.2


def test_pieces_cut_each_block_and_skip_its_first_character():
    starts, counts = pieces([5, 1, 4], 6)
    assert starts.tolist() == [0, 2, 6, 8] and counts.tolist() == [2, 2, 2, 1]


def test_measure_on_own_validation_split_and_on_a_file(trained_run, corpus, tmp_path):
    row = measure(trained_run / "best.pt")
    assert row["chars"] == 1999  # the last 10% of 20,000 characters, less the first (not predicted)
    assert row["perplexity"] == pytest.approx(math.exp(row["loss"]))
    assert row["bpc"] == pytest.approx(row["loss"] / math.log(2))
    odd = tmp_path / "odd.txt"
    odd.write_text("ROMEO: ☃ is here\n§§", encoding="utf-8")
    row = measure(trained_run / "best.pt", odd)
    assert row["unknown"] == 3 and row["chars"] == len("ROMEO:  is here\n") - 1


@given(st.text(alphabet=st.one_of(st.sampled_from("ROMEO: the\n"), st.characters(codec="utf-8")), max_size=80))
@settings(max_examples=40, deadline=None)
def test_perplexity_of_any_text_never_crashes(trained_run, text):
    """Any text, unknown characters and all: a row whose counts add up, or a one-line UserError."""
    vocab = checkpoint.load(trained_run / "best.pt")["vocab"]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.txt"
        p.write_bytes(text.encode("utf-8"))
        body = text[1:] if text.startswith("\ufeff") else text  # read_text drops a leading BOM
        known = sum(c in vocab for c in body)
        if "\x00" in body or not body or known < 2:
            with pytest.raises(UserError) as e:
                measure(trained_run / "best.pt", p)
            assert "\n" not in str(e.value) and (
                "binary" in str(e.value) or "empty" in str(e.value) or "at least two characters" in str(e.value)
            )
            return
        row = measure(trained_run / "best.pt", p)
    assert row["unknown"] == len(body) - known and row["chars"] == known - 1
    assert set(row["unknown_chars"]) == {c for c in body if c not in vocab}
    assert math.isfinite(row["loss"]) and row["loss"] > 0 and row["perplexity"] == pytest.approx(math.exp(row["loss"]))
