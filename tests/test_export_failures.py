"""An export that fails half way (the database goes away, Ctrl-C) leaves no
file, says so in one line and exits non-zero; the progress bar shows only on
a terminal."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbproxy import DatabaseProxy
from depthwatch.export.tardis import ExportRequest, Progress

from .conftest import cli_env, new_database

ROOT = Path(__file__).resolve().parent.parent
SYMBOL = "P00USDT"  # record_paced.py's first stream


@pytest.fixture(scope="module")
def long_history(server_url):
    """Ten minutes of one depth-50 stream at 50 msg/s (30,000 messages, ~200,000
    L2 rows: an export that takes a second or so), recorded faster than real time."""
    with new_database(server_url) as url:
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "record_paced.py"), "--database-url", url,
             "--streams", "1", "--minutes", "10"],
            env=cli_env(), check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield url


# `python -m depthwatch.cli` with Ctrl-C raising KeyboardInterrupt, as in a
# terminal. A test runner started in the background by a script (`cmd &`)
# ignores SIGINT, its children inherit that, and Python then installs no
# handler: the Ctrl-C this test sends would be lost and the export finish.
CLI_WITH_CTRL_C = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('depthwatch.cli', run_name='__main__', alter_sys=True)"
)


def start_export(url: str, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CLI_WITH_CTRL_C, "export", "--kind", "incremental_book_L2",
         "--symbol", SYMBOL, "--start", "2020-01-01", "--end", "2100-01-01",
         "--out", str(out), "--database-url", url],
        env=cli_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def partial_bytes(out: Path) -> int:
    """Bytes in the export's temporary file so far (-1 before it exists)."""
    found = list(out.parent.glob(f".{out.name}.*.partial"))
    return found[0].stat().st_size if found else -1


def stopped_half_way(proxy: DatabaseProxy, out: Path, proc: subprocess.Popen[str]) -> None:
    """With every batch the export asks for held at the proxy: let them
    through one at a time until rows are in its temporary file. The export
    then waits for its next batch, half way and unable to finish (finishing
    takes more requests) until the proxy lets it, whatever the machine's load."""
    proxy.hold(b"FETCH ")  # a server-side cursor's next batch
    deadline = time.monotonic() + 60
    while True:
        while not proxy.wait_held(0.1):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the export asked for no batch"
        if partial_bytes(out) > 0:
            return
        assert time.monotonic() < deadline, "no rows written"
        proxy.step()


@pytest.fixture
def proxy(long_history: str) -> Iterator[DatabaseProxy]:
    proxy = DatabaseProxy(long_history)
    try:
        yield proxy
    finally:
        proxy.close()


def test_ctrl_c_half_way_leaves_no_file(proxy, tmp_path):
    out = tmp_path / "l2.csv"
    proc = start_export(proxy.url, out)
    stopped_half_way(proxy, out, proc)
    proc.send_signal(signal.SIGINT)  # while it waits for a batch
    proxy.release()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted; no file written" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert list(tmp_path.iterdir()) == []


def test_the_database_going_away_half_way_leaves_no_file(proxy, tmp_path):
    out = tmp_path / "l2.csv"
    proc = start_export(proxy.url, out)
    stopped_half_way(proxy, out, proc)
    proxy.cut()  # the batch it waits for never comes
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "the database went away during the export" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert list(tmp_path.iterdir()) == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_on_a_terminal_only():
    request = ExportRequest("quotes", "linear", "BTCUSDT", 0, 1_000_000)
    shown = Terminal()
    bar = Progress([request], shown, every_s=0.0)
    bar.begin(request)
    bar.tick(5_000, 250_000)
    bar.finish()
    text = shown.getvalue()
    assert "\rexport BTCUSDT [#####" in text and " 25% 5,000 rows" in text and "ETA" in text
    assert "done, 5,000 rows" in text
    piped = io.StringIO()
    quiet = Progress([request], piped, every_s=0.0)
    quiet.begin(request)
    quiet.tick(5_000, 250_000)
    quiet.finish()
    assert piped.getvalue() == ""


@pytest.mark.parametrize("kind", ["incremental_book_L2", "book_snapshot_25"])
def test_a_sink_failing_half_way_leaves_no_reader_on_the_connection(long_history, kind):
    """Into Arrow and Parquet the log is read ahead on a thread of its own,
    holding the export's connection. A sink that fails half way: the reader
    is stopped before the connection goes back to the pool, and the same
    pool serves the next export whole."""
    import threading

    from depthwatch.export.sinks import ArrowSink
    from depthwatch.export.tardis import export
    from depthwatch.storage.db import make_engine

    class FullDisk(ArrowSink):
        parts = 0

        def _fail_on_second(self) -> None:
            self.parts += 1
            if self.parts == 2:
                raise OSError("no space left on device")

        def write_columns(self, columns):
            self._fail_on_second()
            super().write_columns(columns)

        def write_block(self, block):
            self._fail_on_second()
            super().write_block(block)

    def readers() -> int:
        return sum(t.name == "export-reader" and t.is_alive() for t in threading.enumerate())

    engine = make_engine(long_history, pool_size=1)
    request = ExportRequest(kind, "linear", SYMBOL, 0, 4_102_444_800_000_000)
    try:
        failure: OSError | None = None
        try:
            export(engine, request, FullDisk(kind), progress_to=None)
        except OSError as exc:
            # Kept, as a caller that logs or reports it keeps it (its
            # traceback keeps the export's frame, and what that holds, alive).
            failure = exc
        assert failure is not None and "no space left" in str(failure)
        assert readers() == 0
        assert engine.pool.checkedout() == 0
        whole = ArrowSink(kind)
        rows = export(engine, request, whole, progress_to=None)  # the one pooled connection
        assert rows > 1_000 and whole.table().num_rows == rows
    finally:
        engine.dispose()


def test_an_error_making_arrow_columns_also_stops_the_reader(long_history, monkeypatch):
    """The same, failing between the replay and the sink (making a part's
    Arrow columns): the parts' reading ahead ends with it."""
    import threading

    from depthwatch.export import tardis
    from depthwatch.export.sinks import ArrowSink
    from depthwatch.storage.db import make_engine

    made = [0]
    choose = tardis.arrays.choose

    def failing_choose(*args, **kwargs):
        if sys._getframe(1).f_code.co_name == "_l2_arrays":  # not the sink's constants
            made[0] += 1
            if made[0] == 2:
                raise MemoryError("out of memory making a column")
        return choose(*args, **kwargs)

    monkeypatch.setattr(tardis.arrays, "choose", failing_choose)
    engine = make_engine(long_history, pool_size=1)
    request = ExportRequest("incremental_book_L2", "linear", SYMBOL, 0, 4_102_444_800_000_000)
    failure: MemoryError | None = None
    try:
        try:
            tardis.export(engine, request, ArrowSink(request.kind), progress_to=None)
        except MemoryError as exc:
            failure = exc  # kept, as a caller that reports it keeps it
        assert failure is not None and made[0] == 2
        readers = [t for t in threading.enumerate() if t.name == "export-reader"]
        assert not any(t.is_alive() for t in readers)
        assert engine.pool.checkedout() == 0
    finally:
        engine.dispose()
