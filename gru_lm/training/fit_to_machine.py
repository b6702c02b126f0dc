"""Fitting the model to the text and the machine: for a run with a time budget, the size and recipe that will do
best in it, on this text, here.

What a run can learn in its budget depends on three things it can measure before the clock starts:
- the machine: a CPU with bfloat16 matrix units trains a GRU of 2 × 512 more than twice as fast as one with
  AVX2 alone, and a large alphabet makes the read-out the larger part of every step. So the run measures
  this machine's characters per second for each candidate of fit_candidates.json (a few real training
  steps each, on this text's alphabet, the kernels already built);
- the text's size: the characters a candidate sees in the budget are so many passes over the text. A
  repeated character teaches less than a new one, so the characters seen are discounted as the
  data-constrained scaling law of Muennighoff et al. (2023, "Scaling Data-Constrained Language Models")
  has it: U unique characters seen p times are worth U·(1 + R·(1 − e^(−(p−1)/R))) new ones, R = 15;
- the alphabet: the embedding grows with it.

The candidates' loss curves, L = a + b·(C / 10⁶)^(−α) against the characters C seen, were fitted on sweeps
of Tiny Shakespeare (bench/fit_sizes.py, from bench/results/sweep.jsonl), a text of about a million training
characters that its runs passed over many times. They rank the candidates, never predict this text's loss:
each candidate is placed on them at the characters of Tiny Shakespeare worth as much as what it would see
of this text. The recipe then follows the passes: no dropout under four passes (a character seen a few
times is not yet learnt by heart), more dropout and weight drop the more often each character comes back;
and the evaluations are spaced so that they take a small share of the budget.

A config that names its candidates (the Tiny Shakespeare configs) keeps their recipes as they are. A setting
the user gave (a flag, or a keyword of gru_lm.train) keeps its value over any recipe, even where it equals
the built-in default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch

from gru_lm.machine.cpu import cpu_model, isa_level
from gru_lm.machine.memory import keep_freed_memory
from gru_lm.model.char_model import CharModel, ModelConfig
from gru_lm.model.kernels import compiled
from gru_lm.text.batches import StreamBatcher
from gru_lm.training.optimizer import build_optimizer
from gru_lm.training.settings import DEFAULTS, FIT_CANDIDATES_FILE, Settings, updated

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


def candidate_settings(base: Settings, candidate: Candidate, given: Collection[str] = ()) -> Settings:
    """The run's settings with the candidate's size and recipe, less the settings the user gave, no longer to
    be fitted."""
    recipe = {k: v for k, v in candidate.settings.items() if k not in given}
    return updated(base, {**recipe, "fit_to_machine": False}, FIT_CANDIDATES_FILE.name)


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
    opt = build_optimizer(model, s)  # the run's own optimiser, so the rate is the run's
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


#: Muennighoff et al.'s R*: after about this many repeats a character is worth little more.
REPEAT_HALF_VALUE = 15.0
#: The training characters of the text the curves were fitted on (Tiny Shakespeare's training part).
CURVE_TEXT_CHARS = 1_003_854
#: The most passes over the text a fitted run makes: past them a model mostly learns the training text by heart,
#: so a budget that affords more ends sooner (its schedule fitted to the shorter run).
MAX_PASSES = 16
#: The highest peak learning rate of a run that the passes rather than its budget limit (with time to spare, a
#: gentler rate does better), and of a run on a large alphabet: thousands of rare characters, whose rows of the
#: embedding and read-out Adam moves a full step whenever they occur.
GENTLE_LR = 0.004
#: An alphabet of more than this many characters is large.
LARGE_ALPHABET = 1000
#: Evaluations in a fitted run, and the share of its budget they may take.
EVALUATIONS = 10
EVALUATION_SHARE = 0.04
#: Passes over the text at which dropout steps up, and the dropout each step takes. A model that sees its text
#: fewer than four times is still learning what the text has in common, not its particular lines (Muennighoff
#: et al. find up to about four repeats nearly as good as new text): dropout there only slows it.
DROPOUT_STEPS = ((4.0, 0.1), (6.0, 0.2), (10.0, 0.3))
#: From this many passes on, weight drop joins dropout.
WEIGHT_DROP_PASSES = 10.0


def worth(seen: float, unique: float) -> float:
    """New characters that `seen` characters of a text of `unique` characters are worth (see the docstring)."""
    if seen <= unique:
        return seen
    return unique * (1.0 + REPEAT_HALF_VALUE * (1.0 - math.exp(-(seen / unique - 1.0) / REPEAT_HALF_VALUE)))


def curve_chars(seen: float, unique: float) -> float:
    """The characters of the curves' text worth as much as `seen` characters of a text of `unique` ones."""
    w, u = worth(seen, unique), CURVE_TEXT_CHARS
    if w <= u:
        return w
    left = 1.0 - (w / u - 1.0) / REPEAT_HALF_VALUE
    return u * (1.0 - REPEAT_HALF_VALUE * math.log(left)) if left > 1e-9 else math.inf


