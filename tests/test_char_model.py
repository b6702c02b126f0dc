"""CharModel's forward looks the first layer's input projections up in a table of the projected embedding when
the alphabet is smaller than the window: the same outputs, state and gradients as projecting each position."""

import pytest
import torch
import torch.nn.functional as F

from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.model.window import sum_rows_by_id

CELLS = [
    {"cell": "gru", "layers": 2},
    {"cell": "gru", "reset_after": True},
    {"cell": "lstm", "layers": 2},
    {"cell": "rnn"},
]


def _by_embedding(model: CharModel, ids: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stack on the embedded ids, every position projected: the path of a window shorter than the alphabet."""
    if model.cfg.cell == "lstm":
        out, (h_n, c_n) = model.rnn(model.embed(ids), h.chunk(2, dim=-1))
        return out, torch.cat([h_n, c_n], dim=-1)
    return model.rnn(model.embed(ids), h)


def _grads(model: CharModel) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("cfg", CELLS, ids=["gru-before", "gru-after", "lstm", "rnn"])
def test_the_table_lookup_is_the_projection_of_each_position(cfg, dtype):
    torch.manual_seed(0)
    model = CharModel(ModelConfig(vocab_size=7, hidden_size=16, embed_size=5, **cfg)).to(dtype)
    ids = torch.randint(0, 7, (6, 4))  # 24 positions, 7 characters: the table path
    h = torch.randn(model.cfg.layers, 4, model.state_width, dtype=dtype)
    tol = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}

    out, new = model._features(ids, h)
    (out.square().sum() + new.sum()).backward()
    table_grads = _grads(model)
    ref_out, ref_new = _by_embedding(model, ids, h)
    (ref_out.square().sum() + ref_new.sum()).backward()
    ref_grads = _grads(model)

    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(new, ref_new, **tol)
    assert table_grads.keys() == ref_grads.keys() and "embed.weight" in table_grads
    for name, grad in table_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], **tol, msg=name)


def test_a_window_shorter_than_the_alphabet_projects_each_position(monkeypatch):
    model = CharModel(ModelConfig(vocab_size=50, hidden_size=8, embed_size=4))
    calls = []
    monkeypatch.setattr(model.rnn, "input_table", lambda weight: calls.append(weight) or torch.zeros(50, 24))
    model(torch.randint(0, 50, (3, 2)))  # 6 positions, 50 characters
    assert not calls
    model(torch.randint(0, 50, (16, 4)))  # 64 positions
    assert len(calls) == 1


def test_sum_rows_by_id_is_f_embeddings_backward_and_sums_bfloat16_gradients_in_float32():
    torch.manual_seed(0)
    table = torch.randn(7, 5, requires_grad=True)
    ids = torch.randint(0, 7, (6, 4))
    grad = torch.randn(6, 4, 5)
    (theirs,) = torch.autograd.grad(F.embedding(ids, table), table, grad)
    assert torch.allclose(sum_rows_by_id(grad, ids, 7), theirs, atol=1e-6)
    summed = sum_rows_by_id(grad.bfloat16(), ids, 7)
    exact = torch.zeros(7, 5).index_add_(0, ids.view(-1), grad.bfloat16().float().view(-1, 5))
    assert summed.dtype == torch.bfloat16 and torch.equal(summed, exact.bfloat16())
