"""Reading text, the vocabulary, the validation split and the stream batcher."""

from __future__ import annotations

import codecs
import contextlib
import tempfile
from itertools import pairwise
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gru_lm.errors import UserError
from gru_lm.text.batches import (
    MAX_AUTO_BLOCKS,
    StreamBatcher,
    auto_val_blocks,
    first_of_each,
    split_validation,
    training_ranges,
    validation_ranges,
)
from gru_lm.text.corpus import load_corpus
from gru_lm.text.reading import read_text
from gru_lm.text.vocab import Vocab


@given(st.text(min_size=1, max_size=300))
@settings(max_examples=150, deadline=None)
def test_vocab_round_trip_any_unicode(text):
    v = Vocab.from_text(text)
    assert list(v.chars) == sorted(set(text))
    ids, dropped = v.encode(text)
    assert dropped == 0 and len(ids) == len(text)
    assert v.decode(ids) == text


def test_vocab_storage_is_compact():
    assert Vocab.from_text("abc").encode("abcabc")[0].dtype == torch.uint8
    big = "".join(chr(0x4E00 + i) for i in range(300))
    assert Vocab.from_text(big).encode(big)[0].dtype == torch.uint16


def test_unknown_characters_are_refused_or_dropped():
    v = Vocab.from_text("hello")
    with pytest.raises(ValueError):
        v.encode("help")
    ids, dropped = v.encode("help!", drop_unknown=True)
    assert dropped == 2 and v.decode(ids) == "hel"
    assert v.unknown("help!p") == "p!"


def test_validation_split_sizes():
    text = "x" * 1_115_394
    train, val = split_validation(text, 0.1)
    assert (len(train), [len(v) for v in val]) == (1_003_854, [111_540])  # nanoGPT's cut, one block
    train, val = split_validation("abcdefghij", 0.2)
    assert (train, val) == ("abcdefgh", ["ij"])


def test_spread_validation_covers_every_share_and_no_position_twice():
    n, blocks = 100_003, 7
    val = validation_ranges(n, 0.1, blocks)
    train = training_ranges(n, val)
    assert len(val) == blocks
    covered = sorted(val + train)
    assert covered[0][0] == 0 and covered[-1][1] == n
    assert all(a[1] == b[0] for a, b in pairwise(covered))  # back to back: nothing twice, nothing lost
    assert abs(sum(b - a for a, b in val) - 10_000) <= blocks
    for i, (a, b) in enumerate(val):  # each block ends its own seventh of the text
        assert b == n * (i + 1) // blocks and a > n * i // blocks
    assert validation_ranges(n, 0.1, 1) == [(int(n * 0.9), n)]


def test_auto_blocks_follow_the_size():
    assert auto_val_blocks(6_000, 0.1) == 1
    assert auto_val_blocks(1_115_394, 0.1) == 27
    assert auto_val_blocks(50_000_000, 0.1) == MAX_AUTO_BLOCKS


def test_first_of_each_takes_every_block():
    assert first_of_each([10, 10, 10], 0) == [(0, 10), (10, 20), (20, 30)]
    assert first_of_each([10, 10, 10], 9) == [(0, 3), (10, 13), (20, 23)]
    assert first_of_each([10, 2, 10], 12) == [(0, 4), (10, 12), (12, 16)]


