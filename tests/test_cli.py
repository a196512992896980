"""The ``banana2`` command line against the simulator over loopback: through click's runner and as a subprocess."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from banana2_async import GenerationRequest, InvalidRequestError, NotFoundError
from banana2_async.cli import main
from banana2_async.cli._app import JOURNAL_NAME, app
from banana2_async.cli._common import cli_text, configure_logging
from banana2_async.cli._demo import demo_requests
from banana2_async.cli._inputs import parse_requests
from banana2_async.testing import DEFAULT_API_KEY, DEFAULT_CREDITS, Fault, Simulator, SimulatorServer

SECRET = "sk-cli-test-secret-0123456789"
FAST = ["--poll-interval", "0.02"]


@pytest.fixture(scope="module")
def shared_server() -> Iterator[SimulatorServer]:
    """One fast simulator on loopback for the module."""
    with Simulator(speed=200, seed=31).serve() as server:
        yield server


@pytest.fixture
def sim(shared_server: SimulatorServer) -> Iterator[Simulator]:
    """The shared simulator with a clean slate: no faults, zeroed counters, a full account."""
    simulator = shared_server.simulator
    simulator.clear_faults()
    simulator.reset_stats()
    simulator.add_account(DEFAULT_API_KEY, credits=DEFAULT_CREDITS)
    yield simulator
    simulator.clear_faults()


@pytest.fixture
def env(shared_server: SimulatorServer, sim: Simulator) -> dict[str, str | None]:
    """The environment of a command: the simulator's key and address."""
    return {
        "BANANA2_API_KEY": DEFAULT_API_KEY,
        "BANANA2_BASE_URL": shared_server.base_url,
        "FORCE_COLOR": None,
        "TTY_COMPATIBLE": None,
    }


def _invoke(args: list[str], env: Mapping[str, str | None], stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, args, env=env, input=stdin, catch_exceptions=False)


def _json(result: Result) -> Any:
    return json.loads(result.stdout)


