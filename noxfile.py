"""Development sessions: ``nox`` runs tests, lint and typecheck; see ``nox -l``."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "verifytypes", "docs"]
nox.options.reuse_existing_virtualenvs = not os.environ.get("CI")
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))

PYTHON = os.environ.get("NOX_PYTHON", "3.11")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite on asyncio (also in debug mode) and trio, with branch coverage (fails under 90%)."""
    session.install("-e", ".[all,test]")
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "combine", success_codes=[0, 1])
    session.run("coverage", "report")


@nox.session(python=PYTHON)
def quick(session: nox.Session) -> None:
    """The fast loop: the tests not marked slow (nor the runs in asyncio's debug mode), without coverage.

    Not a default session; ``nox -s tests`` runs them all.
    """
    session.install("-e", ".[all,test]")
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff, and the layers of docs/concepts/architecture.md with import-linter."""
    session.install("ruff>=0.6", "import-linter>=2.1")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the package and the tests with mypy --strict."""
    session.install("-e", ".[all,test]", "mypy>=1.10")
    session.run("mypy", "--strict", "banana2_async", "tests", "benchmarks", "soak", "examples")


@nox.session(python=PYTHON)
def verifytypes(session: nox.Session) -> None:
    """Check that pyright sees 100% of the public API typed, and type-check tests/typing with it."""
    # The package as it ships (not editable), so py.typed and the public modules are what users get.
    session.install(".", "basedpyright>=1.20")
    session.run("basedpyright", "--verifytypes", "banana2_async", "--ignoreexternal")
    session.run("basedpyright", "--project", "tests/typing/pyrightconfig.json")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site with mkdocs --strict; it needs no network."""
    # ruff lays out the long signatures of the API reference.
    session.install("-e", ".[docs]", "ruff>=0.6")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run the benchmarks (minutes; ``nox -s bench -- --quick`` takes seconds); JSON in .benchmarks/latest.json.

    Not a default session. HTTP/2 needs h2 for httpx and hypercorn for the server; B5's virtual time, trio.
    """
    session.install("-e", ".[all]", "h2>=4", "hypercorn>=0.16", "trio>=0.26")
    session.run("python", "-m", "benchmarks", "--json", ".benchmarks/latest.json", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """The reliability soak: 10,000 tasks over the loopback simulator with every fault at once.

    Not a default session. ``nox -s soak -- --tasks 1000`` for a shorter run;
    ``-- --json FILE`` also writes the figures. Exits non-zero if an invariant fails.
    """
    session.install("-e", ".[all]", "trio>=0.26")
    session.run("python", "-m", "soak", *session.posargs)
