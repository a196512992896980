"""``banana2 batch`` as a person uses it, against the simulator over loopback: every input format and encoding, the
dry run, the manifest, retries, a job that grows, a server that cannot be reached, a resumed run."""

from __future__ import annotations

import codecs
import json
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from banana2_async.cli._app import JOURNAL_NAME, app
from banana2_async.testing import DEFAULT_API_KEY, DEFAULT_CREDITS, Fault, Simulator, SimulatorServer

FAST = ["--poll-interval", "0.02"]
EDIT_URL = "https://example.com/a.png"
MANIFEST_FIELDS = {
    "row",
    "id",
    "line",
    "prompt",
    "options",
    "metadata",
    "status",
    "task_id",
    "error",
    "credits",
    "images",
    "files",
    "price",
}


@pytest.fixture(scope="module")
def shared_server() -> Iterator[SimulatorServer]:
    """One fast simulator on loopback for the module."""
    with Simulator(speed=200, seed=41).serve() as server:
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
def sent(sim: Simulator) -> Callable[[], list[dict[str, Any]]]:
    """The request bodies of the tasks created since the test began."""
    before = len(sim.tasks())

    def bodies() -> list[dict[str, Any]]:
        return [dict(task.request) for task in sim.tasks()[before:]]

    return bodies


@pytest.fixture
def env(shared_server: SimulatorServer, sim: Simulator) -> dict[str, str | None]:
    """The environment of a command: the simulator's key and address, no terminal."""
    return {
        "BANANA2_API_KEY": DEFAULT_API_KEY,
        "BANANA2_BASE_URL": shared_server.base_url,
        "FORCE_COLOR": None,
        "TTY_COMPATIBLE": None,
    }


