"""bench/rnn_speed.py's Step: the training step it times around every cell is gru-lm train's, or the plain one."""

from __future__ import annotations

import torch

from bench.rnn_speed import TRAIN_SETTINGS, Step


def test_the_train_and_plain_steps_compute_the_same_loss_with_their_own_optimisers():
    train, plain = Step("ours GRU reset-after", 8, 1, 3, 5), Step("ours GRU reset-after", 8, 1, 3, 5, step="plain")
    out = train.rnn(train.emb(train.x), train.h)[0]
    assert torch.allclose(train.loss(out), plain.loss(out), rtol=1e-6)  # the fused read-out is F.cross_entropy's
    assert isinstance(train.opt, torch.optim.AdamW) and train.opt.defaults["fused"]
    assert [g["weight_decay"] for g in train.opt.param_groups] == [TRAIN_SETTINGS.weight_decay, 0.0]
    assert type(plain.opt) is torch.optim.Adam


def grad_norm(step: Step) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in step.params]))


def test_a_train_step_clips_the_gradient_updates_the_weights_and_carries_the_state():
    train, plain = Step("ours LSTM", 8, 2, 3, 5), Step("ours LSTM", 8, 2, 3, 5, step="plain")
    train.clip = 0.05  # below the gradient's norm
    before = [p.detach().clone() for p in train.params]
    train()
    plain()
    assert grad_norm(plain) > 2 * train.clip  # the same gradient, unclipped
    assert torch.isclose(grad_norm(train), torch.tensor(train.clip), rtol=1e-4)
    assert all(not torch.equal(a, p) for a, p in zip(before, train.params))
    h, c = train.h
    assert h.abs().sum() > 0 and c.abs().sum() > 0 and not h.requires_grad
