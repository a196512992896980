"""``python -m banana2_async.cli``: the ``banana2`` command."""

from __future__ import annotations

from banana2_async.cli import main

if __name__ == "__main__":
    main()
