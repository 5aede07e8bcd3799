"""LoCoMo turn-level recall of the shipped path (`Memori.record` / `Memori.recall`).

    .venv/bin/python benchmarks/locomo.py ../shared/data/locomo10.json [--baselines]
        [--limit-conversations N] [--embedder default|none] [--out benchmarks/results/locomo.json]
        [--db-dir DIR] [--ranking FIELD=VALUE ...] [--dump FILE] [--skip-tokens]

Each conversation gets a fresh SQLite file; entity = the conversation, each LoCoMo session is
recorded as its own session at its real date, every turn as
`Message(role="user", content=text [+ " [photo caption]"], name=speaker)`. For each question of
categories 1-4 (official ids: 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop) the question
is the query of `recall(limit=10)`; recalled memories map back to turns through
`Recalled.source_message_ids`. R@k counts the evidence turns covered by the first k recalled
memories (what a caller with `limit=k` gets), averaged over questions.

For iterating on the ranking: `--db-dir` keeps the databases and reuses them on the next run
(recall only), `--ranking` overrides a `RankingConfig` field, `--dump` writes every question's
ranking, `--skip-tokens` leaves out the injected-block measure (it recalls twice more).

`--baselines` ranks the raw turns in the same process with BM25 (SQLite FTS5), dense cosine with
the same MiniLM embedder, and their reciprocal-rank fusion (k=60), and prints ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from memori_core import Memori, Message
from memori_core.embedding import resolve_embedder
from memori_core.recall import RankingConfig, estimate_tokens

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
KS = (1, 5, 10)
_DIA = re.compile(r"D(\d+):(\d+)")
_SESSION_KEY = re.compile(r"session_(\d+)")
_WORD = re.compile(r"\w+")


@dataclass
class Question:
    text: str
    category: int
    evidence: list[str]


@dataclass
class Conversation:
    sample_id: str
    sessions: list[tuple[int, datetime, list[dict[str, Any]]]]
    questions: list[Question]

    @property
    def turns(self) -> list[dict[str, Any]]:
        return [t for _, _, turns in self.sessions for t in turns]


@dataclass
class Scores:
    """Per-question measures, accumulated per category."""

    rows: dict[int, list[dict[str, float]]] = field(default_factory=dict)

    def add(self, category: int, row: dict[str, float]) -> None:
        self.rows.setdefault(category, []).append(row)

    def table(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        everything: list[dict[str, float]] = []
        for category in sorted(self.rows):
            rows = self.rows[category]
            everything.extend(rows)
            out[f"{category} {CATEGORIES[category]}"] = _mean(rows)
        out["overall"] = _mean(everything)
        return out


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys() if rows else []
    return {"n": len(rows), **{k: round(statistics.fmean(r[k] for r in rows), 4) for k in keys}}


def turn_text(turn: dict[str, Any]) -> str:
    """The turn's text with its photo caption appended (as every method here indexes it)."""
    text = str(turn.get("text", ""))
    caption = turn.get("blip_caption")
    return f"{text} [{caption}]" if caption else text


def load(path: Path, limit: int | None) -> list[Conversation]:
    data = json.loads(path.read_text())
    conversations = []
    for sample in data[:limit]:
        conv = sample["conversation"]
        sessions = []
        for key in conv:
            match = _SESSION_KEY.fullmatch(key)
            if match is None or not conv[key]:
                continue
            number = int(match.group(1))
            when = datetime.strptime(conv[f"session_{number}_date_time"], "%I:%M %p on %d %B, %Y")
            sessions.append((number, when, conv[key]))
        sessions.sort(key=lambda s: s[0])
        known = {t["dia_id"] for _, _, turns in sessions for t in turns}
        questions = []
        for qa in sample["qa"]:
            if qa["category"] not in CATEGORIES:
                continue
            # Malformed entries ("D8:6; D9:17", "D30:05", "D:11:26", ids past a session's end):
            # split lists, read numbers as numbers, drop what names no turn; questions left
            # with no evidence are skipped.
            found = (f"D{int(s)}:{int(t)}" for e in qa["evidence"] for s, t in _DIA.findall(e))
            evidence = [d for d in found if d in known]
            evidence = list(dict.fromkeys(evidence))
            if evidence:
                questions.append(Question(qa["question"], qa["category"], evidence))
        conversations.append(Conversation(sample["sample_id"], sessions, questions))
    return conversations


