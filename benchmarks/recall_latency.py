"""Recall latency at scale, and `import memori_core` time.

    .venv/bin/python benchmarks/recall_latency.py [--messages 100000] [--entities 1000]
        [--queries 500] [--db PATH] [--out benchmarks/results/recall_latency.json]

Stores `--messages` synthetic chat messages spread over `--entities` users through the public
API (`Memori.record`, one session per entity, the default extractor and embedder), waits for the
background embedding (`flush`), then times `recall(query, limit=10)` for random users, the
query's embedding included. `import memori_core` is timed in fresh subprocesses.
Targets (issue 2): recall p95 <= 15 ms, import <= 150 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from memori_core import Memori, Message

_PEOPLE = ["my sister", "my boss", "our neighbour", "my friend Sam", "the landlord", "my coach"]
_ACTIVITIES = [
    "hiking in the mountains",
    "learning Spanish",
    "baking sourdough bread",
    "training for a half marathon",
    "renovating the kitchen",
    "planning a trip to Japan",
    "reading science fiction",
    "painting with watercolours",
    "fixing an old motorbike",
    "volunteering at the animal shelter",
    "playing chess online",
    "growing tomatoes on the balcony",
]
_FEELINGS = ["excited", "tired", "nervous", "happy", "stressed", "curious"]
_DAYS = ["on Monday", "last weekend", "yesterday", "next Friday", "in two weeks", "this morning"]
_TEMPLATES = [
    "I've been {activity} {day} and I feel {feeling} about it.",
    "Can you remind me what {person} said about {activity}?",
    "{person} suggested {activity}, which sounds fun.",
    "I prefer {activity} over watching TV.",
    "My plan is {activity} {day} with {person}.",
    "That sounds great! How did {activity} go {day}?",
    "I'm {feeling} because {person} cancelled {activity}.",
    "We talked about {activity} for an hour {day}.",
]


def synthetic_message(rng: random.Random, index: int) -> Message:
    """A plausible short chat turn; user and assistant alternate."""
    text = rng.choice(_TEMPLATES).format(
        activity=rng.choice(_ACTIVITIES),
        day=rng.choice(_DAYS),
        feeling=rng.choice(_FEELINGS),
        person=rng.choice(_PEOPLE),
    )
    return Message(role="user" if index % 2 == 0 else "assistant", content=text)


def synthetic_query(rng: random.Random) -> str:
    return rng.choice(
        [
            f"What did I say about {rng.choice(_ACTIVITIES)}?",
            f"How is the user feeling about {rng.choice(_ACTIVITIES)}?",
            f"What did {rng.choice(_PEOPLE)} suggest?",
            f"What are the user's plans {rng.choice(_DAYS)}?",
        ]
    )


def import_time(runs: int) -> list[float]:
    """Milliseconds to `import memori_core` in a fresh interpreter (startup excluded)."""
    code = (
        "import time; t = time.perf_counter(); import memori_core; "
        "print((time.perf_counter() - t) * 1000)"
    )
    out = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        out.append(float(done.stdout.strip()))
    return out


def ingest(url: str, messages: int, entities: int, rng: random.Random) -> dict[str, float]:
    per_entity = max(1, messages // entities)
    start = time.perf_counter()
    mem = Memori(url)
    for e in range(entities):
        mem.attribution(entity_id=f"user-{e:05d}", process_id="assistant")
        mem.record([synthetic_message(rng, i) for i in range(per_entity)])
    recorded = time.perf_counter()
    mem.flush()
    done = time.perf_counter()
    stored = per_entity * entities
    return {
        "messages": stored,
        "record_s": round(recorded - start, 2),
        "embed_after_record_s": round(done - recorded, 2),
        "ingest_s": round(done - start, 2),
        "messages_per_s": round(stored / (done - start), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--entities", type=int, default=1_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--import-runs", type=int, default=7)
    parser.add_argument("--db", type=Path, default=None, help="reuse this SQLite file if it exists")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "recall_latency.json"
    )
    args = parser.parse_args(argv)

    imports = import_time(args.import_runs)
    print(f"import memori_core: median {statistics.median(imports):.1f} ms over {len(imports)}")

    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="memori-latency-") as tmp:
        db = args.db or Path(tmp) / "latency.db"
        url = f"sqlite:///{db}"
        if args.db is not None and db.exists():
            ingest_report: dict[str, Any] = {"reused_database": str(db)}
        else:
            print(f"ingesting {args.messages} messages over {args.entities} entities ...")
            ingest_report = ingest(url, args.messages, args.entities, rng)
            print(f"ingest: {ingest_report}")
        mem = Memori(url)
        counts = mem._store.counts()
        latencies = []
        for q in range(args.queries + 20):
            mem.attribution(
                entity_id=f"user-{rng.randrange(args.entities):05d}", process_id="assistant"
            )
            query = synthetic_query(rng)
            t0 = time.perf_counter()
            found = mem.recall(query, limit=10)
            elapsed = (time.perf_counter() - t0) * 1000
            if q >= 20:  # the first calls load the model and warm the caches
                latencies.append(elapsed)
            assert found, "every entity has memories to recall"

    result = {
        "benchmark": "recall latency, default embedder (MiniLM int8), SQLite store",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "store": counts,
        "ingest": ingest_report,
        "queries": len(latencies),
        "recall_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 2),
            "p95": round(float(np.percentile(latencies, 95)), 2),
            "p99": round(float(np.percentile(latencies, 99)), 2),
            "mean": round(statistics.fmean(latencies), 2),
        },
        "import_ms": {
            "median": round(statistics.median(imports), 1),
            "max": round(max(imports), 1),
        },
        "targets": {"recall_p95_ms": 15, "import_ms": 150},
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
