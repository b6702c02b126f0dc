"""Build varied text corpora for sweeps from Debian packages, into a folder outside the repository.

    python bench/corpora.py                      # build what is missing in /work/corpora
    python bench/corpora.py --out DIR            # another folder (never one inside this checkout)
    python bench/corpora.py --force              # rebuild corpora that are already there
    python bench/corpora.py --code-mb 20         # a larger C corpus (default 12)

Each corpus is one UTF-8 .txt file; the names are fixed so that other scripts can refer to them. A corpus
already built is kept (its figures are still measured and printed) unless --force. Everything is
deterministic: files are taken in a fixed order (the package's own `dpkg -L` order, or sorted paths), caps
cut only at file or entry boundaries, and nothing is random. A package that is missing is installed with
apt-get (root only); if that fails, that corpus is skipped with a message and the exit status is 1.
MB here is 10^6 bytes.

How each corpus is made:

prose_bible.txt   King James Bible from `bible-kjv-text` (/usr/lib/bible.data, about 4.1 MB of text). The
                  file is 68 blocks of 64 KiB, each compressed with Unix `compress` (LZW) and decompressed
                  here with `gzip -dc`; the verse references ("Ge1:1 ") are stripped, so it is one verse a
                  line, a blank line between books, in book order.
prose_small.txt   About 120 KB of English from the fortune cookie files of `fortunes` (wisdom, humorists,
                  people, in that order): ANSI colours and overstriking (x BACKSPACE y) removed, the '%'
                  separators kept as blank lines, cut at an entry boundary.
prose_large.txt   About 10 MB of English from the Python documentation (`python3-doc`, which pulls in
                  python3.X-doc): the reStructuredText sources it ships (html/_sources/**/*.rst.txt) as they
                  are, markup included, in sorted path order, a blank line between files, cut at a file
                  boundary.
code_c.txt        C headers under /usr/include (every *.h and *.c there, /usr/include/c++ left out, symlinks
                  skipped), sorted by path, each after a `/* FILE: path */` line, up to --code-mb MB (cut at a
                  file boundary). What it holds depends on the -dev packages installed; the manifest lists
                  the packages that own the files used. Files that are not UTF-8 are read as Latin-1.
chinese.txt       Chinese classical poetry and sayings from `fortunes-zh` (chinese, song100, tang300, in the
                  package's order), about 1.0 M characters (2.1 MB) and ~6,200 distinct. Each file is decoded
                  strictly as UTF-8, or else GB18030 (a superset of GB2312 and GBK), or else Big5 (all three are
                  UTF-8 in Debian 12); ANSI colour codes removed, '%' separators kept as blank lines.
rare_symbols.txt  About 1.5 MB of fortune cookies in several languages, mostly German so that the other
                  languages' letters stay rare: `fortunes-de` (1.1 MB), then 100 KB each of `fortunes-cs`,
                  `fortunes-pl`, `fortunes-es`, `fortunes-eo`, all of `fortunes-ga` (Irish) and 8 KB of
                  `fortunes-ru`; the offensive (off/) files are left out. About 225 distinct characters, some
                  50 of them occurring fewer than 10 times.

Held out: three more, built after the fit's rule was set from the six above. Their runs check the rule; they
are not used to change it.

held_perl.txt     About 6 MB of Perl: the *.pm and *.pl files of `perl-modules-5.NN` (/usr/share/perl/5.*),
                  sorted by path, each after a `# FILE: path` line, cut at a file boundary; POD included.
held_russian.txt  Russian fortune cookies, all of `fortunes-ru` in the package's order (offensive files left
                  out), '%' separators kept as blank lines.
held_japanese.txt About 3 MB of Japanese manual pages from `manpages-ja` and `manpages-ja-dev` (roff source,
                  decompressed, sorted by path, a blank line between pages, cut at a page boundary): kana,
                  thousands of kanji and the roff macros around them.

It prints, for each corpus, its size, characters, distinct characters and how many of those occur fewer than
10 times, and writes the same figures with the source packages to OUT/manifest.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("/work/corpora")
MB = 1_000_000
FORTUNES = "/usr/share/games/fortunes/"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
OVERSTRIKE = re.compile(r".\x08")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
FORTUNE_SEP = re.compile(r"^%[ \t]*$", re.MULTILINE)
VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


class PackageError(RuntimeError):
    """A Debian package that is needed is not installed and could not be installed."""


@dataclass
class Built:
    """A corpus's text, the encodings its source files were read in (with counts), and packages found on the way."""

    text: str
    encodings: Counter[str] = field(default_factory=Counter)
    packages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Corpus:
    name: str
    packages: tuple[str, ...]
    source: str
    build: Callable[[argparse.Namespace], Built]


