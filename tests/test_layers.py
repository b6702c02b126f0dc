"""The package's layers hold: what the analysis commands load, and what validating settings loads."""

from __future__ import annotations

import subprocess
import sys

from .conftest import CLI_ENV


def _loaded_after(imports: str) -> set[str]:
    """The modules a fresh interpreter holds after running `imports`."""
    code = f"import sys\n{imports}\nprint('\\n'.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=CLI_ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_plot_perplexity_and_inspect_never_load_the_training_loop():
    loaded = _loaded_after("import gru_lm.analysis.report, gru_lm.analysis.evaluate, gru_lm.analysis.inspect_view")
    assert "gru_lm.analysis.report" in loaded
    assert not {m for m in loaded if m.startswith("gru_lm.training")}
    # the command line itself knows the training settings (train's options are made from them), not the loop
    with_cli = _loaded_after("import gru_lm.cli.main")
    assert {m for m in with_cli if m.startswith("gru_lm.training")} == {"gru_lm.training", "gru_lm.training.settings"}


def test_settings_validate_without_torch():
    loaded = _loaded_after("from gru_lm.training.settings import resolve; resolve(None, {'fit_candidates': '1x384'})")
    assert "gru_lm.training.settings" in loaded and "torch" not in loaded
