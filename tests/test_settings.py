"""Settings the tap cannot use are refused before any request, with a paragraph naming them."""

from __future__ import annotations

from typing import Any

import pytest
from hostile import GOOD, HostileAPI, HostileJob, run_against
from support import API_KEY, base_config

from openfunnel_sandbox import JobSpec
from tap_openfunnel.exceptions import ConfigurationError
from tap_openfunnel.jobs import JobType
from tap_openfunnel.settings import Settings

UUID = "8a8e8a97-8192-48ff-849a-d8a96e949732"


def settings(**config: Any) -> Settings:
    return Settings.from_config({"api_key": API_KEY, **config})


REFUSED_URLS = [
    pytest.param("https://user:pass@api.example", "without a query string", id="user-pass"),
    pytest.param("https://user@api.example", "or credentials", id="user"),
    pytest.param("https://:pass@api.example", "or credentials", id="password-only"),
    pytest.param("https://@api.example", "or credentials", id="empty-user-info"),
    pytest.param("http://user:pass@127.0.0.1:8080", "or credentials", id="loopback-user-pass"),
    pytest.param("https://api.example?region=eu", "without a query string", id="query"),
    pytest.param("https://api.example#top", "a fragment", id="fragment"),
    pytest.param("http://api.example", "plain HTTP", id="http-not-loopback"),
    pytest.param("ftp://api.example", "absolute http(s) URL", id="other-scheme"),
    pytest.param("api.example", "absolute http(s) URL", id="no-scheme"),
    pytest.param("https://api.example:port", "absolute http(s) URL", id="port-not-a-number"),
    pytest.param("https://api.example/api/v1", "looks like an endpoint", id="endpoint"),
]


@pytest.mark.parametrize(("api_url", "needle"), REFUSED_URLS)
def test_an_api_url_the_tap_cannot_use_safely_is_refused(api_url, needle):
    with pytest.raises(ConfigurationError, match="Setting 'api_url'") as caught:
        settings(api_url=api_url)
    assert needle in str(caught.value)
    assert "pass@" not in str(caught.value)  # credentials are not echoed


@pytest.mark.parametrize(
    ("api_url", "kept"),
    [
        ("https://api.openfunnel.dev/", "https://api.openfunnel.dev"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("http://localhost", "http://localhost"),
        ("https://proxy.example/openfunnel", "https://proxy.example/openfunnel"),
    ],
)
def test_a_usable_api_url_is_kept(api_url, kept):
    assert settings(api_url=api_url).api_url == kept


REFUSED_IDS = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dot-dot"),
    pytest.param("a/b", id="slash"),
    pytest.param("../credits/balance", id="climbs-out"),
    pytest.param("a?b", id="query"),
    pytest.param("a#b", id="fragment"),
    pytest.param("%2e%2e", id="escaped-dots"),
    pytest.param("a b", id="space"),
    pytest.param("a\nb", id="line-break"),
    pytest.param("jöb", id="non-ascii"),
    pytest.param("a.b", id="dot-inside"),
    pytest.param("x" * 129, id="too-long"),
    pytest.param(7, id="number"),
]


@pytest.mark.parametrize("setting", ["tam_job_ids", "lookalike_job_ids"])
@pytest.mark.parametrize("job_id", REFUSED_IDS)
def test_a_job_id_that_could_leave_its_path_segment_is_refused_by_position(setting, job_id):
    with pytest.raises(ConfigurationError) as caught:
        settings(**{setting: [UUID, job_id]})
    message = str(caught.value)
    assert message.startswith(f"Setting '{setting}[1]' is ")
    assert "not a job id" in message or "not a string" in message
    assert "letters, digits, '-' or '_'" in message or "not a string" in message


def test_usable_job_ids_are_kept_in_order_once():
    ids = [UUID, " good-job ", "abc_DEF-123", UUID, "x" * 128]
    assert settings(tam_job_ids=ids).job_ids(JobType.TAM) == (
        UUID,
        "good-job",
        "abc_DEF-123",
        "x" * 128,
    )


def test_a_misspelt_setting_is_refused_with_a_suggestion(server, run_tap):
    job = server.add_job(JobSpec(kind="tam", rows=10))
    run = run_tap(base_config(server, tam_jobs_ids=[job]))
    assert run.returncode == 1
    assert "'tam_jobs_ids' (did you mean 'tam_job_ids'?)" in run.stderr
    assert "Traceback" not in run.stderr
    assert server.request_count() == 0


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        pytest.param(API_KEY + "\r\nX-Evil: 1", "cannot have", id="crlf"),
        pytest.param(API_KEY + "é", "cannot have", id="non-latin-1"),
        pytest.param("of_a b", "cannot have", id="inner-space"),
    ],
)
def test_a_key_that_cannot_be_a_header_is_refused_without_echo(tmp_path, key, needle):
    jobs = {GOOD: HostileJob()}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        run = run_against(api, tmp_path, api_key=key)
        served = len(api.served)
    assert run.returncode == 1
    assert needle in run.stderr
    assert "Traceback" not in run.stderr
    assert key not in run.stderr
    assert API_KEY not in run.stderr + run.stdout
    assert served == 0


@pytest.mark.parametrize(
    ("api_url", "needle"),
    [
        pytest.param("{url}/api/v1/tam/build", "looks like an endpoint", id="endpoint-path"),
        pytest.param("{url}?region=eu", "without a query string", id="query"),
        pytest.param("{url}#top", "without a query string", id="fragment"),
    ],
)
def test_an_api_url_the_tap_cannot_use_is_refused(tmp_path, api_url, needle):
    with HostileAPI({GOOD: HostileJob()}, api_key=API_KEY) as api:
        run = run_against(api, tmp_path, api_url=api_url.format(url=api.url))
        served = len(api.served)
    assert run.returncode == 1
    assert needle in run.stderr
    assert "Traceback" not in run.stderr
    assert served == 0