# --- Debian packages ------------------------------------------------------------------------------------


def is_installed(package: str) -> bool:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], capture_output=True, text=True, check=False
    )
    return r.returncode == 0 and r.stdout.startswith("ii")


def ensure_packages(packages: Iterable[str]) -> None:
    """Install the packages that are missing with apt-get; PackageError, with a clear message, if that fails."""
    missing = [p for p in packages if not is_installed(p)]
    if not missing:
        return
    hint = f"install them by hand: apt-get install {' '.join(missing)}"
    if os.geteuid() != 0:
        raise PackageError(f"missing packages {', '.join(missing)}; not root, so {hint}")
    print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    r = subprocess.run(cmd, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, check=False)
    if r.returncode != 0 or not all(is_installed(p) for p in missing):
        raise PackageError(f"apt-get could not install {', '.join(missing)} (exit {r.returncode}); {hint}")


def package_files(package: str) -> list[Path]:
    """The regular files (not symlinks) of an installed package, in `dpkg -L` order."""
    out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
    paths = (Path(line) for line in out.splitlines() if line.strip())
    return [p for p in paths if p.is_file() and not p.is_symlink()]


def owning_packages(paths: list[Path]) -> list[str]:
    """The packages that own these files (one batched `dpkg -S`), sorted."""
    if not paths:
        return []
    r = subprocess.run(["dpkg", "-S", *map(str, paths)], capture_output=True, text=True, check=False)
    owners = {pkg.strip() for line in r.stdout.splitlines() if ": " in line for pkg in line.split(": ")[0].split(",")}
    return sorted(owners)


# --- text helpers ---------------------------------------------------------------------------------------


def decode_strict(data: bytes, encodings: Iterable[str]) -> tuple[str, str]:
    """The text in the first of the encodings that decodes every byte, and that encoding's name."""
    tried = []
    for enc in encodings:
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError:
            tried.append(enc)
    raise ValueError(f"not valid in any of {', '.join(tried)}")


def clean_terminal_text(text: str) -> str:
    """Text meant for a terminal, made plain: ANSI colours and overstriking gone, LF line ends, no trailing blanks,
    no control characters but tab and newline."""
    text = ANSI.sub("", text)
    text = OVERSTRIKE.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = CONTROL.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def fortune_entries(text: str) -> Iterator[str]:
    """The entries of a fortune file (separated by lines holding only '%'), without blank lines around them."""
    for entry in FORTUNE_SEP.split(text):
        entry = entry.strip("\n")
        if entry.strip():
            yield entry


def take_up_to(pieces: Iterable[str], cap_bytes: int, sep: str = "\n\n") -> list[str]:
    """The leading pieces whose UTF-8 size, joined by sep, stays within cap_bytes."""
    kept: list[str] = []
    size = 0
    for piece in pieces:
        n = len(piece.encode("utf-8")) + (len(sep) if kept else 0)
        if size + n > cap_bytes:
            break
        kept.append(piece)
        size += n
    return kept


def fortune_files(package: str, names: Iterable[str] | None = None) -> list[Path]:
    """A fortune package's cookie files in `dpkg -L` order (no .dat indexes, no offensive off/ files), optionally
    only those with the given names, in that order."""
    files = [
        p
        for p in package_files(package)
        if str(p).startswith(FORTUNES) and p.suffix not in {".dat", ".u8"} and "off" not in p.parts
    ]
    files = [p for p in files if p.stat().st_size > 0]
    if names is None:
        return files
    by_name = {p.name: p for p in files}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise PackageError(f"{package} has no fortune files {', '.join(missing)}")
    return [by_name[n] for n in names]


