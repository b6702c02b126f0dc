"""Reading checkpoints written by earlier versions of the format: one migration per version step.

checkpoint.load calls upgrade() on every file it reads; a checkpoint of the current version passes through
unchanged. Version 1 grew keys over its life (a model's reset_after and weight_drop, the run's partial sums of
the training loss, the machine it was trained on, eval_chars, init_from and extend_vocab); a version 1 file
may lack any of them. Version 2 is version 1 with every one of those keys present, so the rest of gru-lm
reads a checkpoint's keys directly. Version 3 adds val_blocks, the number of blocks the validation split is
spread over; every earlier run kept the last val_fraction of its text, one block. Each default below is what the
code that wrote a file without the key did.
"""

from __future__ import annotations

from typing import Any

#: The format version this gru-lm writes.
CURRENT = 3

_V1_MODEL_CONFIG = {"reset_after": False, "weight_drop": 0.0}
# Runs from before --eval-chars validated on the whole split; before --init-from every run started fresh.
_V1_SETTINGS = {"eval_chars": 0, "init_from": "", "extend_vocab": False}
# The partial sums of the metrics line and the evaluations without a new best, where a run was cut.
_V1_RUN_STATE = {"loss_sum": 0.0, "loss_n": 0, "stale_evals": 0}
_V1_MACHINE = "not recorded (trained before checkpoints named their machine)"


def _v1_to_v2(state: dict[str, Any]) -> dict[str, Any]:
    out = {**state, "version": 2, "model_config": {**_V1_MODEL_CONFIG, **state["model_config"]}}
    if isinstance(state.get("settings"), dict):  # a training checkpoint, not a bare model
        out["settings"] = {**_V1_SETTINGS, **state["settings"]}
        out.update({k: v for k, v in _V1_RUN_STATE.items() if k not in state})
        out.setdefault("machine", _V1_MACHINE)
    return out


def _v2_to_v3(state: dict[str, Any]) -> dict[str, Any]:
    out = {**state, "version": 3}
    if isinstance(state.get("settings"), dict):
        out["settings"] = {"val_blocks": 1, **state["settings"]}
    return out


_STEPS = {1: _v1_to_v2, 2: _v2_to_v3}


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint in the current format: each step from its version to the next, in turn.

    The caller has checked that state["version"] is one of supported_versions() and that the model's
    three keys (model_config, vocab, model) are there.
    """
    while state["version"] != CURRENT:
        state = _STEPS[state["version"]](state)
    return state


def supported_versions() -> set[int]:
    return {*_STEPS, CURRENT}
