"""The ``banana2`` command line: ``pip install 'banana2-async[cli]'``, then ``banana2 demo``.

Commands: ``generate``, ``edit``, ``status``, ``wait``, ``batch``, ``simulate``
and ``demo``; ``banana2 --help`` says more.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

# What the "cli" extra installs; any other ImportError is a bug to be seen as one.
_EXTRA = frozenset({"click", "rich"})


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``banana2`` command line; exits with its status."""
    try:
        from banana2_async.cli._app import app
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in _EXTRA:
            raise
        print(f"banana2: the command line needs {exc.name}: pip install 'banana2-async[cli]'", file=sys.stderr)
        raise SystemExit(3) from None
    app.main(args=None if argv is None else list(argv), prog_name="banana2")
