"""Fine-tuning: `train NEW.txt --init-from CKPT` starts a new run from a trained model's weights (init_from.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from gru_lm.analysis.evaluate import measure
from gru_lm.cli.main import main
from gru_lm.errors import UserError
from gru_lm.machine import distributed
from gru_lm.model import checkpoint
from gru_lm.text.corpus import describe_counts
from gru_lm.text.vocab import Vocab
from gru_lm.training import resume
from gru_lm.training.init_from import fresh_settings
from gru_lm.training.settings import resolve
from gru_lm.training.train import build_model, train

from .conftest import ROOT, SMOKE

#: A little more than smoke.toml: longer windows and more streams, so that 200 steps teach the model some English.
RECIPE = {"seq_len": 32, "batch_size": 8, "hidden_size": 64}


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    """Shakespeare to learn from; a few thousand characters of The Time Machine to fine-tune on, and a later
    part of it to score, with only characters every model compared knows."""
    d = tmp_path_factory.mktemp("texts")
    shakespeare = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:100_000]
    machine = (ROOT / "data" / "timemachine.txt").read_text(encoding="utf-8")
    known = set(shakespeare[:90_000])  # the base model's vocabulary: its training part
    plain = "".join(c for c in machine[5_000:] if c in known)
    seen = set(plain[:6_000])
    for name, text in (
        ("shakespeare", shakespeare),
        ("machine_raw", machine[5_000:11_000]),  # raw: with “ ” ’ — _
        ("machine", plain[:6_000]),
        ("held_out", "".join(c for c in plain[16_000:20_000] if c in seen)),
    ):
        (d / f"{name}.txt").write_text(text, encoding="utf-8")
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture(scope="module")
def base(texts, tmp_path_factory) -> Path:
    """A GRU of 64 units trained on Shakespeare for 200 steps: the model to fine-tune."""
    out = tmp_path_factory.mktemp("base") / "run"
    train(texts["shakespeare"], resolve(SMOKE, {**RECIPE, "max_steps": 200, "eval_every": 200}), out, progress=False)
    return out / "best.pt"


def _losses(run_dir: Path) -> list[tuple]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["lr"], r["train_loss"], r.get("val_loss")) for r in rows]


def _tune(texts, base, out, text="machine", should_stop=None, **flags):
    settings, start = fresh_settings(SMOKE, {**RECIPE, "init_from": str(base), **flags})
    return train(texts[text], settings, out, progress=False, start_point=start, should_stop=should_stop)


def test_fine_tuning_beats_the_untouched_model_and_training_from_scratch(texts, base, tmp_path):
    same = {**RECIPE, "max_steps": 40, "eval_every": 40, "val_file": str(texts["held_out"])}
    settings, start = fresh_settings(SMOKE, {**same, "init_from": str(base)})
    train(texts["machine"], settings, tmp_path / "tuned", progress=False, start_point=start)
    train(texts["machine"], resolve(SMOKE, same), tmp_path / "scratch", progress=False)
    ppl = {
        name: measure(path, texts["held_out"])
        for name, path in (
            ("untouched", base),
            ("fine-tuned", tmp_path / "tuned" / "best.pt"),
            ("from scratch", tmp_path / "scratch" / "best.pt"),
        )
    }
    assert all(row["unknown"] == 0 for row in ppl.values())  # the same characters scored for all three
    shown = ", ".join(f"{name} {row['perplexity']:.3f}" for name, row in ppl.items())
    assert ppl["fine-tuned"]["perplexity"] < ppl["untouched"]["perplexity"], shown
    assert ppl["fine-tuned"]["perplexity"] < ppl["from scratch"]["perplexity"], shown


def test_a_fine_tuned_run_is_a_new_run_that_records_where_it_started(texts, base, tmp_path):
    _tune(texts, base, tmp_path / "r", max_steps=12, eval_every=6)
    rows = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    s = resolve(SMOKE, {})
    assert rows[0]["step"] == 1 and rows[0]["lr"] == pytest.approx(s.lr / s.warmup_steps)  # its own warm-up
    state = checkpoint.load(tmp_path / "r" / "last.pt")
    source = checkpoint.load(base)
    assert state["step"] == 12 and state["vocab"] == source["vocab"]
    assert state["init_from"] == {"checkpoint": str(base.resolve()), "step": 200, "vocab_added": ""}
    assert state["settings"]["init_from"] == str(base) and state["model_config"]["hidden_size"] == 64
    assert f'init_from = "{base}"' in (tmp_path / "r" / "config.toml").read_text()
    assert all(int(v["step"]) == 12 for v in state["optimizer"]["state"].values())  # a fresh AdamW, not the source's


def test_new_characters_are_refused_or_added_after_the_old_ones(texts, base, tmp_path):
    with pytest.raises(
        UserError,
        match=r"machine_raw.txt: the training text has characters .* never seen: "
        r".*; pass --extend-vocab to add them",
    ) as refused:
        _tune(texts, base, tmp_path / "refused", text="machine_raw", max_steps=4)
    training_part = texts["machine_raw"].read_text(encoding="utf-8")[:5_400]  # (val_fraction 0.1 of 6,000)
    for c in "“”—":
        assert f"{c!r} ×{training_part.count(c)}" in str(refused.value)  # each one named, with its count
    assert not (tmp_path / "refused").exists()
    _tune(texts, base, tmp_path / "r", text="machine_raw", extend_vocab=True, max_steps=4)
    old, new = checkpoint.load(base), checkpoint.load(tmp_path / "r" / "last.pt")
    added = new["init_from"]["vocab_added"]
    assert new["vocab"] == old["vocab"] + added and {"“", "”", "—"} <= set(added)
    assert list(added) == sorted(added) and not set(added) & set(old["vocab"])
    assert new["model"]["embed.weight"].shape[0] == new["model"]["head.bias"].shape[0] == len(new["vocab"])


def test_added_rows_are_a_fresh_models_and_the_others_the_checkpoints(base):
    source = checkpoint.load(base)
    V = len(source["vocab"])
    settings = resolve(SMOKE, {"hidden_size": 64})
    group = distributed.from_env()
    tuned, _ = build_model(settings, V + 3, group, torch.device("cpu"), source["model"])
    fresh, _ = build_model(settings, V + 3, group, torch.device("cpu"))
    for name, value in tuned.state_dict().items():
        if name in ("embed.weight", "head.weight", "head.bias"):
            assert torch.equal(value[:V], source["model"][name]) and torch.equal(
                value[V:], fresh.state_dict()[name][V:]
            )
        else:
            assert torch.equal(value, source["model"][name])


def test_model_settings_come_from_the_checkpoint_and_may_not_contradict_it(base, tmp_path):
    """Only the shape is taken: the run's own recipe (dropout, learning rate, ...) is its own."""
    settings, _ = fresh_settings(None, {"init_from": str(base), "cell": "gru", "layers": None})  # (None: not given)
    assert (settings.hidden_size, settings.embed_size, settings.layers) == (64, 16, 1)  # not the defaults 256, 64
    for key, value in (("hidden_size", 32), ("layers", 2), ("cell", "rnn"), ("embed_size", 8), ("reset_after", True)):
        flag = "--" + key.replace("_", "-")
        with pytest.raises(UserError, match=f"--init-from: {key} is .* in .*best.pt, not {value!r} \\({flag}\\)"):
            fresh_settings(None, {"init_from": str(base), key: value})
    with pytest.raises(UserError, match=r"hidden_size is 64 in .*, not 32 \(hidden_size in .*smoke.toml\)"):
        fresh_settings(SMOKE, {"init_from": str(base)})  # a config file contradicts it as much as a flag
    with pytest.raises(UserError, match="needs init_from"):
        fresh_settings(None, {"extend_vocab": True})
    with pytest.raises(UserError, match="no such checkpoint"):
        fresh_settings(None, {"init_from": str(tmp_path / "missing.pt")})