def read_fortunes(files: Iterable[Path], encodings: Iterable[str], built: Built) -> Iterator[str]:
    """The entries of fortune files, decoded strictly; the encoding of each file is counted in built."""
    encodings = tuple(encodings)
    for path in files:
        try:
            text, enc = decode_strict(path.read_bytes(), encodings)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        built.encodings[enc] += 1
        yield from fortune_entries(clean_terminal_text(text))


# --- the corpora ----------------------------------------------------------------------------------------


def lzw_decompress(data: bytes) -> bytes:
    """Unix `compress` (.Z) data, decompressed by gzip (which reads that format)."""
    if shutil.which("gzip") is None:
        raise RuntimeError("gzip is needed to decompress the bible text")
    return subprocess.run(["gzip", "-dc"], input=data, capture_output=True, check=True).stdout


def read_kjv_data(path: Path) -> str:
    """The text inside bible-kjv's compressed data file: a header (magic, block size, block count, block offsets),
    then blocks each compressed on its own, the 3-byte `compress` header written once before the first."""
    data = path.read_bytes()
    if not data.startswith(b"EC02"):
        raise ValueError(f"{path}: not a bible-kjv compressed data file")
    block_size, nblocks = struct.unpack_from(">II", data, 0x54)
    offsets = struct.unpack_from(f">{nblocks + 1}I", data, 0x5C)
    header = data[offsets[0] - 3 : offsets[0]]
    if header[:2] != b"\x1f\x9d" or offsets[-1] != len(data):
        raise ValueError(f"{path}: unexpected block layout")
    blocks = [lzw_decompress(header + data[a:b]) for a, b in pairwise(offsets)]
    if any(len(b) != block_size for b in blocks[:-1]):
        raise ValueError(f"{path}: a block did not decompress to {block_size} bytes")
    return b"".join(blocks).decode("ascii")


def verses_as_prose(text: str) -> str:
    """One verse a line, references stripped, a blank line where the book changes."""
    lines: list[str] = []
    book = None
    dropped = []
    for line in text.splitlines():
        m = VERSE.match(line)
        if m is None:
            if line.strip():
                dropped.append(line)
            continue
        if book is not None and m.group(1) != book:
            lines.append("")
        book = m.group(1)
        lines.append(m.group(4).strip())
    if len(dropped) > 1:  # the first line is the title
        print(f"  prose_bible: {len(dropped)} lines without a verse reference dropped, e.g. {dropped[1]!r}")
    return "\n".join(lines) + "\n"


def build_bible(args: argparse.Namespace) -> Built:
    data = [p for p in package_files("bible-kjv-text") if p.name == "bible.data"]
    if not data:
        raise PackageError("bible-kjv-text has no bible.data")
    return Built(verses_as_prose(read_kjv_data(data[0])), Counter({"ascii": 1}))


def build_prose_small(args: argparse.Namespace) -> Built:
    built = Built("")
    files = fortune_files("fortunes", ("wisdom", "humorists", "people"))
    entries = take_up_to(read_fortunes(files, ("utf-8",), built), 120_000 - 1)
    built.text = "\n\n".join(entries) + "\n"
    return built


def python_doc_package() -> str:
    """The python3.X-doc package that python3-doc depends on."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Depends}", "python3-doc"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"python3\.\d+-doc", out)
    if m is None:
        raise PackageError(f"python3-doc depends on no python3.X-doc ({out!r})")
    return m.group(0)


def build_prose_large(args: argparse.Namespace) -> Built:
    package = python_doc_package()
    files = sorted(p for p in package_files(package) if "_sources" in p.parts and p.name.endswith(".rst.txt"))
    if not files:
        raise PackageError(f"{package} ships no _sources/*.rst.txt")
    built = Built("", packages=[package])
    texts = []
    for path in files:
        text, enc = decode_strict(path.read_bytes(), ("utf-8",))
        built.encodings[enc] += 1
        texts.append(text.replace("\r\n", "\n").strip("\n"))
    built.text = "\n\n".join(take_up_to(texts, 10 * MB - 1)) + "\n"
    return built


def c_files(root: Path) -> list[Path]:
    """The *.c and *.h files under root (not under root/c++, no symlinks), sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) == root and d == "c++"))
        for name in filenames:
            path = Path(dirpath, name)
            if path.suffix in {".c", ".h"} and path.is_file() and not path.is_symlink():
                found.append(path)
    return sorted(found)


