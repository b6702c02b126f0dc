"""The README: its two commands are what CI runs, word for word; it stays short; the flags it and docs/ name exist."""

from __future__ import annotations

import re

from .conftest import ROOT


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b.strip() for b in re.findall(r"```sh\n(.*?)\n```", readme, re.S)]
    setup = [b for b in blocks if "pip install" in b and "gru-lm train" in b]
    tests = [b for b in blocks if b.endswith("-m pytest")]
    assert len(setup) == 1 and len(tests) == 1, (setup, tests)
    ci = "\n".join(ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if not ln.startswith("#"))
    assert setup[0] in ci  # line for line, continuation backslashes included
    assert tests[0] in ci.splitlines()


def test_the_readme_is_a_handbook_not_a_notebook():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


#: Flags of other tools the documents show: ruff, pip, torchrun, headless Chromium.
OTHER_TOOLS = {"--check", "--help", "--index-url", "--nnodes", "--node", "--rdzv", "--standalone"}
CHROMIUM = ("--disable-", "--headless", "--no-first-run", "--no-sandbox", "--screenshot", "--user-data-dir", "--window")


def test_every_flag_the_documents_name_exists():
    import typer.main

    from gru_lm.cli.main import app

    known = set(OTHER_TOOLS)
    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            known.update(param.opts, getattr(param, "secondary_opts", []))
    for script in (ROOT / "bench").glob("*.py"):
        known.update(re.findall(r'add_argument\(\s*"(--[a-z0-9-]+)"', script.read_text(encoding="utf-8")))
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", doc.read_text(encoding="utf-8")))
        unknown = sorted(f for f in named - known if not f.startswith(CHROMIUM))
        assert not unknown, f"{doc.name} names flags that no command has: {unknown}"
