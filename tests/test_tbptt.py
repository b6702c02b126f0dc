"""Truncated BPTT in the real training loop: the state is carried between windows and detached."""

from __future__ import annotations

import itertools

import torch

from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.training.train import train


def test_state_is_carried_and_detached_between_windows(corpus, smoke, tmp_path, monkeypatch):
    calls = []
    forward = CharModel.forward

    def recording_forward(self, ids, h=None, targets=None):
        out, h_out = forward(self, ids, h, targets)
        if self.training:
            calls.append((h, h_out.detach().clone()))
        return out, h_out

    monkeypatch.setattr(CharModel, "forward", recording_forward)
    train(corpus, smoke(max_steps=12, eval_every=100), tmp_path / "run", progress=False)
    assert len(calls) == 12
    assert torch.count_nonzero(calls[0][0]) == 0  # an epoch starts from zeros
    for (_, h_end), (h_next_in, _) in itertools.pairwise(calls):
        assert torch.equal(h_next_in, h_end)  # window k+1 starts where window k ended
        assert h_next_in.grad_fn is None and not h_next_in.requires_grad  # ... cut from window k's graph


def test_no_gradient_reaches_the_previous_window():
    torch.manual_seed(0)
    model = CharModel(ModelConfig(vocab_size=10, hidden_size=8, embed_size=4))
    x1, x2 = torch.randint(0, 10, (5, 2)), torch.randint(0, 10, (5, 2))
    e1 = model.embed(x1).detach().requires_grad_(True)  # window k's inputs, as a leaf we can ask about
    _out1, h1 = model.rnn(e1)
    for carried, reaches in ((h1.detach(), False), (h1, True)):  # detached as training does; not, as a control
        logits2, _ = model(x2, carried)
        (g,) = torch.autograd.grad(logits2.sum(), e1, allow_unused=True, retain_graph=True)
        assert (g is not None and bool(g.abs().sum() > 0)) == reaches
