"""Job ids stay in their URL path segment: refused where they enter, and never requested."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hostile import TAM_PATH, HostileAPI, HostileJob, run_tap_against
from support import API_KEY

from tap_openfunnel.api import ENDPOINTS
from tap_openfunnel.exceptions import ApiError
from tap_openfunnel.jobs import JobType

GOOD = "good-job"
UUID = "8a8e8a97-8192-48ff-849a-d8a96e949732"


def run_tap(api: HostileAPI, tmp_path, state: dict[str, Any] | None = None, **settings: Any):
    run = run_tap_against(api, tmp_path, state=state, **{"max_retries": 1, **settings})
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert API_KEY not in run.stdout + run.stderr
    return run


ESCAPING = ["..", ".", "../../credits/balance", "a/../b", "%2e%2e"]


@pytest.mark.parametrize("job_id", ESCAPING)
def test_a_configured_id_that_would_leave_its_segment_is_refused_before_any_request(
    tmp_path, job_id
):
    with HostileAPI({GOOD: HostileJob()}, api_key=API_KEY) as api:
        run = run_tap(api, tmp_path, tam_job_ids=[GOOD, job_id])
        served = [s.path for s in api.served]
    assert run.returncode == 1
    assert "Setting 'tam_job_ids[1]' is " in run.stderr
    assert "which is not a job id" in run.stderr
    assert served == []


@pytest.mark.parametrize("job_id", ESCAPING)
def test_a_state_id_that_would_leave_its_segment_is_refused_before_any_request(tmp_path, job_id):
    state = {
        "bookmarks": {
            "tam_companies": {"partitions": [{"context": {"job_id": job_id}, "done": True}]}
        }
    }
    with HostileAPI({GOOD: HostileJob()}, api_key=API_KEY) as api:
        run = run_tap(api, tmp_path, state=state, tam_job_ids=[GOOD])
        served = [s.path for s in api.served]
    assert run.returncode == 1
    assert "partitions[0].context.job_id is " in run.stderr
    assert "meltano state clear" in run.stderr
    assert served == []


@pytest.mark.parametrize("answered", [*ESCAPING, "", None, 12])
def test_a_submit_answer_whose_id_would_leave_its_segment_polls_nothing(tmp_path, answered):
    with HostileAPI({GOOD: HostileJob()}, api_key=API_KEY) as api:
        posts: list[str] = []

        def do_post(handler: Any) -> None:
            posts.append(handler.path)
            body = {"status": "pending"} if answered is None else {"job_id": answered}
            raw = json.dumps(body).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(raw)))
            handler.end_headers()
            handler.wfile.write(raw)

        api.httpd.RequestHandlerClass.do_POST = do_post  # type: ignore[attr-defined]
        run = run_tap(api, tmp_path, tam_builds=[{"query": "observability tools"}])
        polled = [s.path for s in api.served if s.path.startswith("/api/v1/tam/")]
    assert posts == ["/api/v1/tam/build"]
    assert run.returncode == 1
    assert "may already be billed" in run.stderr
    assert "'tam_job_ids'" in run.stderr
    assert polled == []
    # No partition under an id the tap would have to request later.
    for state in run.states:
        for partition in state.get("bookmarks", {}).get("tam_companies", {}).get("partitions", []):
            assert partition["context"]["job_id"] == GOOD


@pytest.mark.parametrize("job_type", list(JobType))
@pytest.mark.parametrize("job_id", ["..", ".", "", "a/b", "a?b"])
def test_the_url_builder_refuses_an_id_that_got_past_the_checks(job_type, job_id):
    with pytest.raises(ApiError, match="nothing was sent"):
        ENDPOINTS[job_type].job(job_id)
    with pytest.raises(ApiError, match="nothing was sent"):
        ENDPOINTS[job_type].command(job_id, "cancel")


@pytest.mark.parametrize(
    ("job_type", "path"),
    [
        (JobType.TAM, f"{TAM_PATH}8a8e8a97-8192-48ff-849a-d8a96e949732"),
        (
            JobType.LOOKALIKE,
            "/api/v1/account/search-lookalikes-bulk/8a8e8a97-8192-48ff-849a-d8a96e949732",
        ),
    ],
)
def test_a_poll_path_is_the_reference_path_with_one_segment(job_type, path):
    assert ENDPOINTS[job_type].job(UUID) == path
    assert ENDPOINTS[job_type].command(UUID, "cancel") == f"{path}/cancel"
