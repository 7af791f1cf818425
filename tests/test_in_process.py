"""The tests' in-process run of the tap: the command's answer, and no trace left behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess

import in_process
from support import API_KEY, base_config, parse_messages, tap_command, tap_env, write_json

from openfunnel_sandbox import JobSpec


def process_state():
    """What a run changes in the process and a process of its own would throw away."""
    root = logging.getLogger()
    return (
        {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)},
        [(handler, list(handler.filters)) for handler in root.handlers],
        list(root.filters),
        root.level,
        list(logging.lastResort.filters) if logging.lastResort else [],
        dict(os.environ),
    )


def test_a_run_in_process_answers_as_the_command_does_and_leaves_no_trace(server, tmp_path):
    job = server.add_job(JobSpec(kind="tam", rows=230))
    command = tap_command(write_json(tmp_path / "c.json", base_config(server, tam_job_ids=[job])))
    before = process_state()
    code, out, err = in_process.run_cli(command[3:])
    assert process_state() == before
    proc = subprocess.run(
        command, capture_output=True, text=True, env=tap_env(), timeout=60, check=False
    )
    assert code == proc.returncode == 0, err
    assert API_KEY not in out + err
    here, there = parse_messages(out), parse_messages(proc.stdout)
    assert [(m["type"], m.get("stream")) for m in here] == [
        (m["type"], m.get("stream")) for m in there
    ]
    ranks = [
        m["record"]["rank"]
        for m in here
        if m["type"] == "RECORD" and m["stream"] == "tam_companies"
    ]
    assert ranks == list(range(1, 231))
    # The tap's own log lines came out on the run's stderr, not the test's.
    assert "tam_companies" in err


def test_a_failing_run_in_process_exits_as_the_command_does(server, tmp_path):
    command = tap_command(write_json(tmp_path / "c.json", base_config(server, tam_jobids=["x"])))
    before = process_state()
    code, out, err = in_process.run_cli(command[3:])
    assert process_state() == before
    assert (code, out) == (1, "")
    assert "'tam_jobids' (did you mean 'tam_job_ids'?)" in err
    assert "Traceback" not in err