def _prompts_file(tmp_path: Path, prompts: list[str], name: str = "prompts.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return path


def _images(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.suffix in (".png", ".jpg"))


def test_generate_downloads_and_prints_json(env: dict[str, str | None], sim: Simulator, tmp_path: Path) -> None:
    """generate submits one task, names it on stderr, waits, downloads it into --out and prints its record as JSON."""
    result = _invoke(["generate", "a red fox", "--aspect-ratio", "16:9", "--out", str(tmp_path), "--json", *FAST], env)
    assert result.exit_code == 0, result.output
    record = _json(result)
    assert record["status"] == "succeeded"
    assert record["credits"] == 20
    assert record["files"] == [str(tmp_path / f"{record['task_id']}-0.png")]
    assert (tmp_path / f"{record['task_id']}-0.png").read_bytes().startswith(b"\x89PNG")
    assert sim.task(record["task_id"]).request["aspect_ratio"] == "16:9"
    assert (
        result.stderr
        == f"task {record['task_id']} submitted; waiting for it (if this stops: banana2 wait {record['task_id']})\n"
    )


def test_generate_prints_a_readable_result(env: dict[str, str | None], sim: Simulator) -> None:
    """Without --json, generate says which task succeeded and where its image is."""
    result = _invoke(["generate", "a red fox", "--format", "jpeg", "--resolution", "2k", *FAST], env)
    assert result.exit_code == 0, result.output
    (task,) = sim.tasks()[-1:]
    assert f"task {task.task_id} succeeded" in result.stdout
    assert f"/results/{task.task_id}/0.jpeg" in result.stdout


def test_edit_sends_an_edit_task(env: dict[str, str | None], sim: Simulator) -> None:
    """edit sends the reference images and costs 24 credits; without --image it is a usage error."""
    result = _invoke(["edit", "make it night", "--image", "https://example.com/day.png", "--json", *FAST], env)
    assert result.exit_code == 0, result.output
    assert _json(result)["credits"] == 24
    assert sim.stats.credits_spent == 24
    assert _invoke(["edit", "make it night"], env).exit_code == 2


def test_status_and_a_failed_task(env: dict[str, str | None], sim: Simulator) -> None:
    """A task the server fails exits 1; status shows it as failed (exit 1) and a finished one as SUCCESS (exit 0)."""
    sim.inject(Fault.fail_task("content policy violation"), times=1)
    failed = _invoke(["generate", "forbidden", "--json", *FAST], env)
    assert failed.exit_code == 1
    record = _json(failed)
    assert record["error"]["type"] == "TaskFailedError"
    assert "content policy violation" in failed.stderr
    shown = _invoke(["status", record["task_id"]], env)
    assert shown.exit_code == 1
    assert "FAILED" in shown.stdout
    assert "content policy violation" in shown.stdout

    done = _json(_invoke(["generate", "allowed", "--json", *FAST], env))
    info = _invoke(["status", done["task_id"], "--json"], env)
    assert info.exit_code == 0
    assert (_json(info)["status"], _json(info)["server_status"]) == ("succeeded", "SUCCESS")
    assert _json(info)["images"] == done["images"]


def test_wait_tracks_tasks_submitted_elsewhere(
    env: dict[str, str | None], sim: Simulator, shared_server: SimulatorServer, tmp_path: Path
) -> None:
    """wait follows tasks created by another program, downloads them, and exits 1 if one failed."""
    sim.inject(Fault.fail_task("nope"), times=1)
    with httpx.Client(base_url=shared_server.base_url, headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"}) as http:
        task_ids = [
            http.post("/api/generate", json={"prompt": prompt}).json()["data"]["task_id"]
            for prompt in ("first", "second", "third")
        ]
    result = _invoke(["wait", *task_ids, "--out", str(tmp_path), "--json", *FAST], env)
    assert result.exit_code == 1
    records = {record["task_id"]: record for record in _json(result)["tasks"]}
    assert [records[task_id]["status"] for task_id in task_ids] == ["failed", "succeeded", "succeeded"]
    assert _images(tmp_path) == sorted(f"{task_id}-0.png" for task_id in task_ids[1:])
    readable = _invoke(["wait", *task_ids[1:], *FAST], env)
    assert readable.exit_code == 0
    assert all(f"task {task_id} succeeded" in readable.stdout for task_id in task_ids[1:])


def test_batch_runs_every_prompt_then_resumes_with_nothing_to_do(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """batch runs a text file of prompts into --out with a journal there; the same command again sends nothing."""
    prompts = [f"a lighthouse, take {index}" for index in range(7)]
    source = _prompts_file(tmp_path, prompts)
    out = tmp_path / "out"
    args = ["batch", str(source), "--out", str(out), "--concurrency", "3", "--json", *FAST]
    first = _invoke(args, env)
    assert first.exit_code == 0, first.output
    document = _json(first)
    assert document["summary"]["succeeded"] == 7
    assert document["summary"]["credits"] == 140
    assert {outcome["status"] for outcome in document["outcomes"]} == {"succeeded"}
    assert len(_images(out)) == 7
    assert (out / JOURNAL_NAME).is_file()

    again = _invoke(args, env)
    assert again.exit_code == 0
    summary = _json(again)["summary"]
    assert (summary["succeeded"], summary["submitted"], summary["credits"]) == (7, 0, 0)
    assert sim.stats.tasks_per_prompt == dict.fromkeys(prompts, 1)

    readable = _invoke(args[:-3], env)
    assert readable.exit_code == 0
    assert "Succeeded" in readable.stdout


def test_batch_reads_json_lines_and_stdin(env: dict[str, str | None], sim: Simulator, tmp_path: Path) -> None:
    """JSON Lines carry each request's options; "-" reads the file from stdin."""
    lines = [
        json.dumps({"prompt": "wide", "aspect_ratio": "21:9", "output_format": "jpeg"}),
        "",
        json.dumps({"prompt": "edited", "images": ["https://example.com/a.png"]}),
    ]
    out = tmp_path / "out"
    result = _invoke(["batch", "-", "--out", str(out), "--json", *FAST], env, stdin="\n".join(lines))
    assert result.exit_code == 0, result.output
    assert _json(result)["summary"]["credits"] == 44
    names = _images(out)
    assert sum(name.endswith(".jpg") for name in names) == 1
    assert sum(name.endswith(".png") for name in names) == 1


def test_a_bad_line_is_a_usage_error(env: dict[str, str | None], sim: Simulator, tmp_path: Path) -> None:
    """A request file with an invalid line exits 2 naming the line, and sends nothing."""
    source = tmp_path / "requests.jsonl"
    source.write_text('{"prompt": "fine"}\n{"prompt": "bad", "resolution": "8k"}\n', encoding="utf-8")
    result = _invoke(["batch", str(source), "--out", str(tmp_path / "out")], env)
    assert result.exit_code == 2
    assert "line 2" in result.stderr
    assert "resolution" in result.stderr
    assert sim.stats.count() == 0


def test_dry_run_prints_the_cost_and_sends_nothing(sim: Simulator, tmp_path: Path) -> None:
    """--dry-run needs no key, prints the number of tasks and their cost, writes no journal and sends nothing."""
    source = _prompts_file(tmp_path, ["one", "two", "three"])
    out = tmp_path / "out"
    no_key = {"BANANA2_API_KEY": None, "BANANA2_BASE_URL": None}
    result = _invoke(["batch", str(source), "--out", str(out), "--dry-run"], no_key)
    assert result.exit_code == 0, result.output
    assert "3 tasks in the job" in result.stdout
    assert "3 to submit for 60 credits" in result.stdout
    assert "nothing was sent" in result.stdout
    document = _json(_invoke(["batch", str(source), "--out", str(out), "--dry-run", "--json"], no_key))
    assert document["plan"]["credits"] == 60
    assert document["refused"] is False
    refused = _invoke(["batch", str(source), "--out", str(out), "--dry-run", "--max-credits", "59"], no_key)
    assert refused.exit_code == 2
    assert "more than --max-credits 59" in refused.stderr
    assert not out.exists()
    assert sim.stats.count() == 0


def test_max_credits_refuses_before_anything_is_sent(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """A run over --max-credits exits 2 before any request; within it the run goes ahead."""
    source = _prompts_file(tmp_path, ["one", "two", "three"])
    out = tmp_path / "out"
    refused = _invoke(["batch", str(source), "--out", str(out), "--max-credits", "40", "--json"], env)
    assert refused.exit_code == 2
    assert _json(refused)["error"]["type"] == "BudgetExceededError"
    assert "60 credits" in refused.stderr
    assert sim.stats.count() == 0
    assert not (out / JOURNAL_NAME).exists()
    allowed = _invoke(["batch", str(source), "--out", str(out), "--max-credits", "60", *FAST], env)
    assert allowed.exit_code == 0, allowed.output


def test_a_402_mid_batch_reports_the_rest_and_the_rerun_finishes(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """With credits for 3 of 6 tasks: exit 1, the rest reported unsubmitted; after a top-up the same command ends it."""
    sim.set_credits(60)
    prompts = [f"poster {index}" for index in range(6)]
    source = _prompts_file(tmp_path, prompts)
    args = ["batch", str(source), "--out", str(tmp_path / "out"), "--concurrency", "1", *FAST]
    result = _invoke(args, env)
    assert result.exit_code == 1
    assert "ran out of credits" in result.stdout
    assert "Not submitted" in result.stdout
    assert sim.stats.tasks_created == 3
    sim.set_credits(1000)
    rerun = _invoke([*args, "--json"], env)
    assert rerun.exit_code == 0, rerun.output
    assert _json(rerun)["summary"]["submitted"] == 3
    assert sim.stats.tasks_per_prompt == dict.fromkeys(prompts, 1)


def test_a_corrupt_journal_is_a_usage_error_and_left_alone(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """A journal file that is not a journal exits 2 with a clear message; the file is not touched."""
    out = tmp_path / "out"
    out.mkdir()
    journal = out / JOURNAL_NAME
    journal.write_bytes(b"definitely not sqlite\n" * 50)
    source = _prompts_file(tmp_path, ["one"])
    for extra in ([], ["--dry-run"]):
        result = _invoke(["batch", str(source), "--out", str(out), *extra, *FAST], env)
        assert result.exit_code == 2
        assert "journal" in result.stderr
        assert "corrupt" in result.stderr
    assert journal.read_bytes() == b"definitely not sqlite\n" * 50
    assert sim.stats.count() == 0


def test_configuration_and_authentication_errors_exit_3_without_the_key(
    env: dict[str, str | None], sim: Simulator, shared_server: SimulatorServer
) -> None:
    """No key, an unsafe base URL, or a refused key exit 3; the key never appears in any output or help."""
    missing = _invoke(["generate", "x"], {**env, "BANANA2_API_KEY": None})
    assert missing.exit_code == 3
    assert "no API key" in missing.stderr
    insecure = _invoke(["status", "t", "--api-key", SECRET, "--base-url", "http://example.com"], env)
    assert insecure.exit_code == 3
    refused = _invoke(["generate", "x", "--json"], {**env, "BANANA2_API_KEY": SECRET})
    assert refused.exit_code == 3
    assert _json(refused)["error"]["type"] == "AuthenticationError"
    helped = _invoke(["batch", "--help"], {**env, "BANANA2_API_KEY": SECRET})
    assert "BANANA2_API_KEY" in helped.stdout
    for result in (insecure, refused, helped):
        assert SECRET not in result.output
        assert SECRET not in result.stderr


def test_a_refused_key_mid_batch_exits_3(env: dict[str, str | None], sim: Simulator, tmp_path: Path) -> None:
    """When the key is refused during a bulk run, nothing more is sent and the exit status is 3."""
    sim.remove_account(DEFAULT_API_KEY)
    source = _prompts_file(tmp_path, ["one", "two"])
    result = _invoke(["batch", str(source), "--out", str(tmp_path / "out"), "--concurrency", "1", *FAST], env)
    assert result.exit_code == 3
    assert "key was refused" in result.stderr
    assert sim.stats.count("generate") == 1


def test_progress_goes_to_stderr_only_on_a_terminal(env: dict[str, str | None], sim: Simulator, tmp_path: Path) -> None:
    """On a terminal (FORCE_COLOR) a progress bar is drawn on stderr; otherwise stderr stays quiet; stdout never."""
    source = _prompts_file(tmp_path, ["one", "two"])
    quiet = _invoke(["batch", str(source), "--out", str(tmp_path / "a"), "--json", *FAST], env)
    assert quiet.exit_code == 0
    assert quiet.stderr == ""
    live = _invoke(["batch", str(source), "--out", str(tmp_path / "b"), "--json", *FAST], {**env, "FORCE_COLOR": "1"})
    assert live.exit_code == 0
    assert "Generating" in live.stderr
    assert "2 to submit for 40 credits" in live.stderr
    assert "in flight" in live.stderr
    assert _json(live)["summary"]["succeeded"] == 2
    single = _invoke(["generate", "one", *FAST], {**env, "FORCE_COLOR": "1"})
    assert single.exit_code == 0
    assert "succeeded" in single.stdout


def test_verbose_logs_what_the_sdk_does(env: dict[str, str | None], sim: Simulator) -> None:
    """-vv logs each request on stderr; without it, absorbed trouble stays quiet."""
    sim.inject(Fault.rate_limit(0.01), on="status", times=1)
    quiet = _invoke(["generate", "x", *FAST], env)
    assert quiet.exit_code == 0
    assert "rate limited" not in quiet.stderr
    loud = _invoke(["-vv", "generate", "x", *FAST], env)
    assert loud.exit_code == 0
    assert "banana2: POST /api/generate -> 200" in loud.stderr


@pytest.mark.slow
def test_demo_runs_a_real_bulk_job_and_summarises_it(tmp_path: Path) -> None:
    """demo runs real tasks against a loopback simulator, downloads real images and reports the run."""
    out = tmp_path / "demo"
    result = _invoke(["demo", "--count", "9", "--speed", "100", "--out", str(out), "--json"], {})
    assert result.exit_code == 0, result.output
    summary = _json(result)["summary"]
    assert (summary["tasks"], summary["succeeded"], summary["failed"], summary["images"]) == (9, 9, 0, 9)
    # The ninth demo request is an edit.
    assert summary["credits"] == 8 * 20 + 24
    assert summary["requests_sent"] == summary["submits"] + summary["polls"]
    assert summary["faults_absorbed"] >= 1
    images = _images(out)
    assert len(images) == 9
    for name in images:
        head = (out / name).read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if name.endswith(".png") else b"\xff\xd8\xff")
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [record["row"] for record in records] == list(range(1, 10))
    assert sorted(name for record in records for name in record["files"]) == images
    # --json names the files as written (from the current directory); the manifest, from its own directory.
    assert [{**record, "files": []} for record in _json(result)["outcomes"]] == [
        {**record, "files": []} for record in records
    ]
    page = (out / "gallery.html").read_text(encoding="utf-8")
    assert all(f'src="{name}"' in page for name in images)
    table = _invoke(["demo", "--count", "2", "--speed", "100", "--out", str(out)], {})
    assert table.exit_code == 0
    for label in ("Tasks", "Succeeded", "Failed", "Credits", "Requests sent", "Wall time"):
        assert label in table.stdout


def test_uncertain_rows_are_explained_and_resumable(env: dict[str, str | None], sim: Simulator, tmp_path: Path) -> None:
    """A submit whose answer is lost is listed as uncertain with what to do; a dry run then shows what is left."""
    sim.inject(Fault.server_error(after_create=True), on="generate", times=1)
    source = _prompts_file(tmp_path, ["one", "two"])
    out = tmp_path / "out"
    args = ["batch", str(source), "--out", str(out), "--concurrency", "1", *FAST]
    result = _invoke(args, env)
    assert result.exit_code == 1
    assert "uncertain" in result.stdout
    assert "--resubmit-uncertain sends them anyway" in result.stdout
    planned = _invoke([*args, "--dry-run"], env)
    assert "1 finished earlier" in planned.stdout
    assert "1 may have been paid for already" in planned.stdout
    assert "0 to submit for 0 credits" in planned.stdout
    conn = sqlite3.connect(out / JOURNAL_NAME)
    conn.execute("UPDATE requests SET state = 'submitted', task_id = 'lost' WHERE state = 'submitting'")
    conn.commit()
    conn.close()
    assert "1 of an earlier run to wait for" in _invoke([*args, "--dry-run"], env).stdout


def test_many_failures_are_summarised(env: dict[str, str | None], sim: Simulator, tmp_path: Path) -> None:
    """Past twenty failures, the human report lists the first ones and counts the rest."""
    sim.inject(Fault.fail_task("nope"), times=22)
    source = _prompts_file(tmp_path, [f"doomed {index}" for index in range(22)])
    result = _invoke(["batch", str(source), "--out", str(tmp_path / "out"), "--concurrency", "8", *FAST], env)
    assert result.exit_code == 1
    assert result.stdout.count("✗ row") == 20
    assert "… and 2 more (--json lists every one)" in result.stdout


def test_other_errors_exit_1_and_a_refused_key_exits_3(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """An unknown task is a failure (exit 1); a key refused while waiting is exit 3; --out names the saved file."""
    unknown = _invoke(["status", "no-such-task", "--json"], env)
    assert unknown.exit_code == 1
    assert _json(unknown)["error"]["type"] == "NotFoundError"
    refused = _invoke(["wait", "some-task", *FAST], {**env, "BANANA2_API_KEY": SECRET})
    assert refused.exit_code == 3
    saved = _invoke(["generate", "kept", "--out", str(tmp_path), *FAST], env)
    assert saved.exit_code == 0
    assert f"saved {tmp_path}" in saved.stdout


def test_demo_requests_vary_and_say_so_on_a_terminal(tmp_path: Path) -> None:
    """Past its 24 prompts the demo makes variations; edits name loopback references; a terminal gets a banner."""
    requests = demo_requests(26, "http://127.0.0.1:1")
    assert len({request.prompt for request in requests}) == 26
    assert requests[24].prompt.endswith("(variation 2)")
    edits = [request for request in requests if request.task_type == "edit"]
    assert edits
    assert all(url.startswith("http://127.0.0.1:1/reference/") for request in edits for url in request.images or ())
    live = _invoke(["demo", "--count", "2", "--speed", "100", "--out", str(tmp_path)], {"FORCE_COLOR": "1"})
    assert live.exit_code == 0
    assert "Running 2 tasks against the NanoBanana 2 simulator" in live.stderr
    assert "no key, no network" in " ".join(live.stderr.split())


def test_parse_requests() -> None:
    """Plain lines are prompts; JSON Lines are request objects; bad lines and empty files are named errors."""
    assert parse_requests(["  a cat \n", "\n", "a dog\r\n"]) == [
        GenerationRequest(prompt="a cat"),
        GenerationRequest(prompt="a dog"),
    ]
    assert parse_requests(['{"prompt": "p", "type": "edit", "images": ["https://x.io/i.png"]}']) == [
        GenerationRequest(prompt="p", type="edit", images=("https://x.io/i.png",))
    ]
    with pytest.raises(InvalidRequestError, match="holds no requests"):
        parse_requests(["", "  "])
    with pytest.raises(InvalidRequestError, match=r"f.jsonl, line 2, column 2: not valid JSON"):
        parse_requests(['{"prompt": "p"}', "{nope"], source="f.jsonl")
    with pytest.raises(InvalidRequestError, match="line 2: a line must be a request object or a prompt string"):
        parse_requests(['{"prompt": "p"}', "[1, 2]"])
    with pytest.raises(InvalidRequestError, match=r"line 1: .*unknown"):
        parse_requests(['{"prompt": "p", "unknown": 1}'])


def _cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "banana2_async.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FORCE_COLOR": "", "BANANA2_API_KEY": ""},
        check=False,
        **kwargs,
    )


@pytest.mark.slow
def test_the_command_runs_as_a_program(tmp_path: Path) -> None:
    """python -m banana2_async.cli runs the demo as a real process; --version and main() behave."""
    demo = _cli("demo", "--count", "2", "--speed", "100", "--out", str(tmp_path / "demo"))
    assert demo.returncode == 0, demo.stderr
    assert "banana2 demo" in demo.stdout
    assert len(_images(tmp_path / "demo")) == 2
    usage = _cli("batch")
    assert usage.returncode == 2
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0


def test_without_its_extra_the_command_says_what_to_install() -> None:
    """When click is missing, banana2 exits 3 and names the extra to install."""
    code = "import sys; sys.modules['click'] = None; from banana2_async.cli import main; main(['--help'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3
    assert "pip install 'banana2-async[cli]'" in done.stderr


def test_simulate_serves_until_terminated() -> None:
    """banana2 simulate serves the API on loopback, for the key given with --api-key, until SIGTERM; exits 0."""
    key = "sk-my-own-test-key"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "banana2_async.cli", "simulate"),
            *("--port", "0", "--seed", "1", "--credits", "20", "--api-key", key),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        base_url = first.strip().rsplit(" ", 1)[-1]
        assert base_url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=base_url) as http:
            assert http.get("/api/status", params={"task_id": "x"}).status_code == 401
            default = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
            assert http.post("/api/generate", json={"prompt": "p"}, headers=default).status_code == 401
            authorised = {"Authorization": f"Bearer {key}"}
            assert http.post("/api/generate", json={"prompt": "p"}, headers=authorised).status_code == 200
            assert http.post("/api/generate", json={"prompt": "p"}, headers=authorised).status_code == 402
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


TASK_KEYS = {"task_id", "status", "server_status", "type", "images", "files", "credits", "created_at", "error"}


def test_every_json_task_has_one_shape(env: dict[str, str | None], sim: Simulator, tmp_path: Path) -> None:
    """generate, edit, wait and status print a task with the same keys, failed ones and error documents too."""
    generated = _json(_invoke(["generate", "a fox", "--out", str(tmp_path), "--json", *FAST], env))
    edited = _json(_invoke(["edit", "at night", "--image", "https://example.com/a.png", "--json", *FAST], env))
    waited = _json(_invoke(["wait", generated["task_id"], "--json", *FAST], env))["tasks"][0]
    shown = _json(_invoke(["status", generated["task_id"], "--json"], env))
    sim.inject(Fault.fail_task("nope"), times=1)
    failed = _json(_invoke(["generate", "doomed", "--json", *FAST], env))
    for document in (generated, edited, waited, shown):
        assert set(document) == TASK_KEYS
        assert (document["status"], document["server_status"], document["error"]) == ("succeeded", "SUCCESS", None)
    assert set(failed) == TASK_KEYS
    assert (failed["status"], failed["error"]["type"]) == ("failed", "TaskFailedError")
    assert (edited["type"], edited["credits"]) == ("edit", 24)
    assert generated["files"]
    assert waited["files"] == []
    assert shown["images"] == generated["images"] == waited["images"]


def test_options_are_taken_as_the_sdk_takes_them(env: dict[str, str | None], sim: Simulator) -> None:
    """--resolution 2K and --format JPG are 2k and jpeg, as in the SDK; a value the SDK refuses is a usage error
    naming the choices."""
    result = _invoke(["generate", "a fox", "--resolution", "2K", "--format", "JPG", *FAST], env)
    assert result.exit_code == 0, result.output
    (task,) = sim.tasks()[-1:]
    assert (task.request["resolution"], task.request["output_format"]) == ("2k", "jpeg")
    refused = _invoke(["generate", "a fox", "--resolution", "8k"], env)
    assert refused.exit_code == 2
    assert "'8k' is not one of 1k, 2k, 4k" in refused.stderr
    assert "[1k|2k|4k]" in _invoke(["generate", "--help"], env).stdout


def test_commands_offer_only_the_options_they_use(env: dict[str, str | None]) -> None:
    """status waits for nothing, so it has no --poll-interval; the commands that wait have it."""
    assert "--poll-interval" not in _invoke(["status", "--help"], env).stdout
    refused = _invoke(["status", "some-task", "--poll-interval", "1"], env)
    assert refused.exit_code == 2
    assert "No such option" in refused.stderr
    assert "--poll-interval" in refused.stderr
    for command in ("generate", "edit", "wait", "batch"):
        assert "--poll-interval" in _invoke([command, "--help"], env).stdout


def test_bare_banana2_prints_its_help() -> None:
    """banana2 with no command prints its help on stdout and exits 0."""
    result = _invoke([], {})
    assert result.exit_code == 0
    assert "Commands:" in result.stdout
    assert "batch" in result.stdout


def test_messages_name_flags_public_classes_and_count_in_english(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """Errors name public classes (banana2_async.NotFoundError) and CLI flags (--max-credits 40), never private
    modules or Python arguments; one row is "1 task", not "1 tasks"."""
    unknown = _invoke(["status", "no-such-task"], env)
    assert "error: banana2_async.NotFoundError: 404" in unknown.stderr
    one = _prompts_file(tmp_path, ["only one"])
    planned = _invoke(["batch", str(one), "--out", str(tmp_path / "out"), "--dry-run"], env)
    assert "1 task in the job; 1 to submit for 20 credits" in planned.stdout
    assert "1 row" in planned.stdout
    source = _prompts_file(tmp_path, ["one", "two", "three"], name="three.txt")
    budget = _invoke(["batch", str(source), "--out", str(tmp_path / "out"), "--max-credits", "40"], env)
    assert budget.exit_code == 2
    assert "this run would cost 60 credits for 3 tasks, more than --max-credits 40; nothing was sent" in budget.stderr
    sim.inject(Fault.server_error(after_create=True), on="generate", times=1)
    uncertain = _invoke(["batch", str(one), "--out", str(tmp_path / "u"), *FAST], env)
    again = _invoke(["batch", str(one), "--out", str(tmp_path / "u"), *FAST], env)
    assert "1 request may have been paid for without an answer and is not sent again" in uncertain.stdout
    assert "--resubmit-uncertain sends them anyway" in again.stdout
    sdk = "not sent again unless resubmit_uncertain=True; more than max_credits=100; use another journal path"
    assert cli_text(sdk) == (
        "not sent again unless --resubmit-uncertain; more than --max-credits 100; use another --journal (or --out)"
    )
    everything = "".join(result.output + result.stderr for result in (unknown, planned, budget, uncertain, again))
    for private in ("banana2_async._", "resubmit_uncertain=", "max_credits=", "1 tasks", "(s)"):
        assert private not in everything


def test_log_lines_name_an_error_without_its_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    """A logged error shows as one line naming its public class, unless -vv asks for the traceback."""
    for verbose, traceback in ((0, False), (2, True)):
        restore = configure_logging(verbose)
        try:
            try:
                raise NotFoundError("task gone", status_code=404)
            except NotFoundError:
                logging.getLogger("banana2_async").exception("polling task t-1 failed unexpectedly")
        finally:
            restore()
        err = capsys.readouterr().err
        assert ("Traceback" in err) is traceback
        if not traceback:
            assert (
                err == "banana2: polling task t-1 failed unexpectedly (banana2_async.NotFoundError: 404: task gone)\n"
            )
