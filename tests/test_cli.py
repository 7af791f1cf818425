"""The first hour with the CLI: fast answers, clear config errors, no noise, honest numbers."""

from __future__ import annotations

import inspect
import json
import socket
import subprocess
import sys
import threading
import typing as t
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import singer_sdk.plugin_base
import singer_sdk.streams.core
from support import (
    API_KEY,
    base_config,
    discover,
    run_command,
    tap_command,
    tap_env,
    write_json,
)

from openfunnel_sandbox import JobSpec
from tap_openfunnel import cli, logs, quiet
from tap_openfunnel.api import BALANCE_PATH
from tap_openfunnel.budget import credits_text
from tap_openfunnel.client import OpenFunnelClient
from tap_openfunnel.exceptions import RetriesExhaustedError, UnreachableError
from tap_openfunnel.retries import RetryPolicy
from tap_openfunnel.state_file import STREAM_NAMES
from tap_openfunnel.tap import TapOpenFunnel


def run_cli(tmp_path, config, *args, timeout=60):
    command = [*tap_command(write_json(tmp_path / "config.json", config)), *args]
    return run_command(command, timeout=timeout)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "| ERROR" in line]


def test_connection_test_answers_a_refused_connection_without_retrying(tmp_path):
    config = {"api_key": API_KEY, "api_url": f"http://127.0.0.1:{closed_port()}"}
    proc = run_cli(tmp_path, config, "--test", timeout=30)
    assert proc.returncode == 1
    assert "Connection test failed" in proc.stderr
    assert "Connection refused" in proc.stderr
    assert "retry" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert API_KEY not in proc.stderr


def test_connection_test_prints_credits_as_whole_numbers(server, tmp_path):
    proc = run_cli(tmp_path, base_config(server), "--test")
    assert proc.returncode == 0
    assert "1,000,000 credits left" in proc.stderr


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        pytest.param(1484.0, "1,484", id="whole-float"),
        pytest.param(0, "0", id="zero"),
        pytest.param(12.5, "12.5", id="fraction"),
        pytest.param(1234567.25, "1,234,567.25", id="large-fraction"),
    ],
)
def test_credits_text(amount, text):
    assert credits_text(amount) == text


@pytest.mark.parametrize("mode", [["--test"], [], ["--discover"]])
def test_misspelt_setting_fails_in_every_mode(server, tmp_path, mode):
    proc = run_cli(tmp_path, base_config(server, tam_jobids=["x"]), *mode)
    assert proc.returncode == 1
    assert "'tam_jobids' (did you mean 'tam_job_ids'?)" in proc.stderr
    assert proc.stdout == ""
    assert server.request_count() == 0


@pytest.mark.parametrize("mode", [["--test"], []])
def test_missing_key_is_one_paragraph_naming_the_setting(server, tmp_path, mode):
    config = base_config(server)
    del config["api_key"]
    proc = run_cli(tmp_path, config, *mode)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    [line] = error_lines(proc.stderr)
    assert "Setting 'api_key' is missing or empty" in line
    assert "TAP_OPENFUNNEL_API_KEY" in line


def test_discover_without_a_key_prints_the_catalog_and_says_why_it_warns(server, tmp_path):
    config = base_config(server)
    del config["api_key"]
    proc = run_cli(tmp_path, config, "--discover")
    assert proc.returncode == 0
    streams = {s["tap_stream_id"] for s in json.loads(proc.stdout)["streams"]}
    assert "tam_companies" in streams
    assert "Setting 'api_key' is not set" in proc.stderr
    assert "Config validation failed" not in proc.stderr


def test_discover_with_a_wrongly_typed_setting_fails(server, tmp_path):
    proc = run_cli(tmp_path, base_config(server, poll_interval="soon"), "--discover")
    assert proc.returncode == 1
    assert "config['poll_interval']" in proc.stderr
    assert proc.stdout == ""


def test_refused_key_ends_in_the_tap_message_alone(server, tmp_path):
    job = server.add_job(JobSpec(kind="tam", rows=10))
    proc = run_cli(tmp_path, base_config(server, api_key="of_wrong", tam_job_ids=[job]))
    assert proc.returncode == 1
    [line] = error_lines(proc.stderr)
    assert "Authentication failed" in line
    assert "unhandled error" not in proc.stderr