def test_resuming_a_fine_tuned_run_is_exact_without_its_source(texts, base, tmp_path):
    source = tmp_path / "source.pt"
    shutil.copyfile(base, source)
    flags = {"text": "machine_raw", "extend_vocab": True, "max_steps": 20, "eval_every": 8}
    _tune(texts, source, tmp_path / "straight", **flags)
    cut = _tune(texts, source, tmp_path / "split", should_stop=lambda step: step == 11, **flags)
    assert cut.interrupted and cut.step == 11
    source.unlink()  # last.pt holds everything: the checkpoint it started from is not read again
    point = resume.load(tmp_path / "split")
    again = {**RECIPE, "init_from": str(source), "extend_vocab": True, "max_steps": 20, "eval_every": 8}
    settings = resume.resume_settings(point, SMOKE, again)  # the same command line, with --resume
    assert settings == resume.resume_settings(point, None, {})  # or none: the run's settings are in last.pt
    assert (settings.init_from, settings.extend_vocab, settings.hidden_size) == (str(source), True, 64)
    with pytest.raises(UserError, match=r"--resume: init_from is .*source.pt.* cannot change"):
        resume.resume_settings(point, SMOKE, {**again, "init_from": str(base)})
    train(texts["machine_raw"], settings, tmp_path / "split", resume=True, progress=False, resume_point=point)
    a, b = (checkpoint.load(tmp_path / d / "last.pt") for d in ("straight", "split"))
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "split")  # bit for bit, every step
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and a["init_from"] == b["init_from"]


