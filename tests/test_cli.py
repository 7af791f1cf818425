"""The first hour with the CLI: fast answers, clear config errors, no noise, honest numbers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from support import API_KEY, base_config, tap_command, tap_env, write_json

from tap_openfunnel.api import BALANCE_PATH
from tap_openfunnel.budget import credits_text
from tap_openfunnel.client import OpenFunnelClient
from tap_openfunnel.exceptions import RetriesExhaustedError, UnreachableError
from tap_openfunnel.retries import RetryPolicy
from tap_openfunnel.sandbox import JobSpec


def run_cli(tmp_path, config, *args, timeout=60):
    command = [*tap_command(write_json(tmp_path / "config.json", config)), *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=tap_env(), timeout=timeout, check=False
    )


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
    assert "every setting with its description" in text  # --about


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