def choose(
    candidates: list[Candidate],
    rates: list[float],
    seconds: float,
    alpha: float,
    unique: float = CURVE_TEXT_CHARS,
    max_passes: float = MAX_PASSES,
) -> list[tuple]:
    """(predicted loss on the curves, candidate, chars/s) of each candidate for a budget of `seconds` on a text of
    `unique` training characters, at most max_passes over it, best first."""
    rows = [
        (c.loss(curve_chars(seen_in(r, seconds, unique, max_passes), unique), alpha), c, r)
        for c, r in zip(candidates, rates)
    ]
    return sorted(rows, key=lambda row: row[0])


def seen_in(rate: float, seconds: float, unique: float, max_passes: float = MAX_PASSES) -> float:
    """The characters a run at `rate` trains on in a budget of `seconds`: as many as the budget affords, up to
    max_passes over a text of `unique` characters."""
    return min(rate * seconds * TRAINING_SHARE, max_passes * unique)


def embed_size_for(vocab_size: int) -> int:
    """The embedding of an alphabet: 64 up to a few hundred characters, growing as 2·√V (in steps of 32) for
    the thousands of a Chinese or Japanese text, at most 256."""
    return max(64, min(256, 32 * round(2 * math.sqrt(vocab_size) / 32)))


def dropout_for(passes: float) -> tuple[float, float]:
    """(dropout, weight drop) for a run that passes over its text this many times."""
    dropout = 0.0
    for at_least, rate in DROPOUT_STEPS:
        if passes >= at_least:
            dropout = rate
    return dropout, (0.1 if passes >= WEIGHT_DROP_PASSES else 0.0)


def evaluation_for(settings: Settings, seconds: float, rate: float, passes: float) -> dict:
    """eval_every and eval_chars for EVALUATIONS evaluations (at least one a pass, where the run makes more)
    taking EVALUATION_SHARE of the `seconds` the run trains (an evaluation runs forward only, about three times
    as fast per character as training)."""
    steps = rate * seconds * TRAINING_SHARE / (settings.batch_size * settings.seq_len)
    evaluations = max(EVALUATIONS, passes)
    chars = EVALUATION_SHARE * seconds * 3 * rate / evaluations
    return {
        "eval_every": max(25, int(steps / evaluations)),
        "eval_chars": int(min(1_000_000, max(20_000, chars))),
    }


def _size(candidate: Candidate) -> dict:
    return {"hidden_size": candidate.settings["hidden_size"], "layers": candidate.settings["layers"]}


def text_recipe(
    settings: Settings, seconds: float, rate: float, passes: float, vocab_size: int, given: Collection[str] = ()
) -> dict:
    """What the text decides of the recipe for a run of `seconds` making `passes` passes, less what the user set
    (unset_by_user)."""
    dropout, weight_drop = dropout_for(passes)
    recipe = {"dropout": dropout, "weight_drop": weight_drop, "embed_size": embed_size_for(vocab_size)}
    recipe.update(evaluation_for(settings, seconds, rate, passes))
    return {**unset_by_user(settings, recipe, given), "max_time": float(math.ceil(seconds))}


def unset_by_user(settings: Settings, values: dict, given: Collection[str] = ()) -> dict:
    """The values whose settings the user left alone: not given (as a flag or keyword), and still at their
    built-in defaults (one that a config file changed is the user's too, and stays)."""
    return {k: v for k, v in values.items() if k not in given and getattr(settings, k) == DEFAULTS[k]}


