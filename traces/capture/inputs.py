"""Capture inputs: text files, folders of them, and JSONL prompt files, each with a domain label.

A plain file is one document whose domain is the file's stem (``plays.txt`` -> ``plays``). A ``.jsonl``
file holds one prompt per line: a JSON string, or an object with ``text`` (or ``prompt``) and an optional
``domain`` (default: the file's stem). A folder contributes every regular, non-hidden file below it, in
sorted order.
"""

from __future__ import annotations

import collections.abc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moe_placement.errors import PlacementError


@dataclass(frozen=True)
class Document:
    """One piece of input text. ``prompt``: a JSONL entry, kept as one sequence (not split)."""

    text: str
    domain: str
    source: str
    prompt: bool = False


@dataclass(frozen=True)
class Sequence:
    """Token ids of one sequence to run, with its domain."""

    ids: np.ndarray
    domain: str


def _read_jsonl(path: Path) -> list[Document]:
    docs: list[Document] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise PlacementError(f"{path}:{number}: not valid JSON") from None
            text: Any
            if isinstance(item, str):
                text, domain = item, path.stem
            elif isinstance(item, dict):
                text = item.get("text", item.get("prompt"))
                domain = str(item.get("domain", path.stem))
            else:
                text, domain = None, path.stem
            if not isinstance(text, str) or not text:
                raise PlacementError(
                    f"{path}:{number}: expected a string or an object with 'text' or 'prompt'"
                )
            docs.append(Document(text, domain, f"{path}:{number}", prompt=True))
    return docs


def _read_file(path: Path) -> list[Document]:
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PlacementError(f"{path}: not UTF-8 text") from None
    return [Document(text, path.stem, str(path))] if text.strip() else []


def read_documents(paths: collections.abc.Sequence[str | os.PathLike[str]]) -> list[Document]:
    """Every document of the given files and folders; raises on a missing path or no text."""
    docs: list[Document] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise PlacementError(f"input not found: {path}")
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            for file in files:
                docs.extend(_read_file(file))
        else:
            docs.extend(_read_file(path))
    if not docs:
        raise PlacementError(f"no text in the inputs: {', '.join(map(str, paths))}")
    return docs


def make_sequences(
    docs: list[Document], tokenizer: object, seq_len: int, budget_tokens: int
) -> list[Sequence]:
    """Tokenise and cut into sequences of at most ``seq_len`` tokens, about ``budget_tokens`` in all.

    Sequences are interleaved round-robin over domains so that a token budget smaller than the input
    still samples every domain evenly.
    """
    if seq_len < 2:
        raise PlacementError("sequence length must be >= 2")
    per_domain: dict[str, list[Sequence]] = {}
    for doc in docs:
        ids = np.asarray(tokenizer(doc.text, add_special_tokens=False)["input_ids"], dtype=np.int64)  # type: ignore[operator]
        if ids.size == 0:
            continue
        pieces = (
            [ids[:seq_len]]
            if doc.prompt
            else [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
        )
        per_domain.setdefault(doc.domain, []).extend(
            Sequence(p, doc.domain) for p in pieces if p.size >= 2
        )
    if not per_domain:
        raise PlacementError("the inputs produced no tokens")
    out: list[Sequence] = []
    total = 0
    queues = [list(reversed(v)) for v in per_domain.values()]
    while total < budget_tokens and any(queues):
        for queue in queues:
            if queue and total < budget_tokens:
                seq = queue.pop()
                out.append(seq)
                total += len(seq.ids)
    return out
