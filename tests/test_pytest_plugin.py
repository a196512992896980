"""The pytest plugin: its fixtures in a user's test run, its entry point, and what it costs to load."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PLUGIN = "banana2_async.testing.pytest_plugin"
REPO = Path(__file__).resolve().parent.parent

CONFTEST = """
import pytest

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""

INI = """
[pytest]
addopts = --strict-markers
filterwarnings = error
"""


def _plugin_installed() -> bool:
    return any(entry.value == PLUGIN for entry in importlib.metadata.entry_points(group="pytest11"))


def _plugin_args() -> list[str]:
    # hypothesis's plugin re-imports hypothesis in every in-process run: a second each, for nothing here.
    # Where the package is installed, pytest already loads our plugin through its entry point.
    return ["-p", "no:hypothesispytest", *([] if _plugin_installed() else ["-p", PLUGIN])]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project: a conftest running anyio tests on both backends, strict markers, warnings as errors."""
    pytester.makeconftest(CONFTEST)
    pytester.makefile(".ini", pytest=INI)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return pytester


def test_client_fixture_runs_a_users_test_on_both_backends(project: pytest.Pytester) -> None:
    """banana2_client is an entered SDK client on banana2_simulator; a user's anyio test passes on asyncio and trio."""
    project.makepyfile(
        """
        import pytest

        @pytest.mark.anyio
        async def test_generate(banana2_client, banana2_simulator):
            result = await banana2_client.generate("a cat in a hat")
            assert result.images
            assert banana2_simulator.stats.tasks_per_prompt == {"a cat in a hat": 1}
            assert banana2_simulator.speed == 1000
        """
    )
    project.runpytest(*_plugin_args()).assert_outcomes(passed=2)


def test_the_marker_configures_the_simulator(project: pytest.Pytester) -> None:
    """@pytest.mark.banana2_simulator(...) passes its options to the Simulator, and is a registered marker."""
    project.makepyfile(
        """
        import math
        import pytest
        from banana2_async import InsufficientCreditsError

        @pytest.mark.anyio
        @pytest.mark.banana2_simulator(credits=30, speed=math.inf)
        async def test_credits_run_out(banana2_client, banana2_simulator):
            await banana2_client.generate("first")
            with pytest.raises(InsufficientCreditsError):
                await banana2_client.submit("second")
            assert banana2_simulator.credits() == 10
        """
    )
    project.runpytest(*_plugin_args()).assert_outcomes(passed=2)


def test_the_marker_takes_keywords_only(project: pytest.Pytester) -> None:
    """A positional argument to the marker is an error of the test using the fixture."""
    project.makepyfile(
        """
        import pytest

        @pytest.mark.banana2_simulator(1000)
        def test_positional(banana2_simulator):
            pass
        """
    )
    result = project.runpytest(*_plugin_args())
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*keyword arguments only*"])


def test_server_fixture_serves_the_simulator_over_loopback(project: pytest.Pytester) -> None:
    """banana2_server serves banana2_simulator on 127.0.0.1, usable from a plain synchronous test."""
    project.makepyfile(
        """
        import httpx

        def test_over_http(banana2_server, banana2_simulator):
            assert banana2_server.simulator is banana2_simulator
            assert banana2_server.base_url.startswith("http://127.0.0.1:")
            response = httpx.post(
                banana2_server.base_url + "/api/generate",
                json={"prompt": "curl-like"},
                headers={"Authorization": "Bearer " + banana2_simulator.api_key},
            )
            assert response.status_code == 200
        """
    )
    project.runpytest(*_plugin_args()).assert_outcomes(passed=1)


def test_the_entry_point_loads_the_plugin_without_uvicorn(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed (entry point pytest11), the plugin loads without -p and without uvicorn; banana2_server then skips."""
    site = tmp_path / "site"
    dist_info = site / "banana2_async_entry_point_check-0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: banana2-async-entry-point-check\nVersion: 0\n")
    (dist_info / "entry_points.txt").write_text(f"[pytest11]\nbanana2_async = {PLUGIN}\n")
    project.makepyfile(
        """
        import pytest

        @pytest.mark.anyio
        async def test_in_process(banana2_client):
            assert (await banana2_client.generate("no extra")).images

        def test_over_loopback(banana2_server):
            pass
        """
    )
    runner = textwrap.dedent(
        """
        import sys
        sys.modules["uvicorn"] = None  # as if the 'simulator' extra were not installed
        import pytest
        raise SystemExit(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest"]))
        """
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ["PYTHONPATH"]]))
    result = project.run(sys.executable, "-c", runner)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*2 passed, 1 skipped*"])


def test_loading_the_plugin_imports_nothing_beyond_the_package() -> None:
    """Importing the plugin adds only itself and the lazy testing package to pytest and banana2_async; no uvicorn."""
    probe = textwrap.dedent(
        f"""
        import json, sys
        import pytest
        import banana2_async
        before = set(sys.modules)
        import {PLUGIN}
        print(json.dumps(sorted(set(sys.modules) - before)))
        assert "uvicorn" not in sys.modules
        """
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=environment, cwd=REPO
    )
    added = json.loads(output.stdout)
    assert added == ["banana2_async.testing", PLUGIN]


def test_the_entry_point_is_declared_in_pyproject() -> None:
    """pyproject.toml registers the plugin module under the pytest11 entry point group."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"banana2_async": PLUGIN}
    assert any(requirement.startswith("uvicorn") for requirement in project["optional-dependencies"]["simulator"])