def test_a_spread_split_measures_the_whole_text_and_its_vocabulary_covers_it(tmp_path, smoke):
    # two "genres": the last tenth of the file alone has 'z', which an end split would put all in validation
    text = "abc de\n" * 8_000 + "zz yz\n" * 1_000
    path = tmp_path / "two_genres.txt"
    path.write_text(text, encoding="utf-8")
    spread = load_corpus(path, smoke(val_blocks=20))
    assert "z" in spread.vocab.chars and "y" in spread.vocab.chars
    assert len(spread.val_bounds) == 20 and sum(spread.val_bounds) == len(spread.val_ids)
    assert len(spread.train_ids) + len(spread.val_ids) == len(text)
    val_text = spread.vocab.decode(spread.val_ids)
    assert 0.02 < val_text.count("z") / len(val_text) < 0.2  # each genre in proportion, not the last alone
    assert spread.source["val_ranges"][0] == [int(len(text) / 20 * 0.9), len(text) // 20]
    end = load_corpus(path, smoke(val_blocks=1))
    assert "y" not in end.vocab.decode(end.train_ids) and "y" in end.vocab.chars  # the vocabulary is the whole file's
    ids, bounds = spread.validation_sample(200)
    assert len(bounds) == 20 and sum(bounds) == len(ids) == 200


def test_read_text_utf8_bom_and_utf16(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffhéllo".encode("utf-8"))
    assert read_text(p) == "héllo"
    p.write_bytes("héllo wörld".encode("utf-16"))
    assert read_text(p) == "héllo wörld"
    for codec in ("utf-32-le", "utf-32-be", "utf-16-be"):  # FF FE 00 00 starts UTF-32 LE, not UTF-16 LE
        p.write_bytes("\ufeffsnow ☃".encode(codec))
        assert read_text(p) == "snow ☃", codec


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "empty"),
        (b"\xef\xbb\xbf", "empty"),
        (b"\xff\xfe", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (b"abc\xff\xfe\xfddef", "not UTF-8"),
        (b"\xff\xfe\x00\x00\x00\x00\x00\x00", "binary"),  # a BOM, then NULs: binary, not text
        (b"\xff\xfea\x00b\x00\x00\xd8", "not valid UTF-16"),
        (b"\xff\xfe\x00\x00\x00\x00\x11\x00", "not valid UTF-32"),
    ],
)
def test_read_text_refuses_bad_files(tmp_path, content, words):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(UserError, match=words):
        read_text(p)


def test_read_text_missing_and_directory(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="directory"):
        read_text(tmp_path)


def _batcher(n=1000, B=4, T=7, seed=0):
    return StreamBatcher(torch.arange(n, dtype=torch.int32), B, T, seed)


def test_batcher_windows_are_contiguous_streams():
    b = _batcher()
    for epoch in range(3):
        K = b.windows(epoch)
        o = b.offset(epoch)
        L = (1000 - o) // 4
        prev_y = None
        for k in range(K):
            x, y = b.get(epoch, k)
            assert x.shape == (7, 4) and y.shape == (7, 4)
            assert torch.equal(y[:-1], x[1:])  # targets are the next characters
            # stream j is a contiguous slice starting at o + j*L
            assert torch.equal(x[0], torch.tensor([o + j * L + k * 7 for j in range(4)]))
            if prev_y is not None:
                assert torch.equal(x[0], prev_y[-1])  # window k+1 continues where window k ended
            prev_y = y
            # never crosses into the next stream
            assert bool((y.max(0).values < torch.tensor([o + (j + 1) * L for j in range(4)])).all())


def test_batcher_offsets_are_reproducible_and_vary():
    b = _batcher(seed=3)
    offs = [b.offset(e) for e in range(1, 30)]
    assert offs == [_batcher(seed=3).offset(e) for e in range(1, 30)]
    assert len(set(offs)) > 1 and b.offset(0) == 0
    assert all(0 <= o < 7 for o in offs)


def test_batcher_covers_the_training_text_once_per_epoch():
    b = _batcher(n=1000, B=4, T=7)
    seen = torch.zeros(1000, dtype=torch.int32)
    for k in range(b.windows(0)):
        x, _ = b.get(0, k)
        seen[x.flatten().long()] += 1
    assert seen.max() == 1  # nothing twice
    assert seen.sum() >= 1000 - 4 * (7 + 1)  # at most the tail of each stream (< one window) is left out


def test_batcher_refuses_text_shorter_than_a_window():
    with pytest.raises(UserError, match="fewer than"):
        StreamBatcher(torch.zeros(20, dtype=torch.uint8), batch_size=4, seq_len=8)


# ---- properties (hypothesis) ----