def measure(ranked: Sequence[Sequence[str]], evidence: list[str]) -> dict[str, float]:
    """`ranked[i]` = the dia_ids behind the i-th result; R@k, hit@10 and session hit@5/10."""
    gold = set(evidence)
    row: dict[str, float] = {}
    for k in KS:
        found = {d for result in ranked[:k] for d in result} & gold
        row[f"R@{k}"] = len(found) / len(gold)
    row["hit@10"] = float(row["R@10"] > 0)
    gold_sessions = {d.split(":")[0] for d in gold}
    sessions: list[str] = []
    for result in ranked:
        for d in result:
            s = d.split(":")[0]
            if s not in sessions:
                sessions.append(s)
    for k in (5, 10):
        row[f"session_hit@{k}"] = float(bool(set(sessions[:k]) & gold_sessions))
    return row


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


# -- the shipped path ---------------------------------------------------------------------------


def run_memori(
    conv: Conversation,
    embedder: str | None,
    workdir: Path,
    scores: Scores,
    timing: dict[str, Any],
    ranking: RankingConfig | None = None,
) -> None:
    db_path = workdir / (conv.sample_id + ".db")
    mapping_path = workdir / (conv.sample_id + ".dia.json")
    reuse = db_path.exists() and mapping_path.exists()
    mem = Memori(f"sqlite:///{db_path}", embedder=embedder, ranking=ranking).attribution(
        entity_id=conv.sample_id
    )
    dia_of: dict[int, str] = {}
    if reuse:
        # A database kept by an earlier run (--db-dir): recall only, ingest is not re-measured.
        dia_of = {int(k): v for k, v in json.loads(mapping_path.read_text()).items()}
        timing["reused"] = True
        _ask(mem, conv, dia_of, scores, timing)
        return
    start = time.perf_counter()
    for _, when, turns in conv.sessions:
        mem.new_session()
        stored = mem.record(
            [Message(role="user", content=turn_text(t), name=t["speaker"]) for t in turns],
            at=when,
        )
        assert len(stored) == len(turns), "every LoCoMo turn must be stored"
        for message, turn in zip(stored, turns, strict=True):
            dia_of[message.id] = turn["dia_id"]
    recorded = time.perf_counter()
    mem.flush()
    done = time.perf_counter()
    timing["record_s"] += recorded - start
    timing["ingest_s"] += done - start
    timing["turns"] += len(dia_of)
    timing["memories"] += mem._store.counts()["memories"]
    mapping_path.write_text(json.dumps(dia_of))
    _ask(mem, conv, dia_of, scores, timing)


def _ask(
    mem: Memori, conv: Conversation, dia_of: dict[int, str], scores: Scores, timing: dict[str, Any]
) -> None:
    for question in conv.questions:
        t0 = time.perf_counter()
        recalled = mem.recall(question.text, limit=10)
        timing["latencies_ms"].append((time.perf_counter() - t0) * 1000)
        ranked = [[dia_of[i] for i in r.source_message_ids if i in dia_of] for r in recalled]
        row = measure(ranked, question.evidence)
        if timing["dump"] is not None:
            timing["dump"].append(
                {
                    "conversation": conv.sample_id,
                    "question": question.text,
                    "category": question.category,
                    "evidence": question.evidence,
                    "ranked": ranked,
                }
            )
        if timing["skip_tokens"]:
            row["tokens"] = row["tokens_limit10"] = 0.0
        else:
            row["tokens"] = float(estimate_tokens(mem.context(question.text)))
            row["tokens_limit10"] = float(estimate_tokens(mem.context(question.text, limit=10)))
        row["results"] = float(len(recalled))
        scores.add(question.category, row)


