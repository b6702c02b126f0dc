"""The end-of-run reading of the curves: overfitting, underfitting, about right."""

from __future__ import annotations

from gru_lm.analysis.diagnosis import diagnose


def _rows(val: list[float], train: float, chars_per_step: int = 1000) -> list[dict]:
    """Metrics rows: a training loss every step, a validation loss every 10 steps."""
    rows = []
    for step in range(1, 10 * len(val) + 1):
        row = {"step": step, "chars": step * chars_per_step, "train_loss": train}
        if step % 10 == 0:
            row["val_loss"] = val[step // 10 - 1]
        rows.append(row)
    return rows


def test_validation_turning_up_is_overfitting():
    line = diagnose(_rows([2.0, 1.6, 1.5, 1.55, 1.6], train=1.2), train_chars=10_000, dropout=0.1)
    assert line.startswith("how it went: overfitting") and "1.500 (step 30)" in line and "--dropout 0.2" in line


def test_training_far_below_validation_after_many_passes_is_overfitting():
    line = diagnose(_rows([2.0, 1.7, 1.6, 1.585, 1.58], train=1.3), train_chars=5_000, dropout=0.0)
    assert "overfitting" in line and "10.0 passes" in line


def test_still_falling_with_no_gap_is_underfitting():
    line = diagnose(_rows([2.5, 2.2, 2.0, 1.9, 1.8], train=1.82), train_chars=10_000_000, dropout=0.0)
    assert line.startswith("how it went: underfitting") and "--hidden-size" in line


def test_levelled_off_is_about_right():
    line = diagnose(_rows([2.0, 1.6, 1.5, 1.498, 1.497], train=1.45), train_chars=1_000_000, dropout=0.2)
    assert line.startswith("how it went: about right")


def test_still_falling_with_a_gap_says_a_longer_run_helps():
    line = diagnose(_rows([2.9, 2.7, 2.6, 2.55, 2.51], train=2.0), train_chars=900_000, dropout=0.0)
    assert line.startswith("how it went: still improving") and "--max-time" in line


def test_too_short_a_run_says_so():
    assert "too few evaluations" in diagnose(_rows([2.0, 1.9], train=1.9), train_chars=1000, dropout=0.0)


def test_train_ends_with_the_reading(monkeypatch, capsys, corpus, tmp_path):
    from tests.conftest import SMOKE, run_main

    code, _, err = run_main(
        monkeypatch, capsys, "train", corpus, "--config", SMOKE, "--max-steps", "40", "--out", tmp_path / "r", "-q"
    )
    last = err.strip().splitlines()[-1]
    assert code == 0 and last.startswith("how it went: ") and "passes over the" in last
