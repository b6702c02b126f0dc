"""Write the benchmarks' summary tables into the docs, where a block asks for one.

    python bench/include.py           # rewrite every block in docs/*.md from its results files
    python bench/include.py --check   # only list the blocks that differ (exit 1 if any): what the tests run

A block is two comment lines with the table between them, which Markdown does not show:

    <!-- table rnn_speed bench/results/rnn_speed_xeon_amx.json -->
    ...the table bench/tables.py renders from that file...
    <!-- end table -->

The first line names the table (a renderer named in bench/tables.py) and the results files it reads. So after a
benchmark writes new results, one command brings the docs up to date, and an edit by hand inside a block, or
a results file changed without the docs, fails the tests.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.tables import render

BLOCK = re.compile(r"(<!-- table (\w+) ([^>]+?) -->\n)(.*?)(<!-- end table -->)", re.S)


@dataclass(frozen=True)
class Block:
    doc: Path
    kind: str
    files: list[str]
    text: str

    def current(self) -> str:
        return render(self.kind, self.files) + "\n"


def block(doc: Path, m: re.Match) -> Block:
    return Block(doc, m.group(2), m.group(3).split(), m.group(4))


def blocks(doc: Path) -> list[Block]:
    return [block(doc, m) for m in BLOCK.finditer(doc.read_text(encoding="utf-8"))]


def docs() -> list[Path]:
    return sorted((ROOT / "docs").glob("*.md"))


def stale() -> list[Block]:
    """The blocks whose table differs from what their results files render now."""
    return [b for doc in docs() for b in blocks(doc) if b.text != b.current()]


def rewrite(doc: Path) -> int:
    """Render every block of one document afresh; the number of blocks that changed."""
    changed = 0

    def fresh(m: re.Match) -> str:
        nonlocal changed
        table = block(doc, m).current()
        changed += table != m.group(4)
        return m.group(1) + table + m.group(5)

    text = BLOCK.sub(fresh, doc.read_text(encoding="utf-8"))
    if changed:
        doc.write_text(text, encoding="utf-8")
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="list the stale blocks and exit 1 if any; write nothing")
    args = ap.parse_args()
    if args.check:
        old = stale()
        for b in old:
            print(f"{b.doc.relative_to(ROOT)}: the {b.kind} table of {' '.join(b.files)} is not current")
        raise SystemExit(1 if old else 0)
    for doc in docs():
        if n := rewrite(doc):
            print(f"{doc.relative_to(ROOT)}: {n} table{'s' * (n > 1)} rewritten")


if __name__ == "__main__":
    main()
