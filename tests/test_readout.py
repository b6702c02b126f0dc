"""The fused read-out (model/readout.py) against F.cross_entropy(F.linear(...)) under autograd: the loss and the
gradients of h, W and b, in float32 and under bfloat16 autocast, with ignored targets, without gradients, and
through CharModel.loss for every cell."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.model.readout import CHUNK_BYTES, MIN_ROWS, chunk_rows, linear_cross_entropy

IGNORE = -100


def _inputs(N: int, H: int, V: int, ignored: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g).requires_grad_()
    w = (torch.randn(V, H, generator=g) / H**0.5).requires_grad_()
    b = torch.randn(V, generator=g).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    y[torch.randperm(N, generator=g)[:ignored]] = IGNORE
    return h, w, b, y


def _reference(h, w, b, y):
    loss = F.cross_entropy(F.linear(h, w, b).float(), y, ignore_index=IGNORE)
    return loss, torch.autograd.grad(loss, (h, w, b))


def _fused(h, w, b, y, chunk=None):
    loss = linear_cross_entropy(h, w, b, y, ignore_index=IGNORE, chunk=chunk)
    return loss, torch.autograd.grad(loss, (h, w, b))


@pytest.mark.parametrize(
    ("N", "H", "V", "chunk", "ignored"),
    [
        (200, 16, 65, None, 0),  # one chunk
        (200, 16, 65, 64, 13),  # 200 = 3·64 + 8: a short last chunk; ignored rows
        (130, 8, 6000, 48, 5),  # a large alphabet, several chunks
        (7, 12, 6000, None, 0),  # fewer rows than any chunk
    ],
)
def test_float32_loss_and_gradients_match_autograd(N, H, V, chunk, ignored):
    h, w, b, y = _inputs(N, H, V, ignored)
    ref, ref_grads = _reference(h, w, b, y)
    loss, grads = _fused(h, w, b, y, chunk)
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for name, g, r in zip("hWb", grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7, msg=f"gradient of {name}")


def test_ignored_rows_add_nothing_and_get_no_gradient():
    h, w, b, y = _inputs(40, 8, 65, ignored=10)
    loss, (dh, _, _) = _fused(h, w, b, y, chunk=16)
    kept = y != IGNORE
    alone, _ = _fused(h[kept].detach().requires_grad_(), w, b, y[kept])
    torch.testing.assert_close(loss, alone)  # the mean over the kept rows only
    assert torch.count_nonzero(dh[~kept]) == 0 and torch.count_nonzero(dh[kept]) > 0


def test_every_target_ignored_gives_nan_and_zero_gradients_as_cross_entropy():
    h, w, b, y = _inputs(20, 8, 65, ignored=20)
    loss, grads = _fused(h, w, b, y, chunk=8)
    assert loss.isnan()
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_a_target_too_improbable_for_the_softmax_still_gets_its_exact_loss():
    """A target probability of e^-200 underflows float32; its log-probability comes from the logits instead."""
    h, w, b, y = _inputs(40, 8, 65, ignored=3)
    with torch.no_grad():
        b[y[y != IGNORE][:2]] -= 200.0  # two targets far below every other logit
    ref, ref_grads = _reference(h, w, b, y)
    loss, grads = _fused(h, w, b, y, chunk=16)
    assert ref > 5.0  # the two rows dominate the mean
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for name, g, r in zip("hWb", grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7, msg=f"gradient of {name}")


def test_the_gradient_scales_with_grad_output():
    h, w, b, y = _inputs(50, 8, 65)
    loss = linear_cross_entropy(h, w, b, y)
    (3.0 * loss).backward()
    _, ref_grads = _reference(h, w, b, y)
    torch.testing.assert_close(h.grad, 3.0 * ref_grads[0])
    torch.testing.assert_close(b.grad, 3.0 * ref_grads[2])


@pytest.mark.parametrize(("V", "chunk"), [(65, None), (6000, 48)])
def test_bfloat16_autocast_is_close_to_autocast_linear(V, chunk):
    """Under autocast the products take bfloat16 operands, as F.linear's do; the rest stays float32."""
    h, w, b, y = _inputs(130, 16, V, ignored=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, ref_grads = _reference(h, w, b, y)
        loss, grads = _fused(h, w, b, y, chunk)
    _, exact_grads = _reference(h, w, b, y)
    assert loss.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    torch.testing.assert_close(loss, ref, rtol=2e-3, atol=2e-3)
    rounding = (grads[1] - exact_grads[1]).abs().max() / exact_grads[1].abs().max()
    assert rounding > 1e-4  # the products really took bfloat16 operands (float32 ones differ by ~1e-7)
    for name, g, r in zip("hWb", grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0.03, atol=0.02 * float(r.abs().max()), msg=f"gradient of {name}")


def test_without_gradients_only_the_loss_is_computed():
    h, w, b, y = _inputs(90, 8, 6000, ignored=3)
    ref, _ = _reference(h, w, b, y)
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, b, y, chunk=32)
    assert not loss.requires_grad and loss.grad_fn is None
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)


