"""The README's two commands (set up and train; run the tests) are what CI runs, word for word."""

from __future__ import annotations

import re

from .conftest import ROOT


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b.strip() for b in re.findall(r"```sh\n(.*?)\n```", readme, re.S)]
    setup = [b for b in blocks if "pip install" in b and "gru-lm train" in b]
    tests = [b for b in blocks if b.endswith("-m pytest")]
    assert len(setup) == 1 and len(tests) == 1, (setup, tests)
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert setup[0] in ci and tests[0] in ci
