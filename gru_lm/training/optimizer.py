"""The optimiser of a training run: AdamW, decaying only the weight matrices, fused where PyTorch can fuse it."""

from __future__ import annotations

import torch

from gru_lm.training.settings import Settings

#: Devices whose AdamW can run fused (one kernel per parameter for the whole update instead of a dozen
#: element-wise passes over it, each a framework call and a sweep of memory).
FUSED_DEVICES = ("cpu", "cuda")


def build_optimizer(model: torch.nn.Module, settings: Settings) -> torch.optim.Optimizer:
    """AdamW with weight decay on the weight matrices only (not the embedding, not the biases).

    Fused on CPU and CUDA: the same update as the loop over parameters, in one pass each, which matters
    on a CPU where the loop's passes over a few million weights take a noticeable part of a step. A run
    resumed from a checkpoint keeps the implementation it was saved with (load_state_dict restores the
    groups' options, `fused` among them), so its steps go on exactly as before; that holds on another
    device too (a fused run resumed on Apple's MPS runs PyTorch's fused MPS update).
    """
    params = list(model.named_parameters())
    decay = [p for n, p in params if p.dim() >= 2 and not n.startswith("embed")]
    no_decay = [p for n, p in params if p.dim() < 2 or n.startswith("embed")]
    fused = all(p.device.type in FUSED_DEVICES and p.dtype.is_floating_point for _, p in params)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.99),
        fused=fused or None,
    )