# -- baselines over the raw turns ---------------------------------------------------------------


def bm25_rankings(texts: list[str], queries: list[str], depth: int) -> list[list[int]]:
    """BM25 (SQLite FTS5, the store's tokenizer) over the raw turns: OR of the query's words."""
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE VIRTUAL TABLE t USING fts5(text, tokenize='porter unicode61 remove_diacritics 2')"
    )
    db.executemany("INSERT INTO t(rowid, text) VALUES (?, ?)", list(enumerate(texts)))
    out: list[list[int]] = []
    for query in queries:
        terms = list(dict.fromkeys(w.lower() for w in _WORD.findall(query)))
        if not terms:
            out.append([])
            continue
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        rows = db.execute(
            "SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t) LIMIT ?", (match, depth)
        ).fetchall()
        out.append([r[0] for r in rows])
    db.close()
    return out


def rrf(rankings: Sequence[Sequence[int]], k: int = 60) -> list[int]:
    fused: dict[int, float] = {}
    for ranking in rankings:
        for position, item in enumerate(ranking):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + position + 1)
    return sorted(fused, key=lambda item: -fused[item])


def run_baselines(conv: Conversation, baselines: dict[str, Scores]) -> None:
    turns = conv.turns
    texts = [f"{t['speaker']}: {turn_text(t)}" for t in turns]
    queries = [q.text for q in conv.questions]
    embedder = resolve_embedder("default")
    assert embedder is not None
    doc_vectors = embedder.embed(texts)
    query_vectors = embedder.embed(queries)
    lexical = bm25_rankings(texts, queries, 50)
    for qi, question in enumerate(conv.questions):
        dense = [int(i) for i in np.argsort(-(doc_vectors @ query_vectors[qi]))[:50]]
        for name, ranking in (
            ("bm25", lexical[qi]),
            ("dense", dense),
            ("rrf", rrf([lexical[qi], dense])),
        ):
            ranked = [[turns[i]["dia_id"]] for i in ranking[:10]]
            baselines[name].add(question.category, measure(ranked, question.evidence))


# -- report -------------------------------------------------------------------------------------

COLUMNS = ("R@1", "R@5", "R@10", "hit@10", "session_hit@5", "session_hit@10")