def test_no_gradient_work_under_no_grad_or_for_frozen_inputs(monkeypatch):
    """The gradients nobody asked for are never computed (readout._summed_loss_and_grads returns None for them)."""
    from gru_lm.model import readout

    made: list[tuple[bool, ...]] = []
    inner = readout._summed_loss_and_grads

    def spy(*args):
        loss, grads = inner(*args)
        made.append(tuple(g is not None for g in grads))
        return loss, grads

    monkeypatch.setattr(readout, "_summed_loss_and_grads", spy)
    h, w, b, y = _inputs(30, 8, 65)
    with torch.no_grad():
        linear_cross_entropy(h, w, b, y)
    linear_cross_entropy(h.detach(), w, b.detach(), y)
    linear_cross_entropy(h, w, b, y)
    assert made == [(False, False, False), (False, True, False), (True, True, True)]


@pytest.mark.parametrize("frozen", ["h", "w", "hb"])
def test_only_the_inputs_that_require_a_gradient_get_one(frozen):
    h, w, b, y = _inputs(60, 8, 65, ignored=2)
    _, ref_grads = _reference(h, w, b, y)
    tensors = {"h": h, "w": w, "b": b}
    for k in frozen:
        tensors[k].requires_grad_(False)
    loss = linear_cross_entropy(h, w, b, y, chunk=16)
    loss.backward()
    for (k, t), r in zip(tensors.items(), ref_grads):
        if k in frozen:
            assert t.grad is None
        else:
            torch.testing.assert_close(t.grad, r, rtol=1e-5, atol=1e-7, msg=f"gradient of {k}")


def test_no_bias():
    h, w, _, y = _inputs(70, 8, 65)
    ref = F.cross_entropy(h @ w.t(), y)
    loss = linear_cross_entropy(h, w, None, y, chunk=32)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, w)[0], torch.autograd.grad(ref, w)[0])


def test_chunk_rows_stay_within_bounds():
    assert chunk_rows(2048, 6000) * 6000 * 4 <= CHUNK_BYTES  # within the cache budget ...
    assert -(-2048 // chunk_rows(2048, 6000)) == -(-2048 * 6000 * 4 // CHUNK_BYTES)  # ... in the fewest chunks
    assert chunk_rows(2048, 65) == 2048  # a small alphabet: one chunk
    assert chunk_rows(2048, 10**6) == MIN_ROWS  # a huge one: thin chunks, never thinner than MIN_ROWS
    assert chunk_rows(5, 10**6) == 5
    with pytest.raises(ValueError, match="shapes"):
        linear_cross_entropy(torch.randn(5, 4), torch.randn(9, 3), None, torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_char_model_loss_equals_cross_entropy_of_its_logits(cell):
    torch.manual_seed(0)
    model = CharModel(ModelConfig(vocab_size=70, cell=cell, hidden_size=16, embed_size=8, layers=2))
    x, y = torch.randint(0, 70, (9, 3)), torch.randint(0, 70, (9, 3))
    h0 = torch.randn(2, 3, model.state_width)
    logits, h_ref = model(x, h0)
    ref = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    loss, h_new = model.loss(x, y, h0)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h_new, h_ref)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6, msg=f"gradient of {name}")


def test_char_model_loss_applies_dropout_as_forward_does():
    model = CharModel(ModelConfig(vocab_size=30, hidden_size=16, embed_size=8, dropout=0.5)).train()
    x, y = torch.randint(0, 30, (6, 2)), torch.randint(0, 30, (6, 2))
    torch.manual_seed(5)
    logits, _ = model(x)
    torch.manual_seed(5)
    loss, _ = model.loss(x, y)
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), y.flatten()))
    with torch.no_grad():
        model.eval()
        assert model.loss(x, y)[0] != loss  # dropout on in training only, as forward
