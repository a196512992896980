"""The ``banana2`` command against a hostile or broken server on loopback: a paid task is named on every way
out, Ctrl-C included; one poisoned row fails alone; an unusable --out is refused before paying; no form of the
API key reaches stdout or stderr; nothing ends in a traceback."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from click.testing import CliRunner, Result

from banana2_async import Banana2Error
from banana2_async.cli._app import JOURNAL_NAME, app

KEY: Final = "sk-test/abc+def/123+XYZ"
PNG: Final = b"\x89PNG\r\n\x1a\n" + bytes(64)
FAST: Final = ["--poll-interval", "0.02"]
ON_SYS: Final = Path("/sys/kernel").is_dir()

Answer = tuple[int, dict[str, str], bytes]


def key_forms(key: str) -> list[str]:
    """The API key as a server may echo it: verbatim, JSON-escaped, \\u-escaped, percent-encoded."""
    return [
        key,
        key.replace("/", "\\/"),
        "".join(f"\\u{ord(char):04x}" for char in key),
        "".join(f"\\u{ord(char):04X}" for char in key),
        quote(key, safe=""),
        quote(key, safe="").lower(),
        quote(key, safe="/"),
    ]


def _json_body(document: Any) -> bytes:
    return json.dumps(document).encode()


def _envelope(data: Any, *, code: int = 200, message: str = "success") -> bytes:
    return _json_body({"code": code, "message": message, "data": data})


class HostileAPI:
    """A threaded fake of the API on a loopback port whose answers depend on words in the prompt.

    Submits: ``garbled`` answers a cut-off body, ``bad-id`` a task id that cannot go in a URL,
    ``refused`` a 400 echoing the caller's key. Tasks: ``never`` stays in progress, ``revoked`` polls
    answer 401, ``fails`` fails echoing the key, ``empty`` succeeds without an image, ``expired`` succeeds
    with an image URL that answers 404, ``echo`` succeeds with extra fields echoing the key; any other
    task succeeds with one image.
    """

    def __init__(self, key: str = KEY) -> None:
        self.key = key
        self.posts = 0
        self.tasks: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                status, headers, content = api.answer(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for name, value in {**headers, "content-length": str(len(content))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        """Where the fake listens."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def _echo(self, presented: str) -> str:
        return " ".join(key_forms(presented))

    def answer(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """The answer to one request."""
        url = urlsplit(target)
        presented = headers.get("Authorization", "").removeprefix("Bearer ")
        echo = self._echo(presented)
        typed = {"content-type": "application/json", "x-request-id": quote(presented, safe="")}
        if url.path.startswith("/img/"):
            return 200, {"content-type": "image/png"}, PNG
        if url.path.startswith("/missing/"):
            return 404, {"content-type": "text/plain"}, b"gone"
        if presented != self.key:
            return 401, typed, _envelope(None, code=401, message=f"invalid key {echo}")
        if method == "POST":
            return self._submit(json.loads(body or b"{}").get("prompt", ""), echo, typed)
        task_id = parse_qs(url.query).get("task_id", [""])[0]
        return self._status(task_id, echo, typed)

    def _submit(self, prompt: str, echo: str, typed: dict[str, str]) -> Answer:
        with self._lock:
            self.posts += 1
            task_id = f"t-{next(self._ids):04d}"
            self.tasks[task_id] = prompt
        if "garbled" in prompt:
            return 200, typed, b'{"code": 200, "message": "success", "data": {"task_id": "t-'
        if "bad-id" in prompt:
            return 200, typed, _envelope({"task_id": f"{task_id}\u0000\r\nX-Evil: 1", "status": "IN_PROGRESS"})
        if "refused" in prompt:
            return 400, typed, _envelope(None, code=400, message=f"prompt refused for {echo}")
        return 200, typed, _envelope({"task_id": task_id, "type": "text-to-image", "status": "IN_PROGRESS"})

    def _status(self, task_id: str, echo: str, typed: dict[str, str]) -> Answer:
        prompt = self.tasks.get(task_id)
        if prompt is None:
            return 404, typed, _envelope(None, code=404, message=f"task not found: {task_id}")
        data: dict[str, Any] = {"task_id": task_id, "status": "SUCCESS", "consumed_credits": 20}
        if "never" in prompt:
            data.update(status="IN_PROGRESS", consumed_credits=None)
        elif "revoked" in prompt:
            return 401, typed, _envelope(None, code=401, message=f"key revoked: {echo}")
        elif "fails" in prompt:
            data.update(status="FAILED", error=f"generation failed for {echo}")
        elif "empty" in prompt:
            data.update(response=[])
        elif "expired" in prompt:
            data.update(response=[f"{self.base_url}/missing/{task_id}.png"])
        elif "echo" in prompt:
            signed = f"{self.base_url}/img/{task_id}.png?sig={quote(self.key, safe='')}"
            data.update(response=[signed], note=echo, request={"api_key": self.key})
        else:
            data.update(response=[f"{self.base_url}/img/{task_id}.png"])
        return 200, typed, _envelope(data)


@pytest.fixture
def api() -> Iterator[HostileAPI]:
    """A hostile fake of the API, for one test."""
    server = HostileAPI()
    try:
        yield server
    finally:
        server.close()


def _env(api: HostileAPI) -> dict[str, str | None]:
    return {"BANANA2_API_KEY": api.key, "BANANA2_BASE_URL": api.base_url, "FORCE_COLOR": None, "TTY_COMPATIBLE": None}


def _invoke(args: list[str], env: Mapping[str, str | None]) -> Result:
    return CliRunner().invoke(app, args, env=env, catch_exceptions=False)


def _names_the_task(result: Result, task_id: str, *, as_json: bool) -> None:
    assert f"task {task_id} submitted" in result.stderr
    assert "Traceback" not in result.stderr
    if as_json:
        document = json.loads(result.stdout)
        assert document["task_id"] == task_id


def _unwritable_dir(tmp_path: Path, kind: str) -> Path:
    if kind == "under-a-file":
        blocker = tmp_path / "blocker"
        blocker.write_text("a file, not a directory")
        return blocker / "out"
    if not ON_SYS:
        pytest.skip("needs Linux's sysfs, where no one may create a directory")
    return Path("/sys/kernel/banana2-out")


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize(
    ("prompt", "out", "exit_code"),
    [
        ("revoked while waiting", None, 3),
        ("fails", None, 1),
        ("empty success", None, 1),
        ("expired result", "dir", 1),
        ("fine", "under-a-file", 1),
        ("fine", "sysfs", 1),
    ],
    ids=[
        "401-while-waiting",
        "task-failed",
        "empty-success",
        "download-failed",
        "out-under-a-file",
        "out-not-writable",
    ],
)
def test_a_paid_task_is_named_on_every_way_out(
    api: HostileAPI, tmp_path: Path, prompt: str, out: str | None, exit_code: int, as_json: bool
) -> None:
    """After a submit, the task id is on stderr before the wait and in the output whatever ends the command."""
    args = ["generate", prompt, *FAST]
    if out is not None:
        args += ["--out", str(tmp_path / "images" if out == "dir" else _unwritable_dir(tmp_path, out))]
    result = _invoke([*args, *(["--json"] if as_json else [])], _env(api))
    assert result.exit_code == exit_code, result.output
    (task_id,) = api.tasks
    _names_the_task(result, task_id, as_json=as_json)
    if exit_code != 1 or out is not None:
        assert f"banana2 wait {task_id}" in result.stderr
    if prompt == "empty success":
        assert "EmptyResultError" in result.stderr


def test_edit_names_its_task_too(api: HostileAPI) -> None:
    """edit, like generate, names its task before waiting and when the key is refused during the wait."""
    result = _invoke(["edit", "revoked", "--image", "https://example.com/a.png", "--json", *FAST], _env(api))
    assert result.exit_code == 3
    (task_id,) = api.tasks
    _names_the_task(result, task_id, as_json=True)
    assert json.loads(result.stdout)["error"]["type"] == "AuthenticationError"


def _start(api: HostileAPI, *args: str, terminal: bool) -> subprocess.Popen[str]:
    env = {**os.environ, "BANANA2_API_KEY": api.key, "BANANA2_BASE_URL": api.base_url}
    env["FORCE_COLOR"] = "1" if terminal else ""
    env.pop("TTY_COMPATIBLE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "banana2_async.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_ctrl_c_while_waiting_names_the_task(api: HostileAPI, terminal: bool, as_json: bool) -> None:
    """A real SIGINT while generate waits exits 130 naming the task and how to follow it (with --json, on
    stdout too), on a terminal or not."""
    process = _start(api, "generate", "never done", *FAST, *(["--json"] if as_json else []), terminal=terminal)
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        seen = ""
        while "submitted" not in seen:
            assert time.monotonic() < deadline, seen
            line = process.stderr.readline()
            assert line, f"the command ended first: {process.poll()}"
            seen += line
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    (task_id,) = api.tasks
    stderr = seen + stderr
    assert process.returncode == 130, stderr
    assert f"task {task_id} submitted" in seen
    assert f"banana2 wait {task_id}" in stderr
    assert "Traceback" not in stderr
    if as_json:
        document = json.loads(stdout)
        assert (document["task_id"], document["status"], document["exit_code"]) == (task_id, "interrupted", 130)


@pytest.mark.parametrize("kind", ["under-a-file", "sysfs"])
def test_batch_refuses_an_unwritable_out_before_paying(api: HostileAPI, tmp_path: Path, kind: str) -> None:
    """An --out that cannot be written exits 2 with a clear message, and no request is sent."""
    source = tmp_path / "prompts.txt"
    source.write_text("one\ntwo\n", encoding="utf-8")
    out = _unwritable_dir(tmp_path, kind)
    result = _invoke(
        ["batch", str(source), "--out", str(out), "--journal", str(tmp_path / "run.db"), "--json", *FAST], _env(api)
    )
    assert result.exit_code == 2, result.output
    assert "--out" in result.stderr
    assert "cannot be written" in result.stderr
    assert json.loads(result.stdout)["error"]["type"] == "InvalidRequestError"
    assert api.posts == 0


def test_batch_poisoned_rows_fail_alone_and_the_rerun_goes_on(api: HostileAPI, tmp_path: Path) -> None:
    """Rows with a garbled answer, an unusable task id or an empty success fail (or are uncertain) with a typed
    reason; the other rows succeed; running the same command again does not stop on them."""
    prompts = ["fine one", "garbled", "bad-id", "empty success", "fine two"]
    source = tmp_path / "prompts.txt"
    source.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    args = ["batch", str(source), "--out", str(tmp_path / "out"), "--concurrency", "2", "--json", *FAST]
    env = _env(api)
    first = _invoke(args, env)
    assert first.exit_code == 1, first.output
    assert "Traceback" not in first.stderr
    outcomes = {outcome["prompt"]: outcome for outcome in json.loads(first.stdout)["outcomes"]}
    assert {outcomes[prompt]["status"] for prompt in ("fine one", "fine two")} == {"succeeded"}
    for prompt in ("garbled", "bad-id", "empty success"):
        assert outcomes[prompt]["status"] in ("failed", "uncertain")
        error_type = getattr(__import__("banana2_async"), outcomes[prompt]["error"]["type"])
        assert issubclass(error_type, Banana2Error)
    assert outcomes["empty success"]["error"]["type"] == "EmptyResultError"
    assert outcomes["empty success"]["files"] == []
    posts = api.posts
    again = _invoke(args, env)
    assert again.exit_code == 1, again.output
    assert "Traceback" not in again.stderr
    assert {outcome["prompt"] for outcome in json.loads(again.stdout)["outcomes"]} <= {"garbled", "bad-id"}
    assert api.posts == posts
    assert (tmp_path / "out" / JOURNAL_NAME).is_file()


def _shows_no_key(result: Result) -> None:
    for stream in (result.stdout, result.stderr):
        found = [form for form in key_forms(KEY) if form in stream]
        assert found == [], stream


def test_no_form_of_the_key_reaches_the_output(api: HostileAPI, tmp_path: Path) -> None:
    """A server echoing the key (with / and +) verbatim, JSON-escaped, \\u-escaped and percent-encoded, in
    errors, headers, task failures, task fields and result URLs, never gets it onto stdout or stderr (with --json
    and -vv), nor into the manifest or the gallery."""
    env = _env(api)
    source = tmp_path / "prompts.txt"
    source.write_text("refused\nfails\necho\ngarbled\n", encoding="utf-8")
    runs = [
        ["-vv", "generate", "refused", "--json", *FAST],
        ["-vv", "generate", "fails", "--json", *FAST],
        ["-vv", "generate", "echo", "--out", str(tmp_path / "one"), *FAST],
        ["-vv", "generate", "fails", *FAST],
        ["-vv", "batch", str(source), "--out", str(tmp_path / "out"), "--json", "--gallery", *FAST],
        ["-vv", "batch", str(source), "--out", str(tmp_path / "out2"), *FAST],
    ]
    for args in runs:
        result = _invoke(args, env)
        assert result.exit_code in (0, 1), result.output
        _shows_no_key(result)
    for written in ("out/manifest.jsonl", "out/gallery.html", "out2/manifest.jsonl"):
        text = (tmp_path / written).read_text(encoding="utf-8")
        assert [form for form in key_forms(KEY) if form in text] == [], written
    echoed = next(task_id for task_id, prompt in api.tasks.items() if prompt == "echo")
    for args in (["-vv", "status", echoed, "--json"], ["status", echoed], ["-vv", "wait", echoed, "--json", *FAST]):
        result = _invoke(args, env)
        assert result.exit_code == 0, result.output
        _shows_no_key(result)
    refused = _invoke(["-vv", "generate", "x", "--json"], {**env, "BANANA2_API_KEY": KEY + "0"})
    assert refused.exit_code == 3
    assert all(form not in refused.stdout + refused.stderr for form in key_forms(KEY + "0"))


@pytest.mark.parametrize("key", [KEY + " tail", KEY + "\u00e9", KEY + "\x07"], ids=["space", "non-ascii", "bell"])
def test_an_unusable_key_is_refused_without_being_shown(api: HostileAPI, key: str) -> None:
    """A key the client cannot send is a configuration error (exit 3) that does not print the key."""
    result = _invoke(["generate", "x", "--json"], {**_env(api), "BANANA2_API_KEY": key})
    assert result.exit_code == 3
    assert KEY not in result.stdout + result.stderr
    assert api.posts == 0
