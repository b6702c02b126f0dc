"""The training optimiser: AdamW decaying only weight matrices, fused on CPU with the loop's arithmetic."""

import copy

import torch

from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.training.optimizer import build_optimizer
from gru_lm.training.settings import Settings


def _model(seed: int = 0) -> CharModel:
    torch.manual_seed(seed)
    return CharModel(ModelConfig(11, "gru", 16, 2, 8))


def _steps(model: CharModel, opt: torch.optim.Optimizer, n: int = 3) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def test_decay_only_on_weight_matrices():
    opt = build_optimizer(_model(), Settings(weight_decay=0.05))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    names = {id(p): n for n, p in _model().named_parameters()}
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_fused_on_cpu_matches_the_loop():
    settings = Settings(lr=1e-2, weight_decay=0.1)
    fused_model, loop_model = _model(), _model()
    fused = build_optimizer(fused_model, settings)
    assert all(g["fused"] for g in fused.param_groups)
    loop = build_optimizer(loop_model, settings)
    for g in loop.param_groups:
        g["fused"] = None
    _steps(fused_model, fused)
    _steps(loop_model, loop)
    for a, b, start in zip(fused_model.parameters(), loop_model.parameters(), _model().parameters()):
        assert not torch.equal(a, start)  # the steps moved every weight
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_resumed_run_keeps_the_implementation_it_was_saved_with():
    settings = Settings()
    old_model = _model()
    old = build_optimizer(old_model, settings)
    for g in old.param_groups:
        g["fused"] = None  # as a checkpoint written before the optimiser was fused
    _steps(old_model, old, 1)
    resumed_model = _model()
    resumed_model.load_state_dict(old_model.state_dict())
    resumed = build_optimizer(resumed_model, settings)
    resumed.load_state_dict(copy.deepcopy(old.state_dict()))  # as read back from a checkpoint
    assert not any(g["fused"] for g in resumed.param_groups)
    _steps(old_model, old, 2)  # the uninterrupted run and the resumed one take the same steps
    _steps(resumed_model, resumed, 2)
    for a, b in zip(old_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
