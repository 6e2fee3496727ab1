"""What the benchmarks share: where this tree's code is, the machine they ran
on, figures read from /proc, percentiles, the versions an A/B run compares
(this tree and a git worktree of a baseline ref) and the table of medians and
ratios they print. Databases: databases.py; child processes: children.py.

Importing it puts this tree's depthwatch (streamlit/) first on sys.path.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "streamlit"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop every child
    and the embedded PostgreSQL."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


# ---- the machine --------------------------------------------------------------------


def machine_line(detail: bool = False) -> str:
    """'machine: host arch, N cpus, Python x.y.z'; with `detail`, the CPU
    model and the RAM too."""
    cpus = f"{os.cpu_count()} cpus"
    if detail:
        model = "?"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        cpus += f" ({model}), {ram_gb:.1f} GiB RAM"
    return (
        f"machine: {platform.node()} {platform.machine()}, {cpus}, "
        f"Python {platform.python_version()}"
    )


def current_commit() -> str:
    """HEAD of the checkout the code runs from; a snapshot made with `git archive`
    (to measure one commit while others edit the checkout) names it in
    DEPTHWATCH_BENCH_COMMIT."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    found = git("rev-parse", "--short", "HEAD")
    if found:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return found + (" (with uncommitted changes)" if dirty else "")
    return os.environ.get("DEPTHWATCH_BENCH_COMMIT", "unknown (not a git checkout)")


# ---- figures of a process, from /proc -----------------------------------------------


def cpu_seconds(pid: int, stat: str = "") -> float:
    """User + system CPU time of a process so far (`stat`: another of its
    /proc stat files, a thread's)."""
    fields = Path(stat or f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process's main thread so far (the
    collector's event loop: its socket readers)."""
    return cpu_seconds(pid, f"/proc/{pid}/task/{pid}/stat")


def process_tree(pid: int) -> list[int]:
    """A process and its descendants alive now (the collector's packer)."""
    tree, at = [pid], 0
    while at < len(tree):
        for task in Path(f"/proc/{tree[at]}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                tree += [int(child) for child in task.read_text().split()]
        at += 1
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """cpu_seconds of a process and its descendants alive now."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(member)
    return total


def tree_peak_rss_mb(pid: int) -> float:
    """Each process's own peak resident memory, summed over a process and its
    descendants alive now: an upper bound of the tree's peak (the peaks need
    not coincide)."""
    return sum(peak_rss_mb(member) for member in process_tree(pid))


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of /proc/PID/status in MB: VmRSS (resident now) or
    VmHWM (its peak so far); NaN when the kernel does not give it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return math.nan


def peak_rss_mb(pid: int) -> float:
    return memory_mb(pid, "VmHWM")


class RssWatch:
    """The peak resident memory of a process (bytes), sampled every `every_s`
    by a thread while the `with` block runs: VmHWM would also count what the
    process held before the block."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.pid = pid
        self.every_s = every_s
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        resident = memory_mb(self.pid)
        if math.isnan(resident):
            raise AssertionError("no VmRSS")
        return int(resident * 1024) * 1024

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# ---- figures ------------------------------------------------------------------------


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (0-100); NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else math.nan


def fmt_s(seconds: float) -> str:
    """'42 s' or '3 min 05 s'."""
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{whole} s"


class Table:
    """Figures per version across rounds; printed as medians side by side,
    with the ratio this / baseline when there are two versions."""

    def __init__(self, versions: list[str]) -> None:
        self.versions = versions
        self.figures: dict[str, dict[str, list[float]]] = {}

    def add(self, version: str, figure: str, value: float) -> None:
        self.figures.setdefault(figure, {}).setdefault(version, []).append(value)

    def values(self, version: str, figure: str) -> list[float]:
        """What was added for a figure of a version so far, in order."""
        return self.figures.get(figure, {}).get(version, [])

    def print(self) -> None:
        several = len(self.versions) > 1
        print(
            "\nsummary (median of the rounds" + (", ratio = this / baseline)" if several else ")")
        )
        head = "".join(f"{v:>14}" for v in self.versions)
        print(f"   {'figure':44}{head}" + ("     ratio" if several else ""))
        for figure, per in self.figures.items():
            medians = [
                statistics.median(per[v]) if v in per else float("nan") for v in self.versions
            ]
            cells = "".join(f"{m:14,.1f}" for m in medians)
            ratio = f"{medians[-1] / medians[0]:10.2f}" if several and medians[0] else ""
            print(f"   {figure:44}{cells}{ratio}")


# ---- versions: this tree and a baseline ----------------------------------------------


@dataclass
class Version:
    """A depthwatch source tree a benchmark runs its subject from (the
    simulator always runs from this tree, so both versions read the same feed)."""

    name: str
    src: Path


@contextlib.contextmanager
def versions(baseline: str | None, tmpdir: Path) -> Iterator[list[Version]]:
    """[this tree], or [a detached git worktree of `baseline` in `tmpdir`, this
    tree]: the order rounds alternate in. The worktree is removed on exit."""
    this = Version("this", SRC)
    if not baseline:
        yield [this]
        return
    tree = tmpdir / "baseline"
    git = ["git", "-C", str(ROOT), "worktree"]
    subprocess.run(
        [*git, "add", "--detach", "-f", str(tree), baseline], check=True, capture_output=True
    )
    try:
        yield [Version(baseline, tree / "streamlit"), this]
    finally:
        subprocess.run([*git, "remove", "--force", str(tree)], check=False)
