"""A stream-day's manifest: the proof that the day is archived.

It is written last, after every file was read back and checked; no manifest
means not archived. It names each file with its rows, time range, bytes and
sha256, the depthwatch and schema versions that wrote them, and `source`: the
database's counts for that day when it was archived, so a later run can tell
that rows arrived since (a journal drained late) and archive the day again.

The JSON is canonical (sorted keys, no wall-clock time), so the same
recording archived twice gives the same manifest, byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from depthwatch.storage.archived import SourceCounts

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ArchivedFile:
    kind: str
    format: str
    path: str  # relative to the archive's root
    rows: int
    bytes: int
    sha256: str
    first_timestamp: int | None  # exchange time of its first and last rows (µs)
    last_timestamp: int | None


@dataclass(frozen=True)
class Manifest:
    exchange: str
    category: str
    symbol: str
    depth: int
    date: str
    depthwatch_version: str
    schema_version: int
    source: SourceCounts
    files: tuple[ArchivedFile, ...] = field(default_factory=tuple)
    manifest: int = MANIFEST_VERSION

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """The manifest; ValueError for anything that is not one."""
        try:
            raw = json.loads(data)
            return cls(
                **{
                    **raw,
                    "source": SourceCounts(**raw["source"]),
                    "files": tuple(ArchivedFile(**f) for f in raw["files"]),
                }
            )
        except (TypeError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a depthwatch manifest: {exc}") from None

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)
