"""A raw Streamlit WebSocket client, as an attacker (or a load test) would use
one (tests/test_hardening.py and bench/bench_downloads.py): it speaks
Streamlit 1.67's protocol (protobuf BackMsg / ForwardMsg over
`/_stcore/stream`) with no browser, so a test can send what a browser never
would (a crafted widget state, forged headers, a chosen source address) and
run many sessions at once cheaply.

Only what the tests and benchmarks need: rerun a page with widget states,
collect the elements the run sent (texts, widgets by label, exceptions), read
the session id Streamlit hands out, make and fetch a History file.
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

TEXT_FIELDS = ("markdown", "alert", "heading", "text", "code", "exception", "metric")
WIDGET_FIELDS = ("button", "text_input", "download_button", "link_button", "selectbox")


@dataclass
class Widget:
    kind: str
    id: str
    label: str
    form_id: str = ""


@dataclass
class Run:
    """What one script run (or fragment run) sent."""

    texts: list[str] = field(default_factory=list)
    widgets: list[Widget] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)  # type: message + stack, as sent
    fragment_ids: set[str] = field(default_factory=set)  # of the elements a fragment drew
    finished: bool = False

    @property
    def text(self) -> str:
        return "\n".join(self.texts)

    def widget(self, label: str, kind: str | None = None) -> Widget:
        for w in self.widgets:
            if label in w.label and (kind is None or w.kind == kind):
                return w
        raise LookupError(f"no widget labelled {label!r}: {[w.label for w in self.widgets]}")


def _element_text(element: object, kind: str) -> str:
    value = getattr(element, kind)
    if kind == "exception":
        return f"{value.type}: {value.message}\n" + "\n".join(value.stack_trace)
    if kind == "metric":
        return f"{value.label}: {value.body}"
    return str(getattr(value, "body", ""))


class StreamlitClient:
    """One WebSocket session. `headers` are sent with the handshake (say a
    forged X-Forwarded-For); `source` binds the client's end to an address
    (127.0.0.2: another machine, as far as the server can tell)."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        source: str | None = None,
        session_id: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        parts = urlsplit(base_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sock = None
        if source is not None:
            sock = socket.create_connection(
                (host, port), timeout=timeout_s, source_address=(source, 0)
            )
        # The browser sends ["streamlit", its XSRF token, the session to resume];
        # the token is only checked with a cookie and an Origin, sent by neither here.
        protocols = ["streamlit", "none", session_id] if session_id else ["streamlit"]
        self.timeout_s = timeout_s
        self.session_id: str | None = None
        self.ws: ClientConnection = connect(
            f"ws://{host}:{port}/_stcore/stream",
            sock=sock,
            additional_headers=headers or {},
            subprotocols=[Subprotocol(p) for p in protocols],
            open_timeout=timeout_s,
            max_size=None,
            legacy=True,
        )

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> StreamlitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.ws.send(data)

    def rerun(
        self,
        page: str = "",
        query: str = "",
        widgets: Iterable[WidgetState] = (),
        fragment_id: str = "",
        wait: bool = True,
    ) -> Run:
        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = query
        state.page_name = page
        state.fragment_id = fragment_id
        state.widget_states.widgets.extend(widgets)
        self.ws.send(msg.SerializeToString())
        return self.collect() if wait else Run()

    def collect(self, timeout_s: float | None = None) -> Run:
        """Messages until the run finishes (or the socket closes)."""
        run = Run()
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while time.monotonic() < deadline:
            try:
                raw = self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            except ConnectionClosed:
                break
            msg = ForwardMsg()
            msg.ParseFromString(raw if isinstance(raw, bytes) else raw.encode())
            kind = msg.WhichOneof("type")
            if kind == "new_session":
                self.session_id = msg.new_session.initialize.session_id or None
            elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                if msg.delta.fragment_id:
                    run.fragment_ids.add(msg.delta.fragment_id)
                element = msg.delta.new_element
                which = element.WhichOneof("type")
                if which in TEXT_FIELDS:
                    run.texts.append(_element_text(element, which))
                    if which == "exception":
                        run.exceptions.append(run.texts[-1])
                if which in WIDGET_FIELDS:
                    value = getattr(element, which)
                    run.widgets.append(
                        Widget(which, value.id, value.label, getattr(value, "form_id", ""))
                    )
            elif kind == "script_finished":
                if msg.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    run = Run()  # st.rerun(): what counts is the run that follows
                    continue
                run.finished = True
                break
        return run


def trigger(widget_id: str) -> WidgetState:
    state = WidgetState(id=widget_id)
    state.trigger_value = True
    return state


def text(widget_id: str, value: str) -> WidgetState:
    state = WidgetState(id=widget_id)
    state.string_value = value
    return state


def flag(widget_id: str, value: bool) -> WidgetState:
    state = WidgetState(id=widget_id)
    state.bool_value = value
    return state


def log_in(client: StreamlitClient, password: str, page: str = "", query: str = "") -> Run:
    """Fill in the login form and submit it, as the browser does (the text
    input's value and the submit button's trigger in one rerun)."""
    form = client.rerun(page, query)
    field_ = form.widget("Password", "text_input")
    submit = form.widget("Log in", "button")
    return client.rerun(page, query, [text(field_.id, password), trigger(submit.id)])


def download_history_file(
    base: str, password: str, query: str, deadline: float, retry_s: float = 1.0
) -> tuple[str, int]:
    """Log in, make the file on the History page of `query`, clicking again
    `retry_s` later while the server says it is busy (as a person would), then
    fetch it: (its sha256, busy answers)."""
    busy = 0
    with StreamlitClient(base, timeout_s=120) as c:
        page = log_in(c, password, page="history", query=query)
        make = page.widget("Make bybit_incremental_book_L2_", "button")
        while True:
            run = c.rerun(page="history", query=query, widgets=[trigger(make.id)])
            found = re.search(r'href="(/api/download/[^"]+)"', run.text)
            if found:
                break
            assert "Busy" in run.text, run.text
            busy += 1
            assert time.monotonic() < deadline, "still busy"
            time.sleep(retry_s)
    digest = hashlib.sha256()
    with urllib.request.urlopen(base + found[1], timeout=120) as answer:
        while chunk := answer.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest(), busy
