"""Where the RFC 4475 torture messages live, for the tests that use them.

CI has ``../shared`` beside the clone; ``SIPGW_CONFORMANCE_DIR`` overrides.
A missing corpus fails the run under CI (``CI`` set) and skips elsewhere.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from tests.support.environment import require

_DEFAULT = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "rfc4475"


@dataclass(frozen=True)
class TortureCase:
    file: str
    section: str
    expectation: str  # "valid" or "invalid"
    reason: str
    data: bytes

    @property
    def name(self) -> str:
        return self.file.removesuffix(".sip")


def corpus_dir() -> Path:
    return Path(os.environ.get("SIPGW_CONFORMANCE_DIR", _DEFAULT))


def load_cases() -> list[TortureCase]:
    """Every row of INDEX.tsv with its message bytes; [] if the corpus is absent."""
    directory = corpus_dir()
    index = directory / "INDEX.tsv"
    if not index.exists():
        return []
    with index.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [
        TortureCase(
            r["file"],
            r["rfc_section"],
            r["expectation"],
            r["reason"],
            (directory / r["file"]).read_bytes(),
        )
        for r in rows
    ]


def require_corpus() -> None:
    """Fail under CI, skip elsewhere, when the corpus is missing."""
    require(
        (corpus_dir() / "INDEX.tsv").exists(),
        f"RFC 4475 corpus not found at {corpus_dir()} (set SIPGW_CONFORMANCE_DIR)",
    )
