"""The Render blueprint (render.yaml): its structure, the environment it gives the
code, and both services run here exactly as Render runs them.

The run builds a fresh virtualenv with the blueprint's build command in a copy
of the repository (what a clone holds: tracked and not-ignored files), then runs
each service's pre-deploy and start commands through a shell with only the
blueprint's environment, `PORT` and a `postgres://` DATABASE_URL. The worker
records the project's simulator (BYBIT_WS_URL is the one override) and its books
are compared with the simulator's ground truth; Debian's Chromium loads the web
service's Live page. Logs and a screenshot land in tests/artifacts/.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from playwright.sync_api import sync_playwright
from streamlit.testing.v1 import AppTest

from depthwatch.collector_process import FINAL_FLUSH_TIMEOUT_S
from depthwatch.records import StreamKey
from depthwatch.sim import SimConfig, SimulatorThread
from depthwatch.storage import schema
from depthwatch.storage.db import make_engine
from depthwatch.storage.read.chunks import last_recorded
from depthwatch.storage.read.streams import NotRecorded, find_stream

from .conftest import ROOT, SRC, free_port
from .e2e import assert_export_matches_truth
from .test_browser import (
    ARTIFACTS,
    CHART,
    CHROMIUM,
    CHROMIUM_ARGS,
    LIVE_BADGE,
    METRIC,
    METRICS_JS,
    SIMULATED_BADGE,
    VIEWPORT,
    badge,
    http_get,
    parse_price,
)

BLUEPRINT = ROOT / "render.yaml"
# Render's limit on maxShutdownDelaySeconds (its blueprint reference: max 300).
RENDER_MAX_SHUTDOWN_DELAY_S = 300
# Streamlit's own health endpoint; the dashboard has no other.
STREAMLIT_HEALTH_PATH = "/_stcore/health"
# Variables Render itself reads (PYTHON_VERSION), or uvicorn, under Streamlit
# (FORWARDED_ALLOW_IPS); the code never does.
PLATFORM_VARIABLES = frozenset({"PYTHON_VERSION", "FORWARDED_ALLOW_IPS"})
# Read by the S3 client (pyarrow's AWS SDK: the keys; archive/store.py: the
# endpoint and region) under AWS's own names.
S3_CLIENT_VARIABLES = frozenset(
    {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}
)
# Names of the project's environment variables, wherever they appear in the code.
ENV_NAME = re.compile(r"^(?:(?:DEPTHWATCH|DASHBOARD|BYBIT)_[A-Z0-9_]+|DATABASE_URL)$")
# Measured on Bybit mainnet for BTCUSDT+ETHUSDT at depth 50 with trades, all
# tables and indexes: the figure the retention and the disk are sized by.
DAILY_GB = 5.0
# A database disk fuller than this at steady state leaves too little room for a
# busy day, WAL and vacuum.
DISK_FULL_AT_MOST = 0.8

BUILD_TIMEOUT_S = 600.0  # a cold pip cache downloads ~150 MB of wheels
START_TIMEOUT_S = 60.0
PRE_DEPLOY_TIMEOUT_S = 60.0
CAUGHT_UP_TIMEOUT_S = 90.0
PAGE_TIMEOUT_MS = 30_000
POLL_S = 0.25
GENERATED_SECRET = "Generated-Nq3Vx8Lk2"  # what Render's generateValue would give
# The simulated market: enough steps to watch it live, few enough to finish soon.
SIM_RATE = 50
SIM_STEPS = 900


# ---- the blueprint


def blueprint() -> dict[str, Any]:
    loaded = yaml.safe_load(BLUEPRINT.read_text())
    assert isinstance(loaded, dict), "render.yaml is not a mapping"
    return loaded


def service(kind: str) -> dict[str, Any]:
    """The blueprint's one service of `kind` (web, worker)."""
    found = [s for s in blueprint()["services"] if s["type"] == kind]
    assert len(found) == 1, f"expected one {kind} service, found {len(found)}"
    return found[0]


