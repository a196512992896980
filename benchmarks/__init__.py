"""Benchmarks of banana2-async: ``python -m benchmarks [--quick] [--json PATH]``.

B1 the shared poller at scale against one polling coroutine per task, B2 the
overhead of one status poll against raw httpx, B3 submit throughput over
loopback, B4 import time. Every comparison is a ratio against a baseline
measured in the same run, interleaved, the median of several rounds.
"""
