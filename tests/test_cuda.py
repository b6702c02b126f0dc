"""The same checks on a CUDA device, where there is one (skipped elsewhere): the fast path against
torch.nn.GRU and the reference loop, and training with --device auto in float32 and bfloat16."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gru_lm.machine.device import pick_device
from gru_lm.model.cells import GRU, RNN
from gru_lm.training.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def test_auto_picks_cuda():
    assert pick_device("auto").type == "cuda"


@pytest.mark.parametrize("layers", [1, 2])
def test_fast_path_matches_torch_gru_on_cuda(layers, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # cuDNN's GRU would round products to TF32
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    ours, ref = GRU(16, 32, layers, reset_after=True).cuda(), nn.GRU(16, 32, layers).cuda()
    ref.load_state_dict(ours.state_dict())
    x, h0 = torch.randn(20, 5, 16, device="cuda"), torch.randn(layers, 5, 32, device="cuda")
    (y1, h1), (y2, h2) = ours(x, h0), ref(x, h0)
    torch.testing.assert_close(y1, y2, atol=1e-4, rtol=1e-4)
    (y1.square().sum() + h1.sum()).backward()
    (y2.square().sum() + h2.sum()).backward()
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-3, rtol=1e-3, msg=n)


@pytest.mark.parametrize("cls, kw", [(GRU, {"reset_after": False}), (GRU, {"reset_after": True}), (RNN, {})])
def test_fast_path_matches_the_reference_loop_on_cuda(cls, kw):
    torch.manual_seed(0)
    fast = cls(8, 24, 2, **kw).cuda().double()
    slow = cls(8, 24, 2, fast=False, **kw).cuda().double()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(30, 4, 8, device="cuda", dtype=torch.float64)
    (a, ha), (b, hb) = fast(x), slow(x)
    torch.testing.assert_close(a, b)
    (a.sum() + ha.square().sum()).backward()
    (b.sum() + hb.square().sum()).backward()
    for p, q in zip(fast.parameters(), slow.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_training_on_cuda_in_float32_and_bfloat16(corpus, smoke, tmp_path):
    losses = {}
    for dtype in ("float32", "bfloat16"):
        s = smoke(device="auto", dtype=dtype, max_steps=60, eval_every=30, hidden_size=64)
        r = train(corpus, s, tmp_path / dtype, progress=False)
        rows = [json.loads(ln) for ln in (tmp_path / dtype / "metrics.jsonl").read_text().splitlines()]
        assert r.step == 60 and rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.3
        state = torch.load(tmp_path / dtype / "last.pt", weights_only=True)
        assert state["hidden"].device.type == "cpu" and "cuda" in state["rng"]
        losses[dtype] = [row["train_loss"] for row in rows]
    assert losses["float32"] != losses["bfloat16"]  # bfloat16 products round differently: the flag took effect