def env_entries(svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = svc.get("envVars", [])
    keys = [entry["key"] for entry in entries]
    assert len(keys) == len(set(keys)), f"{svc['name']}: a variable is set twice: {keys}"
    return {entry["key"]: entry for entry in entries}


def literal_env(svc: dict[str, Any]) -> dict[str, str]:
    """The values the blueprint writes out; Render passes them as strings."""
    return {k: str(e["value"]) for k, e in env_entries(svc).items() if "value" in e}


def worker_setting(key: str) -> str:
    return literal_env(service("worker"))[key]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# ---- structure


def test_one_web_service_one_worker_and_one_cron_job_on_the_python_runtime():
    services = blueprint()["services"]
    assert sorted(s["type"] for s in services) == ["cron", "web", "worker"]
    names = [s["name"] for s in services]
    assert len(set(names)) == len(names)
    for svc in services:
        assert svc["runtime"] == "python", svc["name"]
        # Workers have no free plan, and a free web service sleeps when idle.
        assert svc["plan"] not in ("free", None), svc["name"]


def test_start_commands_run_the_entry_scripts_that_exist():
    web, worker = service("web"), service("worker")
    # The exact command tests/test_app.py runs against a recorded database.
    assert web["startCommand"] == (
        "streamlit run streamlit/app.py --server.port $PORT --server.address 0.0.0.0"
    )
    assert worker["startCommand"] == "python streamlit/worker.py"
    for svc in (web, worker):
        scripts = [word for word in svc["startCommand"].split() if word.endswith(".py")]
        assert scripts and all((ROOT / s).is_file() for s in scripts), svc["startCommand"]


def test_build_installs_the_pinned_requirements_only():
    for kind in ("web", "worker", "cron"):
        assert service(kind)["buildCommand"] == "pip install -r requirements.txt"


def test_pinned_requirements_satisfy_the_package_ranges():
    """requirements.txt pins every runtime dependency pyproject.toml names, at a
    version its range allows: CI installs both, Render the pins alone."""
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"not pinned: {line}"
            pins[requirement.name.lower()] = Version(spec.version)
    for dependency in pyproject()["project"]["dependencies"]:
        requirement = Requirement(dependency)
        name = requirement.name.lower()
        assert name in pins, f"{name} is missing from requirements.txt"
        assert pins[name] in requirement.specifier, f"{name}=={pins[name]} outside {dependency}"


def test_web_health_check_is_streamlits():
    assert service("web")["healthCheckPath"] == STREAMLIT_HEALTH_PATH


def test_pre_deploy_commands_upgrade_the_schema_through_the_cli():
    for kind in ("web", "worker"):
        command = service(kind)["preDeployCommand"]
        assert command == "PYTHONPATH=streamlit python -m depthwatch.cli db upgrade"
        assert (SRC / "depthwatch" / "cli.py").is_file()


def test_both_services_use_the_blueprints_database_privately():
    databases = {db["name"]: db for db in blueprint()["databases"]}
    for kind in ("web", "worker"):
        source = env_entries(service(kind))["DATABASE_URL"]["fromDatabase"]
        assert source["name"] in databases, f"{kind}: no database named {source['name']}"
        assert source["property"] == "connectionString"
    for db in databases.values():
        # Empty: no access from the internet; services use the private network.
        assert db["ipAllowList"] == []
        assert db["plan"].startswith(("basic-", "pro-", "accelerated-")), "legacy plan"
        size = db["diskSizeGB"]
        assert size == 1 or size % 5 == 0, "Render sizes disks as 1 GB or multiples of 5"
        assert isinstance(db["postgresMajorVersion"], str)


def test_retention_fits_the_database_disk():
    """Daily partitions are dropped once older than the retention, so up to one
    day more than it is on disk."""
    days = int(worker_setting("DEPTHWATCH_RETENTION_DAYS"))
    assert days > 0, "retention 0 keeps everything: the disk fills up"
    (database,) = blueprint()["databases"]
    assert (days + 1) * DAILY_GB <= DISK_FULL_AT_MOST * database["diskSizeGB"]


def test_python_version_is_pinned_and_allowed_by_the_package():
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    for kind in ("web", "worker"):
        pinned = literal_env(service(kind))["PYTHON_VERSION"]
        # Unpinned, Render picks its newest Python, which the pins were not tested on.
        assert re.fullmatch(r"3\.\d+\.\d+", pinned), f"{kind}: {pinned!r} is not x.y.z"
        assert Version(pinned) in requires, f"{kind}: {pinned} outside {requires}"


def test_secrets_are_asked_for_or_generated_never_committed():
    entries = env_entries(service("web"))
    assert entries["DASHBOARD_DATABASE_URL"] == {"key": "DASHBOARD_DATABASE_URL", "sync": False}
    # Render makes a random password when the blueprint is applied.
    assert entries["DASHBOARD_PASSWORD"] == {"key": "DASHBOARD_PASSWORD", "generateValue": True}


def test_no_way_to_deploy_a_public_dashboard_by_accident(monkeypatch):
    """The blueprint generates the password and never says public; and a web
    service whose password was cleared anyway (on Render: RENDER=true) shows
    nothing but the refusal, unless DASHBOARD_PUBLIC=1 says so on purpose."""
    entries = env_entries(service("web"))
    assert "value" not in entries["DASHBOARD_PASSWORD"]
    assert "DASHBOARD_PUBLIC" not in blueprint_variables()
    monkeypatch.setenv("RENDER", "true")
    monkeypatch.delenv("DASHBOARD_PASSWORD", raising=False)
    monkeypatch.delenv("DASHBOARD_PUBLIC", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody:x@127.0.0.1:9/nowhere")
    at = AppTest.from_file(str(ROOT / "streamlit" / "dashboard.py")).run(timeout=30)
    assert not at.exception
    assert [t.value for t in at.title] == ["depthwatch"]
    assert "has no password" in at.error[0].value and "DASHBOARD_PUBLIC=1" in at.error[0].value
    assert not at.text_input and not at.sidebar.button  # no form, no navigation
    for almost in ("0", "true", "yes"):  # only exactly 1 says it on purpose
        monkeypatch.setenv("DASHBOARD_PUBLIC", almost)
        at = AppTest.from_file(str(ROOT / "streamlit" / "dashboard.py")).run(timeout=30)
        assert "has no password" in at.error[0].value
    monkeypatch.setenv("DASHBOARD_PUBLIC", "1")
    at = AppTest.from_file(str(ROOT / "streamlit" / "dashboard.py")).run(timeout=30)
    assert not at.exception and at.title[0].value == "Recorded streams"


# Chains of X-Forwarded-For seen by apps on Render (client -> Cloudflare ->
# Render's proxy -> app), with the TCP peer the app saw: arcjet-js issues #3899
# and #5411 (the second with a forged first entry), rohitpaulk.com's
# "Why does request.remote_ip work on Heroku but not Render?".
RENDER_CHAINS = (
    ("81.97.145.24, 172.71.195.123, 10.226.90.65", "10.19.6.53", "81.97.145.24"),
    ("2.2.2.2,1.1.1.1, 172.71.95.118, 10.19.64.237", "10.19.64.1", "1.1.1.1"),
    ("99.61.165.29, 104.22.17.40", "10.21.157.68", "99.61.165.29"),
    # A connection not from Render's proxy: whatever header it sends is ignored.
    ("6.6.6.6", "203.0.113.9", "203.0.113.9"),
)


@pytest.mark.parametrize(("chain", "peer", "client"), RENDER_CHAINS)
def test_the_blueprints_trusted_proxies_name_the_real_client_on_render(chain, peer, client):
    """uvicorn's own rule (ProxyHeadersMiddleware) over the blueprint's
    FORWARDED_ALLOW_IPS picks the address Cloudflare saw, never a forged one."""
    from uvicorn.middleware.proxy_headers import _TrustedHosts

    from depthwatch.app.clients import parse_trusted_proxies

    value = literal_env(service("web"))["FORWARDED_ALLOW_IPS"]
    assert parse_trusted_proxies(value) == value  # only addresses and networks, no '*'
    trusted = _TrustedHosts(value)
    found = trusted.get_trusted_client_address(chain)[0] if peer in trusted else peer
    assert found == client


def test_shutdown_delay_covers_the_collectors_final_flush():
    delay = service("worker")["maxShutdownDelaySeconds"]
    assert isinstance(delay, int)
    assert FINAL_FLUSH_TIMEOUT_S < delay <= RENDER_MAX_SHUTDOWN_DELAY_S


# ---- the environment the code reads


@dataclass(frozen=True)
class EnvRead:
    name: str
    where: str  # path:line
    has_default: bool  # False: the code fails without it


def _is_os_environ(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    ) or (isinstance(node, ast.Name) and node.id == "environ")


def _string_constants(tree: ast.Module) -> dict[str, list[str]]:
    """Names bound to strings: constants (NAME = "...") and loop variables over
    literal tuples (for name in ("A", "B"))."""
    bound: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            text = _string(value)
            if isinstance(target, ast.Name) and text is not None:
                bound.setdefault(target.id, []).append(text)
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            elements = node.iter.elts if isinstance(node.iter, ast.Tuple | ast.List) else []
            texts = [_string(e) for e in elements]
            if texts and None not in texts:
                bound.setdefault(node.target.id, []).extend(filter(None, texts))
    return bound


def _string(node: ast.AST) -> str | None:
    """The value of a string literal; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _read_at(node: ast.AST) -> tuple[ast.expr, bool] | None:
    """(the expression naming the variable, whether the read has a default) when
    `node` reads the environment; None otherwise."""
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        # os.environ["X"] raises KeyError without it.
        return (node.slice, False) if _is_os_environ(node.value) else None
    if not (isinstance(node, ast.Call) and node.args):
        return None
    func = node.func
    if isinstance(func, ast.Attribute):
        # os.environ.get(X) and os.getenv(X) give None (or the default) without it.
        if (func.attr == "get" and _is_os_environ(func.value)) or func.attr == "getenv":
            return node.args[0], True
    elif isinstance(func, ast.Name):
        if func.id in ("_env", "_env_flag", "getenv"):  # config.py's helpers take a default
            return node.args[0], True
        if func.id == "_add_number" and len(node.args) > 4:  # (parser, flag, kind, env, default)
            return node.args[3], True
    return None


def _names(node: ast.expr, *scopes: dict[str, list[str]]) -> list[str]:
    text = _string(node)
    if text is not None:
        return [text]
    if isinstance(node, ast.Name):
        for scope in scopes:
            if node.id in scope:
                return scope[node.id]
    return []


def scan_env_reads(root: Path = SRC) -> tuple[list[EnvRead], list[str]]:
    """Every environment variable read under `root`, and the places where a
    variable's name appears in a way this scan does not recognise as a read
    (each must be taught to the scan, or be a read it can classify)."""
    files = sorted(p for p in root.rglob("*.py") if ".egg-info" not in p.parts)
    trees = {p: ast.parse(p.read_text(), str(p)) for p in files}
    constants = {p: _string_constants(t) for p, t in trees.items()}
    everywhere: dict[str, list[str]] = {}  # for constants imported from another module
    for bound in constants.values():
        for name, values in bound.items():
            everywhere.setdefault(name, []).extend(values)
    reads: list[EnvRead] = []
    mentions: list[tuple[str, str]] = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            where = f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}"
            text = _string(node)
            if text is not None and ENV_NAME.match(text):
                mentions.append((text, where))
            read = _read_at(node)
            if read is not None:
                named, has_default = read
                for name in _names(named, constants[path], everywhere):
                    reads.append(EnvRead(name, where, has_default))
    read_names = {read.name for read in reads}
    unrecognised = [f"{name} at {where}" for name, where in mentions if name not in read_names]
    return reads, unrecognised


def blueprint_variables() -> set[str]:
    return {key for s in blueprint()["services"] for key in env_entries(s)}


def test_every_variable_the_code_reads_is_set_by_the_blueprint_or_has_a_default():
    reads, unrecognised = scan_env_reads()
    names = {read.name for read in reads}
    # The scan itself works: it finds reads of every shape the code uses today.
    assert {"DATABASE_URL", "DEPTHWATCH_SYMBOLS", "DEPTHWATCH_RETENTION_DAYS"} <= names
    assert {"DASHBOARD_DATABASE_URL", "DEPTHWATCH_TRADES", "BYBIT_WS_URL"} <= names
    assert not unrecognised, f"read in a way this test does not know: {unrecognised}"
    required = {f"{read.name} ({read.where})" for read in reads if not read.has_default}
    missing = sorted(r for r in required if r.split()[0] not in blueprint_variables())
    assert not missing, f"required by the code, not set in render.yaml: {missing}"


def test_every_variable_the_blueprint_sets_is_read_by_the_code():
    """A misspelt name in render.yaml would be ignored silently."""
    reads, _ = scan_env_reads()
    unread = blueprint_variables() - PLATFORM_VARIABLES - S3_CLIENT_VARIABLES
    unread -= {read.name for read in reads}
    assert not unread, f"set in render.yaml, read nowhere: {sorted(unread)}"


def test_the_env_scan_sees_every_kind_of_read(tmp_path: Path):
    (tmp_path / "m.py").write_text(
        "import os\n"
        'NAME = "DEPTHWATCH_FROM_CONSTANT"\n'
        'a = os.environ["DEPTHWATCH_REQUIRED"]\n'
        'b = os.environ.get("DEPTHWATCH_OPTIONAL")\n'
        "c = os.environ.get(NAME, '')\n"
        'for n in ("DASHBOARD_A", "DASHBOARD_B"):\n'
        "    os.getenv(n)\n"
        'd = _add_number(p, "--x", int, "DEPTHWATCH_NUMBER", 1, "x")\n'
        'e = {"DEPTHWATCH_UNKNOWN_USE": 1}\n'
    )
    reads, unrecognised = scan_env_reads(tmp_path)
    by_name = {read.name: read.has_default for read in reads}
    assert by_name == {
        "DEPTHWATCH_FROM_CONSTANT": True,
        "DEPTHWATCH_REQUIRED": False,
        "DEPTHWATCH_OPTIONAL": True,
        "DASHBOARD_A": True,
        "DASHBOARD_B": True,
        "DEPTHWATCH_NUMBER": True,
    }
    assert [u.split()[0] for u in unrecognised] == ["DEPTHWATCH_UNKNOWN_USE"]


# ---- both services, run as Render runs them


@dataclass(frozen=True)
class Build:
    """A copy of the repository with the blueprint's build done in its venv."""

    checkout: Path
    bin: Path

    def env(self, svc: dict[str, Any], **extra: str) -> dict[str, str]:
        """What Render gives a command: RENDER=true, the blueprint's values
        (secrets asked for left blank, generated ones made up here), the venv
        first on PATH, and `extra` (DATABASE_URL, PORT, ...)."""
        generated = {
            key: GENERATED_SECRET for key, e in env_entries(svc).items() if e.get("generateValue")
        }
        return {
            "PATH": f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(self.checkout.parent / "home"),
            "LANG": "C.UTF-8",
            "RENDER": "true",
            **generated,
            **literal_env(svc),
            **extra,
        }

    def run(self, command: str, env: dict[str, str], timeout_s: float) -> str:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.checkout,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{output}"
        return output

    def start(self, command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.checkout,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def copy_checkout(destination: Path) -> None:
    """What a clone of this work tree would hold: tracked and not-ignored files
    (no egg-info, no .venv), so nothing installed here can help the commands."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@pytest.fixture(scope="module")
def render_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """One build for the module: a fresh venv from the base interpreter, the
    web service's build command run in it (both services have the same one)."""
    base = tmp_path_factory.mktemp("render")
    checkout, venv = base / "src", base / "venv"
    copy_checkout(checkout)
    (base / "home").mkdir()
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True, timeout=120)
    build = Build(checkout, venv / "bin")
    env = build.env(service("web"))
    env["HOME"] = os.environ.get("HOME", env["HOME"])  # pip's wheel cache
    # No bytecode for the ~6,000 modules installed (a third of the build's time):
    # the services compile what they import when they start. pip reads "0" here
    # as "do not compile" (its --no-* options take inverted values from the env).
    env["PIP_NO_COMPILE"] = "0"
    build.run(service("web")["buildCommand"], env, BUILD_TIMEOUT_S)
    return build


def postgres_scheme(url: str) -> str:
    """The URL as Render hands it out: postgres://..."""
    return "postgres://" + url.split("://", 1)[1]


def test_pre_deploy_command_creates_the_schema(render_build: Build, database_url: str):
    engine = make_engine(database_url)
    try:
        assert schema.schema_version(engine) == 0
        for kind in ("web", "worker"):
            svc = service(kind)
            env = render_build.env(svc, DATABASE_URL=postgres_scheme(database_url))
            output = render_build.run(svc["preDeployCommand"], env, PRE_DEPLOY_TIMEOUT_S)
            assert f"schema at version {schema.MIGRATIONS[-1].version}" in output
        assert schema.schema_version(engine) == schema.MIGRATIONS[-1].version
    finally:
        engine.dispose()


def wait_for(condition, what: str, timeout_s: float, *children: tuple[str, Any]) -> None:
    """Poll `condition`; a child that exits meanwhile fails at once, with its log."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        for name, (proc, log) in children:
            code = proc.poll()
            assert code is None, f"{name} exited ({code}):\n{log.read_text(errors='replace')}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
        time.sleep(POLL_S)


def recorded_up_to(engine: sa.Engine, stream: StreamKey) -> int | None:
    """The newest u recorded for a stream, None before anything is."""
    with engine.connect() as conn:
        if not conn.execute(sa.text("SELECT to_regclass('book_chunks')")).scalar():
            return None
        try:
            recorded = find_stream(conn, stream.category, stream.symbol, stream.depth)
        except NotRecorded:
            return None
        last = last_recorded(conn, recorded)
        return None if last is None else last.u


def caught_up(sim: SimulatorThread, engine: sa.Engine, streams: list[StreamKey]) -> bool:
    for stream in streams:
        topic = f"orderbook.{stream.depth}.{stream.symbol}"
        latest = sim.latest(topic)
        if not sim.finished(topic) or latest is None:
            return False
        if recorded_up_to(engine, stream) != latest.u:
            return False
    return True


def check_live_page(base: str, stream: StreamKey, shot: Path) -> None:
    """Debian's Chromium logs in and loads the Live page of a stream being
    recorded: LIVE and SIMULATED badges, a best bid below the best ask, charts
    drawn."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `apt-get install -y chromium`"
    query = f"category={stream.category}&symbol={stream.symbol}&depth={stream.depth}&window=5"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/live?{query}")
            try:
                # The generated password; the deep link survives the login.
                page.get_by_label("Password", exact=True).fill(GENERATED_SECRET)
                page.get_by_role("button", name="Log in").click()
                page.locator("[data-testid='stApp']").wait_for()
                badge(page, LIVE_BADGE).wait_for()
                badge(page, SIMULATED_BADGE).wait_for()
                page.locator(CHART).first.wait_for()
                # Read in the evaluation that found them: the 1 s refresh
                # redraws the metrics between two evaluations.
                metrics = page.wait_for_function(
                    f"""() => {{
                        const m = ({METRICS_JS})({json.dumps(METRIC)});
                        return m["Best bid"] && m["Best ask"] ? m : null;
                    }}"""
                ).json_value()
                assert parse_price(metrics["Best bid"]) < parse_price(metrics["Best ask"])
                assert not errors, errors
            finally:
                page.screenshot(path=shot, full_page=True)
        finally:
            browser.close()


@contextlib.contextmanager
def children() -> Iterator[dict[str, tuple[subprocess.Popen[bytes], Path]]]:
    """Started services by name; any still running at the end are killed (their
    own process groups: Streamlit and the collector start no others)."""
    running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        yield running
    finally:
        for proc, _ in running.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.mark.timeout(420)  # the module's venv build comes first when run alone
def test_render_services_record_exact_books_and_serve_the_live_page(
    render_build: Build, database_url: str
):
    worker_svc, web_svc = service("worker"), service("web")
    symbols = tuple(worker_setting("DEPTHWATCH_SYMBOLS").split(","))
    category = worker_setting("DEPTHWATCH_CATEGORY")
    depth = int(worker_setting("DEPTHWATCH_DEPTH"))
    streams = [StreamKey(category, symbol, depth) for symbol in symbols]
    url = postgres_scheme(database_url)
    engine = make_engine(database_url)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sim = SimulatorThread(SimConfig(symbols=symbols, rate=SIM_RATE, deltas=SIM_STEPS, seed=6))
    sim.start()
    try:
        with children() as running:
            render_build.run(
                worker_svc["preDeployCommand"],
                render_build.env(worker_svc, DATABASE_URL=url),
                PRE_DEPLOY_TIMEOUT_S,
            )
            worker_env = render_build.env(
                worker_svc, DATABASE_URL=url, BYBIT_WS_URL=sim.url(category)
            )
            worker_log = ARTIFACTS / "render-worker.log"
            running["worker"] = (
                render_build.start(worker_svc["startCommand"], worker_env, worker_log),
                worker_log,
            )
            port = free_port()
            web_env = render_build.env(web_svc, DATABASE_URL=url, PORT=str(port))
            web_log = ARTIFACTS / "render-web.log"
            running["web"] = (
                render_build.start(web_svc["startCommand"], web_env, web_log),
                web_log,
            )
            base = f"http://127.0.0.1:{port}"

            def healthy() -> bool:
                with contextlib.suppress(OSError):
                    return http_get(base + web_svc["healthCheckPath"])[0] == 200
                return False

            wait_for(healthy, "health check answer", START_TIMEOUT_S, *running.items())
            status, html = http_get(base + "/", timeout=5)
            assert status == 200 and b'<div id="root">' in html

            wait_for(
                lambda: all(recorded_up_to(engine, s) for s in streams),
                "recorded book messages",
                START_TIMEOUT_S,
                *running.items(),
            )
            check_live_page(base, streams[0], ARTIFACTS / "render-live.png")

            wait_for(
                lambda: caught_up(sim, engine, streams),
                "worker caught up with the simulator",
                CAUGHT_UP_TIMEOUT_S,
                *running.items(),
            )
            worker, _ = running["worker"]
            delay = worker_svc["maxShutdownDelaySeconds"]
            stopped_at = time.monotonic()
            worker.send_signal(signal.SIGTERM)  # what Render sends before SIGKILL
            code = worker.wait(delay)
            took = time.monotonic() - stopped_at
            log = worker_log.read_text(errors="replace")
            assert code == 0, f"worker exited {code} on SIGTERM:\n{log}"
            assert took < delay

            # DEPTHWATCH_LOG_FORMAT=json: the exit summary is one JSON object.
            summaries = [line for line in log.splitlines() if "everything flushed" in line]
            assert len(summaries) == 1, log
            assert json.loads(summaries[0])["level"] == "INFO"

            web, _ = running["web"]
            web.send_signal(signal.SIGTERM)
            web.wait(START_TIMEOUT_S)

        for stream in streams:
            truth = sim.truth(f"orderbook.{stream.depth}.{stream.symbol}")
            assert_export_matches_truth(engine, stream, truth)
        with engine.connect() as conn:
            trades = conn.execute(sa.text("SELECT count(*) FROM trades")).scalar_one()
            versions = conn.execute(
                sa.text("SELECT DISTINCT version FROM collector_heartbeats")
            ).scalars()
            assert trades > 0, "DEPTHWATCH_TRADES is on: trades are recorded"
            # Not installed as a package, the code still knows its version.
            assert list(versions) == [pyproject()["project"]["version"]]
    finally:
        sim.stop()
        engine.dispose()


def test_ci_tests_the_pins_render_installs():
    """CI runs the README's test command, which installs requirements.txt, so
    the versions tested are the versions Render deploys."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv")]
    test_command = next(c for c in commands if "pytest" in c)
    assert "-r requirements.txt" in test_command
    assert test_command in ci.splitlines()


def test_the_archive_job_runs_after_each_utc_midnight_with_its_secrets_asked_for():
    cron = service("cron")
    minute, hour, *every_day = cron["schedule"].split()
    assert hour == "0" and 10 <= int(minute) < 60 and every_day == ["*", "*", "*"]
    assert cron["startCommand"] == (
        "PYTHONPATH=streamlit python -m depthwatch.cli archive --if-configured"
    )
    entries = env_entries(cron)
    for secret in ("DEPTHWATCH_ARCHIVE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert entries[secret].get("sync") is False, secret
    # The collector's retention waits for the same archive.
    assert env_entries(service("worker"))["DEPTHWATCH_ARCHIVE_URL"].get("sync") is False
    # Archived days leave the database sooner than the retention would drop them.
    hot = int(entries["DEPTHWATCH_HOT_DAYS"]["value"])
    assert 0 < hot < int(worker_setting("DEPTHWATCH_RETENTION_DAYS"))


def test_the_archive_job_does_nothing_until_its_archive_is_set_then_archives(
    render_build: Build, database_url: str, tmp_path: Path
):
    cron = service("cron")
    url = postgres_scheme(database_url)
    render_build.run(
        service("worker")["preDeployCommand"],
        render_build.env(cron, DATABASE_URL=url),
        PRE_DEPLOY_TIMEOUT_S,
    )
    output = render_build.run(
        cron["startCommand"], render_build.env(cron, DATABASE_URL=url), PRE_DEPLOY_TIMEOUT_S
    )
    assert "no archive configured" in output
    root = tmp_path / "archive"
    env = render_build.env(cron, DATABASE_URL=url, DEPTHWATCH_ARCHIVE_URL=str(root))
    output = render_build.run(cron["startCommand"], env, PRE_DEPLOY_TIMEOUT_S)
    assert "every finished day is archived" in output  # nothing recorded yet
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM archive_runs")).scalar() == 1
    finally:
        engine.dispose()


def test_everything_runs_in_one_region():
    """Services reach the database over Render's private network only within a region."""
    resources = blueprint()["services"] + blueprint()["databases"]
    assert len({resource["region"] for resource in resources}) == 1