def build_code(args: argparse.Namespace) -> Built:
    built = Built("")
    cap = int(args.code_mb * MB)
    pieces: list[str] = []
    used: list[Path] = []
    size = 0
    for path in c_files(Path("/usr/include")):
        text, enc = decode_strict(path.read_bytes(), ("utf-8", "latin-1"))
        text = text.replace("\r\n", "\n")
        piece = f"/* FILE: {path} */\n{text}" + ("" if text.endswith("\n") else "\n")
        n = len(piece.encode("utf-8"))
        if size + n > cap:
            break
        pieces.append(piece)
        used.append(path)
        built.encodings[enc] += 1
        size += n
    built.text = "".join(pieces)
    built.packages = owning_packages(used)
    return built


def build_chinese(args: argparse.Namespace) -> Built:
    built = Built("")
    files = fortune_files("fortunes-zh")
    entries = list(read_fortunes(files, ("utf-8", "gb18030", "big5"), built))
    built.text = "\n\n".join(entries) + "\n"
    return built


RARE_MIX = (  # package, bytes taken from its cookies (in its own file order)
    ("fortunes-de", 1_100_000),
    ("fortunes-cs", 100_000),
    ("fortunes-pl", 100_000),
    ("fortunes-es", 100_000),
    ("fortunes-eo", 100_000),
    ("fortunes-ga", 10_000),
    ("fortunes-ru", 8_000),
)


def build_rare_symbols(args: argparse.Namespace) -> Built:
    built = Built("")
    parts = []
    for package, cap in RARE_MIX:
        entries = read_fortunes(fortune_files(package), ("utf-8",), built)
        parts.extend(take_up_to(entries, cap))
    built.text = "\n\n".join(parts) + "\n"
    return built


def perl_files() -> list[Path]:
    """The *.pm and *.pl files of the installed perl-modules-5.NN package, sorted by path."""
    roots = sorted(Path("/usr/share/perl").glob("5.*.*"))
    if not roots:
        raise PackageError("no /usr/share/perl/5.N.N: is perl-modules installed?")
    return sorted(p for p in roots[-1].rglob("*") if p.suffix in {".pm", ".pl"} and p.is_file() and not p.is_symlink())


def build_held_perl(args: argparse.Namespace) -> Built:
    built = Built("")
    pieces = []
    used = []
    for path in perl_files():
        text, enc = decode_strict(path.read_bytes(), ("utf-8", "latin-1"))
        built.encodings[enc] += 1
        text = text.replace("\r\n", "\n")
        pieces.append(f"# FILE: {path}\n{text}".rstrip("\n"))
        used.append(path)
    kept = take_up_to(pieces, 6 * MB - 1, sep="\n")
    built.text = "\n".join(kept) + "\n"
    built.packages = owning_packages(used[: len(kept)])
    return built


def build_held_russian(args: argparse.Namespace) -> Built:
    built = Built("")
    entries = read_fortunes(fortune_files("fortunes-ru"), ("utf-8", "koi8-r"), built)
    built.text = "\n\n".join(entries) + "\n"
    return built


def build_held_japanese(args: argparse.Namespace) -> Built:
    built = Built("")
    files = sorted(
        p for pkg in ("manpages-ja", "manpages-ja-dev") for p in package_files(pkg) if p.name.endswith(".gz")
    )
    pages = []
    for path in files:
        text, enc = decode_strict(gzip.decompress(path.read_bytes()), ("utf-8", "euc-jp"))
        built.encodings[enc] += 1
        pages.append(text.replace("\r\n", "\n").strip("\n"))
    built.text = "\n\n".join(take_up_to(pages, 3 * MB - 1)) + "\n"
    return built


