"""Recorded Bybit messages for the simulator to replay verbatim.

Accepts Bybit history-archive `.data` files (one message per line), `.zip`
archives holding such files, and `.jsonl`. The raw line text is kept so the
server can send it byte for byte.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson

Level = list[str]
_LINE_SUFFIXES = (".data", ".jsonl", ".json", ".txt")


@dataclass(frozen=True, slots=True)
class ReplayMessage:
    topic: str
    raw: str  # the line exactly as recorded, without the newline
    msg: dict


def _lines(path: Path) -> Iterator[str]:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            # Archive members are named by date, so name order is time order.
            for name in sorted(archive.namelist()):
                if name.endswith(_LINE_SUFFIXES):
                    with archive.open(name) as member:
                        yield from io.TextIOWrapper(member, encoding="utf-8")
    else:
        with path.open(encoding="utf-8") as handle:
            yield from handle


def load_replay(paths: Iterable[str | Path]) -> dict[str, list[ReplayMessage]]:
    """Messages per topic, in file order; files are concatenated in the order given."""
    topics: dict[str, list[ReplayMessage]] = {}
    for path in paths:
        for line in _lines(Path(path)):
            raw = line.rstrip("\r\n")
            if not raw.strip():
                continue
            msg = orjson.loads(raw)
            topic = msg.get("topic")
            if isinstance(topic, str):
                topics.setdefault(topic, []).append(ReplayMessage(topic, raw, msg))
    return topics


class DictBook:
    """The plainest possible book: two dicts keyed by price string.

    Deliberately independent of depthwatch.book so the simulator's ground
    truth cannot share a bug with the code under test.
    """

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}

    def apply(self, msg: dict) -> None:
        data = msg["data"]
        if msg.get("type") == "snapshot":
            self.bids.clear()
            self.asks.clear()
        for side, levels in ((self.bids, data.get("b", ())), (self.asks, data.get("a", ()))):
            for price, size in levels:
                if Decimal(size) == 0:
                    side.pop(price, None)
                else:
                    side[price] = size

    def top(self, depth: int | None = None) -> tuple[list[Level], list[Level]]:
        bids = sorted(self.bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)
        asks = sorted(self.asks.items(), key=lambda kv: Decimal(kv[0]))
        return [list(kv) for kv in bids[:depth]], [list(kv) for kv in asks[:depth]]
