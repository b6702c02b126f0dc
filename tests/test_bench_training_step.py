"""bench/rnn_speed.py's Step: the training step it times around every cell is gru-lm train's, or the plain one."""

from __future__ import annotations

import torch

from bench.rnn_speed import TRAIN_SETTINGS, E, Step, V, flops_per_char, work_flops_per_char


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


def test_the_train_step_feeds_our_cells_the_first_layers_projections_from_the_models_table():
    ours, theirs = Step("ours GRU reset-before", 8, 2, 10, 8), Step("torch.nn.GRU", 8, 2, 10, 8)  # 80 positions > 65
    x, first_gi = ours.inputs()
    assert x is None and first_gi is not None and first_gi.shape == (8, 10, 3 * 8)
    embedded = ours.emb(ours.x)
    assert torch.allclose(ours.rnn(None, ours.h, first_gi=first_gi)[0], ours.rnn(embedded, ours.h)[0], atol=1e-6)
    x, first_gi = theirs.inputs()
    assert first_gi is None and torch.equal(x, theirs.emb(theirs.x))
    plain = Step("ours GRU reset-before", 8, 2, 10, 8, step="plain")
    assert plain.inputs()[1] is None  # the textbook step embeds, as the earlier results files measured


def test_the_work_done_leaves_out_only_the_first_layer_projections_our_cells_look_up():
    counted = flops_per_char("ours LSTM", 256, 2)
    skipped = 6 * 4 * 256 * E * (1 - V / (32 * 64))
    assert work_flops_per_char("ours LSTM", 256, 2, 32, 64, "train") == counted - skipped
    assert work_flops_per_char("ours LSTM", 256, 2, 32, 64, "plain") == counted
    assert work_flops_per_char("torch.nn.LSTM", 256, 2, 32, 64, "train") == flops_per_char("torch.nn.LSTM", 256, 2)
    assert work_flops_per_char("ours LSTM", 256, 2, 1, 64, "train") == counted  # 64 positions: no table