CORPORA = (
    Corpus("prose_bible", ("bible-kjv-text",), "King James Bible, verse references stripped", build_bible),
    Corpus("prose_small", ("fortunes",), "English fortunes: wisdom, humorists, people", build_prose_small),
    Corpus("prose_large", ("python3-doc",), "Python documentation reST sources (~10 MB)", build_prose_large),
    Corpus("code_c", (), "C headers under /usr/include, sorted by path (--code-mb MB)", build_code),
    Corpus("chinese", ("fortunes-zh",), "Chinese poems and sayings (chinese, song100, tang300)", build_chinese),
    Corpus(
        "rare_symbols",
        tuple(p for p, _ in RARE_MIX),
        "multilingual fortunes: mostly German, some Czech, Polish, Spanish, Esperanto, Irish, Russian",
        build_rare_symbols,
    ),
    Corpus("held_perl", (), "Perl modules of perl-modules-5.NN, sorted by path (~6 MB)", build_held_perl),
    Corpus("held_russian", ("fortunes-ru",), "Russian fortune cookies", build_held_russian),
    Corpus(
        "held_japanese",
        ("manpages-ja", "manpages-ja-dev"),
        "Japanese manual pages, roff source (~3 MB)",
        build_held_japanese,
    ),
)


# --- figures, files, manifest ---------------------------------------------------------------------------


def figures(text: str) -> dict[str, float | int]:
    counts = Counter(text)
    size = len(text.encode("utf-8"))
    return {
        "bytes": size,
        "mb": round(size / MB, 3),
        "chars": len(text),
        "distinct": len(counts),
        "rare_lt10": sum(1 for c in counts.values() if c < 10),
    }


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def check_out_dir(out: Path) -> Path:
    out = out.expanduser().resolve()
    if out == ROOT or out.is_relative_to(ROOT):
        raise SystemExit(f"--out {out} is inside the repository {ROOT}; corpora must be written outside it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_manifest(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("corpora", {}))
    except (json.JSONDecodeError, AttributeError):
        return {}


def make_corpus(corpus: Corpus, out: Path, args: argparse.Namespace, old: dict) -> tuple[dict, str] | None:
    """Build one corpus (unless it is there and not --force); its manifest entry and "built" or "kept", or None
    when it could not be built."""
    path = out / f"{corpus.name}.txt"
    entry: dict[str, object] = {"file": path.name, "source": corpus.source, "packages": list(corpus.packages)}
    if path.exists() and not args.force:
        text = path.read_text(encoding="utf-8")
        for key in ("packages", "encodings"):
            if key in old:
                entry[key] = old[key]
        status = "kept"
    else:
        try:
            ensure_packages(corpus.packages)
            built = corpus.build(args)
        except (PackageError, ValueError, subprocess.CalledProcessError) as e:
            print(f"{corpus.name}: NOT BUILT: {e}", file=sys.stderr)
            return None
        text = built.text
        write_atomic(path, text)
        entry["packages"] = sorted({*corpus.packages, *built.packages})
        entry["encodings"] = dict(sorted(built.encodings.items()))
        status = "built"
    entry.update(figures(text))
    return entry, status


def print_row(name: str, e: dict, status: str) -> None:
    print(f"{name:<14} {e['mb']:>8.3f} {e['chars']:>11,} {e['distinct']:>9,} {e['rare_lt10']:>9,}  {status}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for the corpora (default {DEFAULT_OUT})")
    p.add_argument("--force", action="store_true", help="rebuild corpora that are already there")
    p.add_argument("--code-mb", type=float, default=12.0, help="size cap of code_c.txt in MB of 10^6 bytes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = check_out_dir(args.out)
    manifest_path = out / "manifest.json"
    old = load_manifest(manifest_path)
    corpora: dict[str, dict] = {}
    failed = []
    print(f"{'corpus':<14} {'MB':>8} {'chars':>11} {'distinct':>9} {'<10 uses':>9}")
    for corpus in CORPORA:
        made = make_corpus(corpus, out, args, old.get(corpus.name, {}))
        if made is None:
            failed.append(corpus.name)
            continue
        corpora[corpus.name] = made[0]
        print_row(corpus.name, *made)
    manifest = {"generated_by": "bench/corpora.py", "mb": MB, "corpora": corpora}
    write_atomic(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(f"manifest: {manifest_path}")
    if failed:
        print(f"not built: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