def _invoke(args: list[str], env: Mapping[str, str | None], stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(app, args, env=env, input=stdin, catch_exceptions=False)


def _batch(source: Path, out: Path, env: Mapping[str, str | None], *extra: str) -> Result:
    return _invoke(["batch", str(source), "--out", str(out), *FAST, *extra], env)


def _manifest(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


INPUTS: dict[str, tuple[str, bytes]] = {
    "csv": (
        "shots.csv",
        b"id,prompt,aspect_ratio,resolution,output_format,images,meta_owner\n"
        b'hero,"A lighthouse, at dusk",16:9,2K,jpg,,ana\n'
        b'night,Make it night,,,,"[""' + EDIT_URL.encode() + b'""]",\n',
    ),
    "tsv": (
        "shots.tsv",
        b"prompt\tresolution\timages\nA lighthouse, at dusk\t2K\t\nMake it night\t\t" + EDIT_URL.encode() + b"\n",
    ),
    "json": (
        "shots.json",
        b'[\n  {"prompt": "A lighthouse, at dusk", "resolution": "2K"},\n'
        b'  {"prompt": "Make it night", "images": ["' + EDIT_URL.encode() + b'"]}\n]\n',
    ),
    "jsonl-bom-comments": (
        "shots.jsonl",
        codecs.BOM_UTF8 + b'# two shots\n{"prompt": "A lighthouse, at dusk", "resolution": "2k"}\n\n'
        b'{"prompt": "Make it night", "images": ["' + EDIT_URL.encode() + b'"]}\n',
    ),
    "csv-utf-16": (
        "shots.csv",
        f'prompt,resolution,images\n"A lighthouse, at dusk",2k,\nMake it night,,{EDIT_URL}\n'.encode("utf-16"),
    ),
}


@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_each_input_format_sends_its_rows_and_nothing_else(
    env: dict[str, str | None], sent: Callable[[], list[dict[str, Any]]], tmp_path: Path, kind: str
) -> None:
    """CSV, TSV, JSON, JSON Lines (with a BOM and comments) and UTF-16 CSV each send exactly their rows, with their
    options as the SDK takes them (2K, jpg); no header or comment line is paid for."""
    name, data = INPUTS[kind]
    source = tmp_path / name
    source.write_bytes(data)
    result = _batch(source, tmp_path / "out", env, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["summary"]["credits"] == 20 + 24
    bodies = sorted(sent(), key=lambda body: str(body["prompt"]))
    assert [body["prompt"] for body in bodies] == ["A lighthouse, at dusk", "Make it night"]
    assert bodies[0]["resolution"] == "2k"
    assert bodies[1]["images"] == [EDIT_URL]
    if kind == "csv":
        assert bodies[0]["output_format"] == "jpeg"
        assert {record["id"] for record in document["outcomes"]} == {"hero", "night"}
    assert document["input"]["rows"] == 2


def test_stdin_is_read_by_its_content(
    env: dict[str, str | None], sent: Callable[[], list[dict[str, Any]]], tmp_path: Path
) -> None:
    """ "-" reads the input from stdin, its format found from its first line (here a CSV header)."""
    result = _invoke(
        ["batch", "-", "--out", str(tmp_path / "out"), "--json", *FAST], env, stdin=b"prompt,aspect_ratio\nx,21:9\n"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["input"] == {"file": "stdin", "format": "csv", "encoding": "UTF-8", "rows": 1}
    assert sent() == [{"prompt": "x", "aspect_ratio": "21:9"}]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("p.csv", b"a cat,16:9\na dog,1:1\n", "p.csv, line 1: a CSV input needs a header row"),
        ("p.json", b'[{"prompt": "a"},\n {"prompt": }]', "p.json, line 2, column 13: not valid JSON"),
        ("p.jsonl", b'{"prompt": "a"}\n{"prompt": "b"\n', "p.jsonl, line 2, column 15: not valid JSON"),
        ("p.txt", b"caf\xe9\n", "p.txt is not UTF-8 text: byte offset 3 (line 1) holds 0xe9"),
        ("p.txt", "a cat\n".encode("utf-16-le"), "--encoding utf-16-le"),
    ],
    ids=["csv-without-header", "broken-json", "broken-jsonl", "cp1252", "utf-16-without-bom"],
)
def test_an_input_that_cannot_be_read_exits_2_and_sends_nothing(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    """A file that looks like CSV or JSON but does not parse, or is not in a readable encoding, exits 2 with one
    message naming the place, without a traceback; nothing is sent and nothing is written."""
    source = tmp_path / name
    source.write_bytes(data)
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"], ["--json"]):
        result = _batch(source, out, env, *extra)
        assert result.exit_code == 2, result.output
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1
    assert sim.stats.count() == 0
    assert not out.exists()


def test_a_named_encoding_reads_a_legacy_file(
    env: dict[str, str | None], sent: Callable[[], list[dict[str, Any]]], tmp_path: Path
) -> None:
    """--encoding cp1252 reads the file a Windows spreadsheet saved; an unknown encoding is a usage error."""
    source = tmp_path / "p.csv"
    source.write_bytes(b"prompt\ncaf\xe9 au lait\n")
    result = _batch(source, tmp_path / "out", env, "--encoding", "cp1252")
    assert result.exit_code == 0, result.output
    assert sent() == [{"prompt": "café au lait"}]
    unknown = _batch(source, tmp_path / "out", env, "--encoding", "klingon")
    assert unknown.exit_code == 2
    assert "'klingon' is not an encoding" in unknown.stderr


def test_format_overrides_the_extension(
    env: dict[str, str | None], sent: Callable[[], list[dict[str, Any]]], tmp_path: Path
) -> None:
    """--format text sends each line of a .csv as a prompt, when that is what is asked."""
    source = tmp_path / "lines.csv"
    source.write_text("a cat, sitting\na dog\n", encoding="utf-8")
    assert _batch(source, tmp_path / "out", env, "--format", "text").exit_code == 0
    assert sorted(body["prompt"] for body in sent()) == ["a cat, sitting", "a dog"]


@pytest.mark.slow
def test_a_dry_run_shows_the_rows_as_read_and_what_a_resume_skips(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """--dry-run prints the first rows as parsed (prompt cut to a width, options), the row count, the credits, and,
    against a journal, what is skipped, added and retryable; it sends nothing."""
    long_prompt = "A very long prompt about a lighthouse " * 5
    rows = [f'"{long_prompt}",16:9,2K'] + [f"shot {index},," for index in range(13)]
    source = tmp_path / "p.csv"
    source.write_text("prompt,aspect_ratio,resolution\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    planned = _batch(source, out, {**env, "COLUMNS": "160"}, "--dry-run")
    assert planned.exit_code == 0, planned.output
    text = planned.stdout
    assert "p.csv: CSV, UTF-8, 14 rows" in text
    assert "A very long prompt about a lighthouse A very lo…" in text
    assert long_prompt.strip() not in " ".join(text.split())
    assert "16:9 · 2k" in text
    assert "submit (20 credits)" in text
    assert "… and 4 more rows" in text
    assert "14 tasks in the job; 14 to submit for 280 credits" in text
    assert "nothing was sent" in text
    assert sim.stats.count() == 0
    assert not out.exists()

    sim.inject(Fault.fail_task("content policy violation"), times=1)
    first = _batch(source, out, env, "--concurrency", "1")
    assert first.exit_code == 1
    with source.open("a", encoding="utf-8") as grown:
        grown.write("one more,,\n")
    again = _batch(source, out, env, "--dry-run", "--json")
    assert again.exit_code == 0, again.output
    document = json.loads(again.stdout)
    assert (document["plan"]["already_succeeded"], document["plan"]["already_failed"]) == (13, 1)
    assert (document["plan"]["to_submit"], document["plan"]["credits"], document["added"]) == (1, 20, 1)
    assert (document["plan"]["retryable"], document["plan"]["retry_credits"]) == (1, 20)
    assert len(document["preview"]) == 10
    assert document["preview"][0]["options"] == {"type": "text-to-image", "aspect_ratio": "16:9", "resolution": "2k"}
    assert {item["action"] for item in document["preview"]} <= {"skip: succeeded", "skip: failed"}
    readable = _batch(source, out, env, "--dry-run", "--retry-failed")
    assert "1 row that failed on the server will be sent again, for 20 credits" in readable.stdout
    assert "15 tasks in the job; 13 finished earlier; 2 to submit for 40 credits" in readable.stdout
    assert "retry (20 credits)" in readable.stdout
    assert sim.stats.tasks_created == 14


def test_the_manifest_describes_every_row_of_the_job_after_every_run(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """manifest.jsonl has one line per input row of the whole job, rewritten after each run, resumed runs too:
    row, id, prompt, options, metadata, status, task id, error, credits, images and files (beside it)."""
    sim.set_credits(40)
    source = tmp_path / "p.csv"
    source.write_text("id,prompt,resolution,meta_note\na,first,2K,keep me\nb,second,,\nc,third,,\n", encoding="utf-8")
    out = tmp_path / "out"
    first = _batch(source, out, env, "--concurrency", "1", "--json")
    assert first.exit_code == 1
    records = _manifest(out / "manifest.jsonl")
    assert [set(record) for record in records] == [MANIFEST_FIELDS] * 3
    assert [record["status"] for record in records] == ["succeeded", "succeeded", "unsubmitted"]
    assert records[0]["options"] == {"type": "text-to-image", "resolution": "2k"}
    assert records[0]["metadata"] == {"meta_note": "keep me"}
    assert records[0]["credits"] == 20
    assert records[0]["files"] == [f"{records[0]['task_id']}-0.png"]
    assert (out / records[0]["files"][0]).is_file()
    assert records[2]["error"]["type"] == "InsufficientCreditsError"
    assert json.loads(first.stdout)["summary"]["unsubmitted"] == 1

    sim.set_credits(1000)
    manifest = tmp_path / "elsewhere" / "results.jsonl"
    again = _batch(source, out, env, "--json", "--manifest", str(manifest))
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)["summary"]
    assert (summary["tasks"], summary["succeeded"], summary["submitted"]) == (3, 3, 1)
    records = _manifest(manifest)
    assert [(record["row"], record["id"], record["status"]) for record in records] == [
        (1, "a", "succeeded"),
        (2, "b", "succeeded"),
        (3, "c", "succeeded"),
    ]
    assert records[0]["files"] == [f"../out/{records[0]['task_id']}-0.png"]
    assert [path.name for path in manifest.parent.iterdir()] == ["results.jsonl"]


def test_retry_failed_sends_failed_rows_again_and_a_finished_job_exits_0(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """Rows whose task failed, or succeeded without images, fail their run (exit 1); the same command again sends
    nothing and exits 0, saying what --retry-failed would cost; --retry-failed sends just those rows again."""
    sim.inject(Fault.fail_task("content policy violation"), times=1)
    sim.inject(Fault.empty_success([]), times=1)
    source = tmp_path / "p.txt"
    source.write_text("one\ntwo\nthree\n", encoding="utf-8")
    out = tmp_path / "out"
    first = _batch(source, out, env, "--concurrency", "1")
    assert first.exit_code == 1
    assert "EmptyResultError" in first.stdout
    again = _batch(source, out, env)
    assert again.exit_code == 0, again.output
    assert "2 rows failed on the server; --retry-failed sends them again (40 credits)." in again.stdout
    assert sim.stats.tasks_created == 3
    retried = _batch(source, out, env, "--retry-failed", "--json")
    assert retried.exit_code == 0, retried.output
    document = json.loads(retried.stdout)
    assert (document["plan"]["to_retry"], document["summary"]["credits"]) == (2, 40)
    assert {record["status"] for record in _manifest(out / "manifest.jsonl")} == {"succeeded"}
    assert sim.stats.tasks_created == 5


def test_uncertain_rows_still_need_resubmit_uncertain(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """--retry-failed does not send a row whose submit may have been paid for; --resubmit-uncertain does."""
    sim.inject(Fault.server_error(after_create=True), on="generate", times=1)
    source = tmp_path / "p.txt"
    source.write_text("one\ntwo\n", encoding="utf-8")
    out = tmp_path / "out"
    assert _batch(source, out, env, "--concurrency", "1").exit_code == 1
    retried = _batch(source, out, env, "--retry-failed")
    assert retried.exit_code == 1
    assert "--resubmit-uncertain sends them anyway" in retried.stdout
    assert "resubmit_uncertain" not in retried.stdout + retried.stderr
    assert sim.stats.tasks_created == 2
    assert _batch(source, out, env, "--resubmit-uncertain").exit_code == 0
    assert sim.stats.tasks_created == 3


def test_a_job_grows_and_refuses_a_changed_paid_row_by_name(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """Rows added to the file are sent by the same command; rows kept are not sent again; a paid row that was
    changed or removed makes the run exit 2 naming each such row and how to start a new job, sending nothing."""
    source = tmp_path / "p.csv"
    source.write_text("id,prompt\nhero,A lighthouse\nfox,A fox\n", encoding="utf-8")
    out = tmp_path / "out"
    assert _batch(source, out, env).exit_code == 0
    source.write_text("id,prompt\nnew,A hen\nhero,A lighthouse\nfox,A fox\n", encoding="utf-8")
    grown = _batch(source, out, env, "--json")
    assert grown.exit_code == 0, grown.output
    assert [record["id"] for record in json.loads(grown.stdout)["outcomes"]] == ["new"]
    assert sim.stats.tasks_per_prompt == {"A lighthouse": 1, "A fox": 1, "A hen": 1}

    source.write_text("id,prompt\nnew,A hen\nhero,A lighthouse at night\n", encoding="utf-8")
    for extra in ([], ["--dry-run"]):
        refused = _batch(source, out, env, *extra)
        assert refused.exit_code == 2, refused.output
        assert f"the journal {out / JOURNAL_NAME} is of another job: 2 rows paid for there" in refused.stderr
        assert "row 2 (id 'hero') 'A lighthouse' (succeeded, task" in refused.stderr
        assert "was changed (it is row 2 now)" in refused.stderr
        assert "row 3 (id 'fox') 'A fox' (succeeded, task" in refused.stderr
        assert "is not in the job any more" in refused.stderr
        assert "--journal NEW.sqlite3, or another --out" in refused.stderr
    assert sim.stats.tasks_created == 3
    fresh = _batch(source, out, env, "--journal", str(tmp_path / "new.sqlite3"))
    assert fresh.exit_code == 0, fresh.output


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_a_server_that_cannot_be_reached_stops_the_run_early(sim: Simulator, tmp_path: Path) -> None:
    """Against an address where nothing listens, the run stops after the first few submits (each retried as never
    sent), every row ends unsubmitted (in the manifest too), and the run names the address it tried."""
    source = tmp_path / "p.txt"
    source.write_text("".join(f"shot {index}\n" for index in range(40)), encoding="utf-8")
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{_closed_port()}"
    result = _batch(source, out, {"BANANA2_API_KEY": DEFAULT_API_KEY, "BANANA2_BASE_URL": url}, "--concurrency", "3")
    assert result.exit_code == 1
    assert f"40 requests were not sent: {url} could not be reached. Check --base-url" in result.stdout
    records = _manifest(out / "manifest.jsonl")
    assert {record["status"] for record in records} == {"unsubmitted"}
    assert f"could not reach {url}" in records[-1]["error"]["message"]


def test_a_refused_key_leaves_every_row_unsubmitted(env: dict[str, str | None], sim: Simulator, tmp_path: Path) -> None:
    """A 401 makes no task: the run exits 3 and the manifest marks the rows never sent as unsubmitted, not failed."""
    sim.remove_account(DEFAULT_API_KEY)
    source = tmp_path / "p.txt"
    source.write_text("one\ntwo\nthree\n", encoding="utf-8")
    out = tmp_path / "out"
    result = _batch(source, out, env, "--concurrency", "1")
    assert result.exit_code == 3
    assert {record["status"] for record in _manifest(out / "manifest.jsonl")} == {"unsubmitted"}


def test_on_resume_the_progress_line_counts_every_row_of_the_job(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """A resumed run's progress bar starts at the rows finished earlier and ends at the job's row count."""
    sim.set_credits(60)
    source = tmp_path / "p.txt"
    source.write_text("".join(f"shot {index}\n" for index in range(5)), encoding="utf-8")
    out = tmp_path / "out"
    assert _batch(source, out, env, "--concurrency", "1").exit_code == 1
    sim.set_credits(1000)
    live = _batch(source, out, {**env, "FORCE_COLOR": "1"}, "--concurrency", "1")
    assert live.exit_code == 0, live.output
    assert "5 tasks in the job; 3 finished earlier; 2 to submit for 40 credits" in live.stderr
    assert "3/5" in live.stderr
    assert "5/5" in live.stderr
    assert "✓ 5" in live.stderr
    assert "/2" not in live.stderr


def test_a_journal_that_fails_mid_run_is_reported_without_a_traceback(
    env: dict[str, str | None], sim: Simulator, tmp_path: Path
) -> None:
    """When the journal refuses a write, the run stops before paying: exit 2, the journal's message, no traceback."""
    source = tmp_path / "p.txt"
    source.write_text("one\n", encoding="utf-8")
    out = tmp_path / "out"
    # A refused key makes the journal and pays for nothing.
    assert _batch(source, out, {**env, "BANANA2_API_KEY": "sk-wrong-key-000"}).exit_code == 3
    conn = sqlite3.connect(out / JOURNAL_NAME, isolation_level=None)
    conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON requests BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    conn.close()
    sim.reset_stats()
    result = _batch(source, out, env)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    assert "could not be written: disk full" in result.stderr
    assert "banana2_async._exceptions" not in result.stderr
    assert sim.stats.count("generate") == 0