@given(st.text(max_size=60), st.text(max_size=20), st.integers(1, 9))
@settings(max_examples=100, deadline=None)
def test_encode_in_chunks_round_trips_and_counts_unknowns(text, other, chunk):
    """Any text, in chunks of any size: the known characters come back in order, the unknown are counted."""
    v = Vocab.from_text(text or "a")
    mixed = "".join(a + b for a, b in zip(text, other)) + text[len(other) :] + other[len(text) :]
    with mock.patch("gru_lm.text.vocab._CHUNK", chunk):
        ids, dropped = v.encode(mixed, drop_unknown=True)
        known = "".join(c for c in mixed if c in v.chars)
        assert v.decode(ids) == known and dropped == len(mixed) - len(known)
        assert ids.dtype == torch.uint8 and len(ids) == len(known)
        if dropped == 0:
            assert v.encode(mixed)[0].tolist() == ids.tolist()
        else:
            with pytest.raises(ValueError, match="not in the vocabulary"):
                v.encode(mixed)


@given(st.text(min_size=1, max_size=200), st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]))
@settings(max_examples=100, deadline=None)
def test_read_text_round_trips_any_text(text, codec):
    """What read_text gives back is the text written, in UTF-8 (with or without BOM) or UTF-16/32 with a BOM.

    Two texts are refused on purpose: one holding NUL (read as a binary file) and one that is
    empty once a leading BOM is dropped. A UTF-16 text that starts with NUL begins FF FE 00 00,
    which is also UTF-32's byte-order mark: it is read as UTF-32, and either refused or decoded
    to a text without NUL.
    """
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.txt"
        raw = text.encode(codec)
        p.write_bytes(raw)
        expected = text[1:] if codec == "utf-8" and text.startswith("\ufeff") else text
        if raw.startswith(codecs.BOM_UTF32_LE) and codec == "utf-16":
            with contextlib.suppress(UserError):
                assert "\x00" not in read_text(p)
        elif "\x00" in expected:
            with pytest.raises(UserError, match="binary"):
                read_text(p)
        elif not expected:
            with pytest.raises(UserError, match="empty"):
                read_text(p)
        else:
            assert read_text(p) == expected


@given(
    n=st.integers(1, 400), B=st.integers(1, 6), T=st.integers(1, 9), seed=st.integers(0, 99), epoch=st.integers(0, 5)
)
@settings(max_examples=150, deadline=None)
def test_batcher_never_crosses_streams_and_covers_each_character_at_most_once(n, B, T, seed, epoch):
    """What StreamBatcher guarantees for one epoch (data = positions 0..n-1, so an id is where it came from):

    - stream b is the contiguous slice [o + bL, o + (b+1)L) of the text, o the epoch's offset (o < T);
    - every window's inputs and targets of row b lie in stream b: nothing crosses a stream boundary;
    - the target of each input is the character after it, and window k+1 starts where window k ended,
      so the state carried from one window to the next belongs to the same stream;
    - every character is an input at most once and a target at most once per epoch; the ones left
      out are the offset o at the start, the remainder (n - o) mod B at the end, and at most T
      characters at the end of each stream (a window needs T+1 characters): at most (T-1) + (B-1) + B*T.
    """
    if n < B * (T + 1):
        with pytest.raises(UserError, match="fewer than"):
            StreamBatcher(torch.arange(n, dtype=torch.int32), B, T, seed)
        return
    b = StreamBatcher(torch.arange(n, dtype=torch.int32), B, T, seed)
    o = b.offset(epoch)
    assert 0 <= o < T and o == b.offset(epoch)  # reproducible from (seed, epoch) alone
    L = (n - o) // B
    K = b.windows(epoch)
    assert K == (L - 1) // T >= 1
    starts = torch.tensor([o + j * L for j in range(B)])
    as_input, as_target = torch.zeros(n, dtype=torch.int32), torch.zeros(n, dtype=torch.int32)
    prev_y = None
    for k in range(K):
        x, y = b.get(epoch, k)
        assert x.shape == y.shape == (T, B)
        assert bool(((x >= starts) & (x < starts + L)).all()) and bool(((y >= starts) & (y < starts + L)).all())
        assert torch.equal(y, x + 1)  # the next character, of the same stream
        if prev_y is not None:
            assert torch.equal(x[0], prev_y[-1])
        prev_y = y
        as_input[x.flatten().long()] += 1
        as_target[y.flatten().long()] += 1
    assert as_input.max() <= 1 and as_target.max() <= 1
    assert int(as_input.sum()) == int(as_target.sum()) == K * T * B
    assert n - K * T * B <= (T - 1) + (B - 1) + B * T