def print_table(title: str, table: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    header = f"{'category':<16}{'n':>6}" + "".join(f"{c:>16}" for c in COLUMNS)
    extra = "tokens" in table["overall"]
    if extra:
        header += f"{'tokens p50':>12}"
    print(header)
    for name, row in table.items():
        line = f"{name:<16}{int(row['n']):>6}" + "".join(f"{row[c]:>16.3f}" for c in COLUMNS)
        if extra:
            line += f"{row['tokens_p50']:>12.0f}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="path to locomo10.json")
    parser.add_argument("--limit-conversations", type=int, default=None, metavar="N")
    parser.add_argument("--baselines", action="store_true", help="also run BM25/dense/RRF")
    parser.add_argument(
        "--embedder", choices=("default", "none"), default="default", help="none = lexical only"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "locomo.json"
    )
    parser.add_argument(
        "--db-dir",
        type=Path,
        default=None,
        help="keep the databases here and reuse them on the next run (recall only, for "
        "iterating on the ranking; ingest time is then not measured)",
    )
    parser.add_argument(
        "--dump", type=Path, default=None, help="write every question's ranking here (JSON)"
    )
    parser.add_argument(
        "--skip-tokens", action="store_true", help="do not measure the injected block (faster)"
    )
    parser.add_argument(
        "--ranking",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a RankingConfig field (repeatable), for measuring alternatives",
    )
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.ranking:
        name, _, value = item.partition("=")
        current = getattr(RankingConfig(), name)
        overrides[name] = type(current)(value) if not isinstance(current, bool) else value == "1"
    ranking = RankingConfig(**overrides)

    conversations = load(args.data, args.limit_conversations)
    embedder = None if args.embedder == "none" else "default"
    scores = Scores()
    baselines = {name: Scores() for name in ("bm25", "dense", "rrf")}
    timing: dict[str, Any] = {
        "record_s": 0.0,
        "ingest_s": 0.0,
        "turns": 0,
        "memories": 0,
        "latencies_ms": [],
        "dump": [] if args.dump is not None else None,
        "skip_tokens": args.skip_tokens,
    }
    with tempfile.TemporaryDirectory(prefix="memori-locomo-") as tmp:
        workdir = Path(tmp)
        if args.db_dir is not None:
            workdir = args.db_dir / args.embedder
            workdir.mkdir(parents=True, exist_ok=True)
        for conv in conversations:
            run_memori(conv, embedder, workdir, scores, timing, ranking)
            if args.baselines:
                run_baselines(conv, baselines)
            print(
                f"{conv.sample_id}: {len(conv.questions)} questions, "
                f"R@10 so far {scores.table()['overall']['R@10']:.3f}",
                file=sys.stderr,
            )

    table = scores.table()
    for category, rows in [*scores.rows.items(), (0, [r for v in scores.rows.values() for r in v])]:
        key = "overall" if category == 0 else f"{category} {CATEGORIES[category]}"
        tokens = [r["tokens"] for r in rows]
        table[key]["tokens_p50"] = float(np.median(tokens))
        table[key]["tokens_p95"] = percentile(tokens, 95)
        table[key]["tokens_limit10_p50"] = float(np.median([r["tokens_limit10"] for r in rows]))
    latencies = timing.pop("latencies_ms")
    dump = timing.pop("dump")
    timing.pop("skip_tokens")
    if args.dump is not None:
        args.dump.write_text(json.dumps(dump) + "\n")
    timing["recall_p50_ms"] = round(percentile(latencies, 50), 2)
    timing["recall_p95_ms"] = round(percentile(latencies, 95), 2)
    timing["ingest_turns_per_s"] = (
        round(timing["turns"] / timing["ingest_s"], 1) if timing["ingest_s"] else None
    )
    timing["record_s"] = round(timing["record_s"], 2)
    timing["ingest_s"] = round(timing["ingest_s"], 2)

    print_table(f"memori-core recall(limit=10), embedder={args.embedder}", table)
    result: dict[str, Any] = {
        "benchmark": "locomo10 turn-level recall, categories 1-4",
        "category_mapping": CATEGORIES,
        "turn_text": "text + ' [blip_caption]' for photo turns; stored as 'speaker: text'",
        "conversations": len(conversations),
        "embedder": args.embedder,
        "ranking": {k: getattr(ranking, k) for k in ranking.__dataclass_fields__},
        "machine": {"python": platform.python_version(), "cpu": platform.processor()},
        "memori": table,
        "timing": timing,
    }
    if args.baselines:
        result["baselines"] = {}
        for name, baseline in baselines.items():
            btable = baseline.table()
            result["baselines"][name] = btable
            print_table(f"baseline {name} over raw turns", btable)
        print("\nratio memori / baseline (overall)")
        for name in baselines:
            ratios = {
                c: table["overall"][c] / result["baselines"][name]["overall"][c]
                for c in COLUMNS
                if result["baselines"][name]["overall"][c]
            }
            result.setdefault("ratios", {})[name] = {c: round(v, 3) for c, v in ratios.items()}
            print(f"  vs {name:<6}" + "".join(f"  {c} {v:.2f}" for c, v in ratios.items()))
    print(
        f"\nrecall p50 {timing['recall_p50_ms']} ms, p95 {timing['recall_p95_ms']} ms; "
        f"ingest {timing['turns']} turns in {timing['ingest_s']} s "
        f"({timing['ingest_turns_per_s']}/s, embedding included); "
        f"block tokens p50 {table['overall']['tokens_p50']:.0f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