def test_checkpoints_from_before_init_from_still_resume_and_start_runs(base, texts, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(base.parent, run)
    state = checkpoint.load(run / "last.pt")
    for key in ("init_from", "extend_vocab"):
        del state["settings"][key]
    torch.save({**state, "version": 1}, run / "last.pt")  # as version 1 wrote it before --init-from
    point = resume.load(run)
    train(
        texts["shakespeare"],
        resume.resume_settings(point, None, {"max_steps": 202}),
        run,
        resume=True,
        progress=False,
        resume_point=point,
    )
    assert checkpoint.load(run / "last.pt")["step"] == 202 and "init_from" not in checkpoint.load(run / "last.pt")
    bare = {
        "model_config": {k: v for k, v in state["model_config"].items() if k not in ("reset_after", "weight_drop")},
        "vocab": state["vocab"],
        "model": state["model"],
    }  # no step, no settings, an older model_config
    torch.save({"format": "gru-lm", "version": 1, **bare}, tmp_path / "bare.pt")
    _tune(texts, tmp_path / "bare.pt", tmp_path / "from_bare", text="machine_raw", extend_vocab=True, max_steps=2)
    assert checkpoint.load(tmp_path / "from_bare" / "last.pt")["init_from"]["step"] == 0


def test_cli_fine_tunes_and_says_how_many_characters_it_added(texts, base, tmp_path, monkeypatch, capsys):
    args = [
        "train",
        texts["machine_raw"],
        "--config",
        SMOKE,
        "--init-from",
        base,
        "--extend-vocab",
        "--hidden-size",
        64,
        "--max-steps",
        3,
        "--out",
        tmp_path / "r",
        "-q",
    ]  # (restating a shape is allowed)
    monkeypatch.setattr(sys, "argv", ["gru-lm", *map(str, args)])  # the console script's main(), in this process
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 0, err
    added = checkpoint.load(tmp_path / "r" / "last.pt")["init_from"]["vocab_added"]
    assert f"starting from the weights of {base}" in err and f"added {len(added)} characters" in err


def test_a_vocabulary_out_of_code_point_order_encodes_each_character_to_its_position():
    vocab = Vocab("\nabz" + "—é")  # an extended vocabulary: the old characters, then the added ones
    ids, dropped = vocab.encode("zé\na—☃b", drop_unknown=True)
    assert ids.tolist() == [3, 5, 0, 1, 4, 2] and dropped == 1
    assert vocab.decode(ids) == "zé\na—b"


def test_unseen_characters_are_named_most_frequent_first():
    assert describe_counts({"a": 2, "\n": 1, "b": 30}) == "'b' ×30, 'a' ×2, '\\n' ×1"
    assert describe_counts({chr(0x4E00 + i): i + 1 for i in range(25)}, most=2) == "'丘' ×25, '丗' ×24 and 23 more"