def test_unknown_job_is_explained_once(server, tmp_path):
    missing = "00000000-0000-4000-8000-000000000000"
    proc = run_cli(tmp_path, base_config(server, tam_job_ids=[missing]))
    assert proc.returncode == 1
    assert proc.stderr.count("was not found for this API key") == 1
    assert "unhandled error" not in proc.stderr
    assert missing in error_lines(proc.stderr)[-1]


def test_run_summary_prints_whole_credits(server, tmp_path):
    job = server.add_job(JobSpec(kind="tam", rows=120))
    proc = run_cli(tmp_path, base_config(server, tam_job_ids=[job]))
    assert proc.returncode == 0, proc.stderr
    assert "; 120 credits consumed" in proc.stderr


def test_retries_running_out_are_explained_once_without_sdk_noise(tmp_path):
    config = {
        "api_key": API_KEY,
        "api_url": f"http://127.0.0.1:{closed_port()}",
        "tam_job_ids": ["8a8e8a97-8192-48ff-849a-d8a96e949732"],
        "max_retries": 1,
        "max_retry_wait": 0.05,
    }
    proc = run_cli(tmp_path, config)
    assert proc.returncode == 1
    assert proc.stderr.count("still failed after 1 retries") == 1
    assert "Connection refused" in proc.stderr
    assert f"No connection to {config['api_url']} could be made" in proc.stderr
    assert "unhandled error" not in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("retry_unreachable", "error", "lookups"),
    [
        pytest.param(False, UnreachableError, 1, id="connection-test"),
        pytest.param(True, RetriesExhaustedError, 3, id="sync"),
    ],
)
def test_unknown_host_is_an_answer_for_the_check_and_retried_by_a_sync(
    monkeypatch, retry_unreachable, error, lookups
):
    calls = []

    def no_such_host(host, *args, **kwargs):
        calls.append(host)
        raise socket.gaierror(-2, "Name or service not known")

    # In process, so that no name lookup leaves the machine.
    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    client = OpenFunnelClient(
        api_url="https://no-such-host.invalid",
        api_key=API_KEY,
        retry=RetryPolicy(max_retries=2, base_wait=0.0, retry_unreachable=retry_unreachable),
    )
    with pytest.raises(error) as raised:
        client.get(BALANCE_PATH)
    assert len(calls) == lookups
    assert "Name or service not known" in str(raised.value)