def _measure(
    settings: Settings, candidates: list[Candidate], vocab_size: int, train_ids: torch.Tensor, device, autocast_dtype
) -> list[float]:
    """Each candidate's characters per second here, with a line on stderr first (it takes a few seconds)."""
    if device.type == "cpu":
        if compiled.cache_info().currsize == 0:
            print("loading the recurrent kernels (built once per machine: a minute the first time)", file=sys.stderr)
        compiled()
    keep_freed_memory()
    print(f"measuring this machine's speed for {len(candidates)} candidate sizes ...", file=sys.stderr)
    return [
        measure_rate(candidate_settings(settings, c), vocab_size, train_ids, device, autocast_dtype) for c in candidates
    ]


def fit_to_machine(
    settings: Settings,
    vocab_size: int,
    train_ids: torch.Tensor,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    table: Path | None = None,
    given: Collection[str] = (),
) -> tuple[Settings, str]:
    """The candidate predicted best for the characters this machine affords in settings.max_time on this text,
    its recipe fitted to the text, and one line that says what was picked and why. `given` names the settings
    the user gave (flags, keywords), which keep their values."""
    alpha, named = load_table(table, settings.fit_candidates)
    candidates = [c for c in named if c.fitted()]
    if not candidates:
        return (
            settings,
            f"fit to this machine: no fitted candidate among {settings.fit_candidates!r}; the config's size",
        )
    own_recipes = bool(settings.fit_candidates)  # a config's candidates: its recipes as they stand
    base = settings
    if not own_recipes and unset_by_user(settings, {"embed_size": None}, given):  # measured at the embedding it gets
        base = dataclasses.replace(settings, embed_size=embed_size_for(vocab_size))
    rates = _measure(base, candidates, vocab_size, train_ids, device, autocast_dtype)
    max_passes = math.inf if own_recipes else MAX_PASSES
    (_, best, rate), *rest = choose(candidates, rates, settings.max_time, alpha, len(train_ids), max_passes)
    affordable = seen_in(rate, settings.max_time, len(train_ids), math.inf)
    seen = min(affordable, max_passes * len(train_ids))
    if own_recipes:
        chosen = candidate_settings(base, best, given)
    else:  # the candidate's recipe, then the text's, where the user set nothing else
        recipe = unset_by_user(settings, best.settings, given)
        passes_limit = seen < affordable  # not the budget
        seconds = seen / (rate * TRAINING_SHARE) if passes_limit else settings.max_time
        recipe.update(text_recipe(settings, seconds, rate, seen / len(train_ids), vocab_size, given))
        if (passes_limit or vocab_size > LARGE_ALPHABET) and "lr" in recipe:
            recipe["lr"] = min(recipe["lr"], GENTLE_LR)
        chosen = updated(base, {**recipe, **_size(best), "fit_to_machine": False}, FIT_CANDIDATES_FILE.name)
    return chosen, _fit_line(chosen, best, rate, seen, affordable, rest, len(train_ids), vocab_size, autocast_dtype)


def _fit_line(
    chosen: Settings,
    best: Candidate,
    rate: float,
    seen: float,
    affordable: float,
    rest: list[tuple],
    train_chars: int,
    vocab_size: int,
    autocast_dtype: torch.dtype | None,
) -> str:
    """What was picked and why: `seen` characters trained on of the `affordable` the budget allowed."""
    dtype = "bfloat16" if autocast_dtype == torch.bfloat16 else "float32"
    others = "; ".join(f"{c.label()} {r / 1000:.1f}k chars/s" for _, c, r in rest)
    passes = f"{seen / train_chars:.1f} passes over the text"
    if seen < affordable:
        passes += (
            f" (the budget affords {affordable / train_chars:.0f}; past {MAX_PASSES} a model mostly learns the text "
            "by heart, so the run ends sooner)"
        )
    return (
        f"fit to this text and machine ({cpu_model()}, {isa_level()}, {dtype}): {train_chars:,} training "
        f"characters, {vocab_size:,} distinct. {best.label()} ({best.name}) at {rate / 1000:.1f}k chars/s sees "
        f"~{seen / 1e6:.1f}M characters in {chosen.max_time:.0f} s, {passes}: embedding {chosen.embed_size}, "
        f"dropout {chosen.dropout}, weight drop {chosen.weight_drop}, lr {chosen.lr}, an evaluation every "
        f"{chosen.eval_every} steps on {chosen.eval_chars:,} characters (others: {others}). The sizes are ranked "
        "on loss curves measured on Tiny Shakespeare, with repeated passes discounted; --hidden-size or --layers "
        "choose yourself"
    )
