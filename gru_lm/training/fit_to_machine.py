"""Fitting the model to the machine: for a run with a time budget, the size that will do best in it here.

The best model for a budget depends on how many characters it sees in it, which depends on the
machine: a CPU with bfloat16 matrix units trains a GRU of 2 × 512 more than twice as fast as one
with AVX2 alone. So before its clock starts, a run with fit_to_machine measures this machine's
characters per second for each candidate of fit_candidates.json (a few real training steps each, the kernels
already built), predicts the characters each would see in --max-time, and trains the candidate
whose loss curve, fitted on the sweeps (bench/fit_sizes.py, from bench/results/sweep.jsonl), is
lowest there. The curves are loss against characters seen, L = a + b·(C / 10⁶)^(−α): the choice
follows the characters a machine affords, not the name of its CPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gru_lm.machine.cpu import cpu_model, isa_level
from gru_lm.machine.memory import keep_freed_memory
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.model.kernels import compiled
from gru_lm.text.batches import StreamBatcher
from gru_lm.training.settings import FIT_CANDIDATES_FILE, Settings, resolve

#: The share of a time budget that goes to training steps rather than evaluations and checkpoints.
TRAINING_SHARE = 0.93


@dataclass
class Candidate:
    name: str
    settings: dict  # what the candidate sets: hidden_size, layers and its recipe (lr, dropout, ...)
    a: float  # the loss it tends to with unlimited characters
    b: float  # how far above that it is at 10⁶ characters

    def loss(self, chars: float, alpha: float) -> float:
        return self.a + self.b * (max(chars, 1.0) / 1e6) ** (-alpha)

    def fitted(self) -> bool:
        """False for a candidate added to fit_candidates.json whose curve bench/fit_sizes.py has not fitted yet
        (a = b = 0)."""
        return (self.a, self.b) != (0.0, 0.0)

    def label(self) -> str:
        return f"{self.settings['layers']} × {self.settings['hidden_size']}"


def load_table(path: Path | None = None, names: str = "") -> tuple[float, list[Candidate]]:
    """The exponent α and the candidates (those named, comma-separated, or all), as bench/fit_sizes.py wrote them."""
    table = json.loads((path or FIT_CANDIDATES_FILE).read_text())
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    found = [Candidate(c["name"], c["settings"], c["a"], c["b"]) for c in table["candidates"]]
    return table["alpha"], [c for c in found if not wanted or c.name in wanted]


def candidate_settings(base: Settings, candidate: Candidate) -> Settings:
    """The run's settings with the candidate's size and recipe, no longer to be fitted."""
    return resolve(None, {**candidate.settings, "fit_to_machine": False}, base.to_dict())


def measure_rate(
    settings: Settings,
    vocab_size: int,
    train_ids: torch.Tensor,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    seconds: float = 1.2,
) -> float:
    """Characters per second of real training steps of this size on this machine (after a warm-up)."""
    torch.manual_seed(settings.seed)
    s = settings
    model = (
        CharModel(
            ModelConfig(
                vocab_size, s.cell, s.hidden_size, s.layers, s.embed_size, s.dropout, s.reset_after, s.weight_drop
            )
        )
        .to(device)
        .train()
    )
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr)
    batcher = StreamBatcher(train_ids, s.batch_size, s.seq_len, s.seed)
    h = model.init_state(s.batch_size, device)
    steps, t0 = 0, 0.0
    while steps < 3 or time.perf_counter() - t0 < seconds or steps < 6:
        if steps == 2:  # the first steps allocate and warm the caches
            t0 = time.perf_counter()
        x, y = (t.to(device) for t in batcher.get(0, steps % batcher.windows(0)))
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss, h = model.loss(x, y, h)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        h = h.detach()
        steps += 1
    return (steps - 2) * s.batch_size * s.seq_len / (time.perf_counter() - t0)


def choose(candidates: list[Candidate], rates: list[float], seconds: float, alpha: float) -> list[tuple]:
    """(predicted loss, candidate, chars/s) of each candidate for a budget of `seconds`, best first."""
    budget = seconds * TRAINING_SHARE
    return sorted(((c.loss(r * budget, alpha), c, r) for c, r in zip(candidates, rates)), key=lambda row: row[0])


def fit_to_machine(
    settings: Settings,
    vocab_size: int,
    train_ids: torch.Tensor,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    table: Path | None = None,
) -> tuple[Settings, str]:
    """The candidate predicted best for the characters this machine affords in settings.max_time,
    and one line that says what was picked and why."""
    alpha, named = load_table(table, settings.fit_candidates)
    candidates = [c for c in named if c.fitted()]
    if not candidates:
        return (
            settings,
            f"fit to this machine: no fitted candidate among {settings.fit_candidates!r}; the config's size",
        )
    if device.type == "cpu":
        compiled()
    keep_freed_memory()
    rates = [
        measure_rate(candidate_settings(settings, c), vocab_size, train_ids, device, autocast_dtype) for c in candidates
    ]
    (loss, best, rate), *rest = choose(candidates, rates, settings.max_time, alpha)
    budget = settings.max_time * TRAINING_SHARE
    others = "; ".join(f"{c.label()} ({c.name}) {r / 1000:.1f}k chars/s → {p:.3f}" for p, c, r in rest)
    dtype = "bfloat16" if autocast_dtype == torch.bfloat16 else "float32"
    line = (
        f"fit to this machine ({cpu_model()}, {isa_level()}, {dtype}): {best.label()} ({best.name}) at "
        f"{rate / 1000:.1f}k chars/s sees ~{rate * budget / 1e6:.1f}M characters in {settings.max_time:.0f} s, "
        f"predicted validation loss {loss:.3f} (others: {others}); --hidden-size or --layers choose yourself"
    )
    return candidate_settings(settings, best), line
