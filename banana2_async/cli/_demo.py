"""``banana2 demo``: a real bulk run against the built-in simulator, served on loopback.

Nothing here is staged: the simulator runs each task on its latency model,
the SDK polls it every 2-3 s like the real API, a few transient faults are
injected for the SDK to absorb, and the images are real PNG and JPEG files.
The run leaves what ``banana2 batch`` leaves: a manifest, and a gallery to
open in a browser.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import anyio.to_thread

from banana2_async._client import AsyncBanana2
from banana2_async._models import GenerationRequest
from banana2_async.testing import Fault, FaultRule, Simulator

from ._common import EXIT_FAILED, EXIT_OK, Output
from ._gallery import GALLERY_NAME, write_gallery
from ._inputs import InputRow
from ._manifest import MANIFEST_NAME, job_records, write_manifest
from ._render import BatchProgress, plural, print_problems, summary_table

__all__ = ["DEFAULT_CONCURRENCY", "DEFAULT_COUNT", "demo_requests", "run_demo"]

DEFAULT_COUNT: Final = 24
DEFAULT_CONCURRENCY: Final = 12

# (prompt, options): varied shapes, sizes and formats, and a few edits of a reference image.
_PROMPTS: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    ("A lighthouse on a cliff at dusk, oil painting", {"aspect_ratio": "3:2"}),
    ("A bowl of ramen, overhead shot, steam rising", {"aspect_ratio": "1:1", "output_format": "jpeg"}),
    ("A futuristic cyberpunk city with neon lights, cinematic", {"aspect_ratio": "16:9", "resolution": "2k"}),
    ("Portrait of an astronaut cat, studio lighting", {"aspect_ratio": "4:5"}),
    ("A watercolor map of an imaginary archipelago", {"aspect_ratio": "21:9"}),
    ("Isometric pixel-art bakery with a striped awning", {"aspect_ratio": "1:1"}),
    ("Macro photo of dew on a spider web at sunrise", {"aspect_ratio": "2:3", "output_format": "jpeg"}),
    ("A minimalist poster of a mountain range, flat colors", {"aspect_ratio": "3:4"}),
    ("Turn the scene into a snowy winter night", {"edit": "street.png"}),
    ("A cozy reading nook with rain on the window", {"aspect_ratio": "4:3"}),
    ("Blueprint drawing of a steam locomotive", {"aspect_ratio": "16:9"}),
    ("A koi pond seen from above, ukiyo-e style", {"aspect_ratio": "9:16"}),
    ("Product shot of a glass perfume bottle on marble", {"aspect_ratio": "4:5", "output_format": "jpeg"}),
    ("A hot-air balloon festival over green hills", {"aspect_ratio": "3:2", "resolution": "2k"}),
    ("Make the car bright red and add motion blur", {"edit": "car.png"}),
    ("A robot gardener tending tomatoes, children's book art", {"aspect_ratio": "1:1"}),
    ("Aurora over a frozen lake, long exposure", {"aspect_ratio": "16:9", "output_format": "jpeg"}),
    ("A stack of pancakes with blueberries, food photography", {"aspect_ratio": "4:5"}),
    ("Art-deco travel poster for a city on the moon", {"aspect_ratio": "2:3"}),
    ("A fox in a misty forest, soft morning light", {"aspect_ratio": "3:2"}),
    ("Replace the sky with a dramatic thunderstorm", {"edit": "field.png"}),
    ("Stained-glass window of a sunflower", {"aspect_ratio": "9:16"}),
    ("A tiny house on stilts in a mangrove, golden hour", {"aspect_ratio": "5:4"}),
    ("Chalkboard menu of a seaside cafe, hand lettering", {"aspect_ratio": "4:3", "output_format": "jpeg"}),
)


def demo_requests(count: int, reference_base: str) -> list[GenerationRequest]:
    """``count`` varied requests; edits name reference images under ``reference_base`` (never fetched)."""
    requests: list[GenerationRequest] = []
    for index in range(count):
        prompt, options = _PROMPTS[index % len(_PROMPTS)]
        round_ = index // len(_PROMPTS)
        if round_:
            prompt = f"{prompt} (variation {round_ + 1})"
        fields = dict(options)
        reference = fields.pop("edit", None)
        if reference is not None:
            fields["images"] = (f"{reference_base}/reference/{reference}",)
        requests.append(GenerationRequest(prompt=prompt, **fields))
    return requests


def _faults(simulator: Simulator, speed: float) -> list[FaultRule]:
    """Transient trouble a real API gives now and then; the SDK absorbs all of it."""
    simulator.inject(Fault.in_flight_statuses(("QUEUED", "PROCESSING")), times=3)
    return [
        simulator.inject(Fault.server_error(503), on="generate", times=1),
        simulator.inject(Fault.rate_limit(1.0 / speed), on="status", times=2),
        simulator.inject(Fault.drop(), on="status", times=2),
    ]


async def run_demo(output: Output, *, out: Path, count: int, concurrency: int, seed: int | None, speed: float) -> int:
    """Run the demo and print its summary; returns the exit status."""
    simulator = Simulator(seed=seed, speed=speed)
    faults = _faults(simulator, speed)
    interval = (2.0 / speed, 3.0 / speed)
    async with simulator.serve() as server:
        requests = demo_requests(count, server.base_url)
        if output.live:
            output.err.print(
                f"Running {plural(count, 'task')} against the NanoBanana 2 simulator at {server.base_url} "
                f"(no key, no network), {concurrency} at a time, polling every 2-3 s.",
                markup=False,
                highlight=False,
            )
        started = time.perf_counter()
        async with AsyncBanana2(
            api_key=simulator.api_key, base_url=server.base_url, poll_interval=interval, seed=seed
        ) as client:
            progress = BatchProgress(output.err, total=len(requests), enabled=output.live)
            run = client.batch(requests, concurrency=concurrency, dest_dir=out, on_event=progress)
            with progress:
                outcomes = [outcome async for outcome in run]
        wall = time.perf_counter() - started
    job = [InputRow(index + 1, index + 1, request) for index, request in enumerate(requests)]
    records = job_records(job, None, {outcome.index: outcome for outcome in outcomes})
    manifest, gallery = out / MANIFEST_NAME, out / GALLERY_NAME
    await anyio.to_thread.run_sync(write_manifest, manifest, records)
    await anyio.to_thread.run_sync(lambda: write_gallery(gallery, records, title="banana2 demo"))
    stats = simulator.stats
    tally = progress.tally
    submits, polls = stats.count("generate"), stats.count("status")
    api_requests = submits + polls
    summary = {
        "tasks": len(requests),
        "succeeded": tally.succeeded,
        "failed": len(outcomes) - tally.succeeded,
        "credits": stats.credits_spent,
        "requests_sent": api_requests,
        "submits": stats.count("generate"),
        "polls": stats.count("status"),
        "images": sum(len(outcome.files) for outcome in outcomes),
        "faults_absorbed": sum(rule.fired for rule in faults),
        "wall_time_seconds": round(wall, 2),
        "out": str(out),
        "manifest": str(manifest),
        "gallery": str(gallery),
    }
    if output.as_json:
        output.json({"summary": summary, "outcomes": records})
    else:
        print_problems(output.out, outcomes)
        rows = [
            ("Tasks", str(summary["tasks"])),
            ("Succeeded", str(summary["succeeded"])),
            ("Failed", str(summary["failed"])),
            ("Credits", str(summary["credits"])),
            ("Requests sent", f"{api_requests} ({plural(submits, 'submit')}, {plural(polls, 'poll')})"),
            ("Images downloaded", str(summary["images"])),
            ("Transient faults absorbed", str(summary["faults_absorbed"])),
            ("Wall time", f"{wall:.1f} s"),
        ]
        output.out.print(summary_table("banana2 demo", rows))
        output.out.print(f"Images in {out}/ · open {gallery} in a browser to see them", markup=False, highlight=False)
    return EXIT_OK if summary["failed"] == 0 else EXIT_FAILED