class _BalanceOnly(BaseHTTPRequestHandler):
    """Answers the balance call with a fixed raw body; anything else 404. Records all."""

    body = b"{}"
    seen: t.ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path))
        found = self.path == BALANCE_PATH
        self._answer(200 if found else 404, self.body if found else b'{"error": "nope"}')

    def do_POST(self) -> None:
        self.seen.append(("POST", self.path))
        self._answer(404, b'{"error": "nope"}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def balance_server():
    """A loopback API whose balance answer a test sets: ``serve(raw) -> url, requests``."""
    servers = []

    def serve(raw: bytes):
        handler = type("Handler", (_BalanceOnly,), {"body": raw, "seen": []})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # A short poll interval makes shutdown quick: it waits for one poll.
        threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", handler.seen

    yield serve
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


LYING_BALANCES = [
    pytest.param(b'{"credits_left": NaN}', "NaN", id="nan"),
    pytest.param(b'{"credits_left": Infinity}', "infinite", id="inf"),
    pytest.param(b'{"credits_left": -5}', "negative (-5)", id="negative"),
    pytest.param(b'{"credits_left": "900"}', "a string ('900')", id="string"),
    pytest.param(b'{"credits_left": true}', "a boolean (true)", id="bool"),
    pytest.param(b'{"total_credits": 10}', "missing", id="missing"),
]


@pytest.mark.parametrize(("raw", "named"), LYING_BALANCES)
def test_a_balance_that_is_not_a_number_refuses_the_submits(balance_server, tmp_path, raw, named):
    url, seen = balance_server(raw)
    config = {"api_key": API_KEY, "api_url": url, "tam_builds": [{"query": "q"}]}
    proc = run_cli(tmp_path, config)
    assert proc.returncode == 1
    [line] = error_lines(proc.stderr)
    assert f"gives credits_left as {named}, not a number of credits" in line
    assert "Nothing was submitted" in line
    assert "Traceback" not in proc.stderr
    assert seen == [("GET", BALANCE_PATH)]  # no POST


@pytest.mark.parametrize(("raw", "named"), LYING_BALANCES)
def test_the_connection_test_never_prints_a_balance_that_is_not_a_number(
    balance_server, tmp_path, raw, named
):
    url, _ = balance_server(raw)
    proc = run_cli(tmp_path, {"api_key": API_KEY, "api_url": url}, "--test")
    assert proc.returncode == 0, proc.stderr
    assert "an unknown number of credits left" in proc.stderr
    assert "nan credits" not in proc.stderr.lower()
    assert "inf credits" not in proc.stderr.lower()


# The --state file in the forms people pass it ----------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda state: state, id="a-state"),
        pytest.param(lambda state: {"type": "STATE", "value": state}, id="a-STATE-message"),
        pytest.param(lambda state: {"singer_state": state}, id="meltano-state-get"),
    ],
)
def test_a_state_in_any_form_people_pass_keeps_its_submits(server, run_tap, wrap):
    # The journal is off: only the state given can tell that the entry was bought.
    server.submit_defaults["tam"] = JobSpec(kind="tam", rows=40, running_seconds=0.1)
    config = base_config(server, tam_builds=[{"query": "devtools"}], journal=False)
    first = run_tap(config)
    assert first.returncode == 0, first.stderr
    second = run_tap(config, state=wrap(first.last_state))
    assert second.returncode == 0, second.stderr
    assert server.submit_count("tam") == 1
    assert second.records("tam_companies") == []


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        pytest.param('{"completed": {"bookmarks": {}}}', "'completed'", id="unknown-top-level"),
        pytest.param(
            '{"type": "STATE", "value": {}, "extra": 1}', "'extra'", id="a-STATE-message-and-more"
        ),
        pytest.param('{"singer_state": {}, "extra": 1}', "'extra'", id="meltano-export-and-more"),
        pytest.param(
            '{"type": "RECORD", "stream": "jobs", "record": {}}', "'RECORD'", id="a-RECORD"
        ),
        pytest.param(
            '{"bookmarks": {"orders": {"replication_key_value": 3}}}',
            "another tap's state",
            id="another-taps-state",
        ),
        pytest.param(
            '{"type": "SCHEMA"}\n{"type": "STATE", "value": {}}\n', "2 JSON lines", id="output"
        ),
    ],
)
def test_a_state_the_tap_cannot_place_is_refused_never_read_as_empty(
    server, tmp_path, text, needle
):
    config = base_config(server, tam_builds=[{"query": "devtools"}])
    state_path = tmp_path / "state.json"
    state_path.write_text(text)
    run = subprocess.run(
        tap_command(write_json(tmp_path / "config.json", config), state_path),
        capture_output=True,
        text=True,
        env=tap_env(),
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    assert needle in run.stderr
    assert "never read as empty" in run.stderr
    assert "Traceback" not in run.stderr
    assert server.request_count() == 0


def test_the_state_file_knows_every_stream_of_the_tap():
    tap = TapOpenFunnel(config={"api_key": API_KEY}, parse_env_config=False)
    assert set(tap.streams) == STREAM_NAMES


def test_help_describes_this_taps_options():
    proc = subprocess.run(
        [sys.executable, "-m", "tap_openfunnel", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # click wraps the lines
    assert "one balance call" in text  # --test: a key check, not the SDK's record sync
    assert "sync a single record" not in text
    assert "Needs no api_key and sends no request" in text  # --discover
    assert "adds each setting's description and default" in text  # --about


@pytest.mark.parametrize(
    ("level", "metrics"),
    [pytest.param(None, False, id="default"), pytest.param("DEBUG", True, id="debug")],
)
def test_sdk_noise_stays_out_and_metrics_come_at_debug(server, tmp_path, level, metrics):
    tam = server.add_job(JobSpec(kind="tam", rows=30))
    command = tap_command(
        write_json(tmp_path / "config.json", base_config(server, tam_job_ids=[tam]))
    )
    env = tap_env() | ({"TAP_OPENFUNNEL_LOGLEVEL": level} if level else {})
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Skipping parse of env var settings" not in proc.stderr
    assert ("METRIC: " in proc.stderr) is metrics
    assert "Summary tam_companies: 1 job(s)" in proc.stderr


@pytest.mark.parametrize(
    ("module", "text"),
    [
        *((singer_sdk.plugin_base, noise) for noise in sorted(quiet.NOISE)),
        (singer_sdk.plugin_base, cli.SDK_CONFIG_WARNING),
        (singer_sdk.streams.core, logs._SDK_STREAM_ERROR),
    ],
)
def test_the_sdk_log_lines_the_tap_matches_are_still_the_sdks(module, text):
    """The tap drops a few SDK log lines by their text (no switch exists for them). Were
    the SDK to reword one, the filter would quietly match nothing: this notices."""
    assert f'"{text}"' in inspect.getsource(module)


def test_api_key_never_printed_even_at_debug(server, tmp_path):
    job = server.add_job(JobSpec(kind="tam", rows=120))
    config_path = write_json(tmp_path / "c.json", base_config(server, tam_job_ids=[job]))
    env = tap_env() | {"TAP_OPENFUNNEL_LOGLEVEL": "DEBUG"}
    proc = subprocess.run(
        tap_command(config_path), capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "DEBUG" in proc.stderr
    assert API_KEY not in proc.stdout
    assert API_KEY not in proc.stderr


def test_python_dash_m_and_discover(tmp_path, server):
    catalog = discover(write_json(tmp_path / "c.json", base_config(server)))
    streams = {entry["tap_stream_id"]: entry for entry in catalog["streams"]}
    assert set(streams) == {"tam_companies", "lookalike_companies", "jobs", "credits_balance"}
    assert streams["tam_companies"]["key_properties"] == ["job_id", "rank"]
    assert streams["jobs"]["key_properties"] == ["job_id"]


@pytest.mark.parametrize(("key", "code"), [(API_KEY, 0), ("of_not_the_key", 1)])
def test_connection_test_is_one_cheap_call(server, tmp_path, key, code):
    """--test checks the key with the balance call: no submit, no waiting."""
    job = server.add_job(JobSpec(kind="tam", rows=10, pending_seconds=60))
    config = base_config(server, api_key=key, tam_job_ids=[job], tam_builds=[{"query": "x"}])
    proc = subprocess.run(
        [*tap_command(write_json(tmp_path / "c.json", config)), "--test"],
        capture_output=True,
        text=True,
        env=tap_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == code
    assert proc.stdout == ""
    assert [r.path for r in server.requests] == ["/api/v1/credits/balance"]
    assert server.submit_count("tam") == 0
    if code == 0:
        assert "Connection test passed" in proc.stderr
        assert "credits left" in proc.stderr
    else:
        assert "Authentication failed" in proc.stderr
        assert key not in proc.stderr


def test_missing_api_key_names_it_without_traceback(server, run_tap):
    config = base_config(server)
    del config["api_key"]
    run = run_tap(config)
    assert run.returncode != 0
    assert "api_key" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_catalog_that_is_not_json_is_named_with_its_option(server, tmp_path):
    """A broken --catalog is not blamed on the state, and the advice fits a catalog."""
    catalog = tmp_path / "catalog.json"
    catalog.write_text("{not json", encoding="utf-8")
    run = run_cli(tmp_path, base_config(server), "--catalog", str(catalog))
    assert run.returncode == 1
    assert f"The catalog file given with --catalog ({catalog}) is not valid JSON" in run.stderr
    assert "--discover" in run.stderr
    assert "state" not in error_lines(run.stderr)[0]
    assert "Traceback" not in run.stderr
    assert server.requests == []


@pytest.mark.parametrize("flag", ["--test", "--discover"])
def test_an_early_exit_closes_the_files_click_opened(server, tmp_path, flag):
    """--test and --discover end the command from their callbacks (--test here with a
    refused connection, so with a failure): the --catalog file click opened is closed
    first, not left to the garbage collector (a ResourceWarning under Meltano)."""
    config = write_json(
        tmp_path / "c.json", base_config(server, api_url=f"http://127.0.0.1:{closed_port()}")
    )
    catalog = write_json(tmp_path / "catalog.json", {"streams": []})
    script = (
        "import sys; from tap_openfunnel.tap import TapOpenFunnel\n"
        f"sys.argv = ['tap-openfunnel', '--config', {str(config)!r}, '--catalog', "
        f"{str(catalog)!r}, {flag!r}]\n"
        "try:\n    TapOpenFunnel.cli()\nexcept SystemExit:\n    pass\n"
    )
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "always", "-c", script],
        capture_output=True,
        text=True,
        env=tap_env(),
        timeout=60,
        check=False,
    )
    assert ("Connection test failed" in proc.stderr) == (flag == "--test")
    assert "ResourceWarning" not in proc.stderr
