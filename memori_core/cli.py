"""The `memori-core` command: demo, sessions, recall, export, forget, stats, reindex."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from memori_core.errors import MemoriError

__all__ = ["main"]


def _memori(args: argparse.Namespace, *, embedder: bool = True) -> Any:
    from memori_core.memori import Memori

    return Memori(args.database_url, embedder="default" if embedder and not args.lexical else None)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return None
    return str(value)


def _cmd_demo(args: argparse.Namespace) -> int:
    from memori_core.demo import run_demo

    run_demo(database_url=args.database_url, lexical_only=args.lexical, out=sys.stdout)
    return 0


def _cmd_sessions(args: argparse.Namespace) -> int:
    mem = _memori(args, embedder=False).attribution(args.entity, args.process)
    for info in mem.sessions():
        print(
            f"{info.id}  messages={info.message_count:<5} "
            f"last_active={info.last_active_at:%Y-%m-%d %H:%M:%S}"
        )
    return 0


def _cmd_recall(args: argparse.Namespace) -> int:
    mem = _memori(args).attribution(args.entity, args.process)
    mem.share_across_processes = args.share
    results = mem.recall(args.query, limit=args.limit)
    if args.json:
        for r in results:
            print(
                json.dumps(
                    {
                        "id": r.id,
                        "text": r.text,
                        "score": r.score,
                        "parts": r.parts.as_dict(),
                        "kind": r.kind,
                        "created_at": r.created_at.isoformat(),
                        "session_id": r.session_id,
                    }
                )
            )
        return 0
    if not results:
        print("(nothing recalled)")
    for r in results:
        p = r.parts
        print(
            f"{r.score:.3f}  [{r.kind}] {r.text}\n"
            f"       lexical={p.lexical:.3f} dense={p.dense:.3f} "
            f"recency={p.recency:.3f} salience={p.salience:.3f}"
        )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    mem = _memori(args, embedder=False)
    store = mem._ready()
    entities = [args.entity] if args.entity else store.entities()
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        for entity in entities:
            for row in store.export_entity(entity):
                out.write(json.dumps(row, default=_json_default, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    if not args.yes:
        print(f"refusing to delete everything about {args.entity!r} without --yes", file=sys.stderr)
        return 2
    report = _memori(args, embedder=False).forget(args.entity)
    print(
        f"forgot {report.entity_id}: sessions={report.sessions} messages={report.messages} "
        f"memories={report.memories} vectors={report.vectors}"
    )
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    counts = _memori(args, embedder=False)._ready().counts()
    for key, value in counts.items():
        print(f"{key:<10} {value}")
    return 0


def _cmd_reindex(args: argparse.Namespace) -> int:
    count = _memori(args).reindex()
    print(f"re-embedded {count} memories")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memori-core", description=__doc__)
    parser.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL (default: $MEMORI_DATABASE_URL, else a file in the user data dir)",
    )
    parser.add_argument(
        "--lexical", action="store_true", help="do not load the embedding model (lexical recall)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="offline demo: two users, two agents, what is recalled")
    demo.set_defaults(func=_cmd_demo)

    def scoped(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--entity", required=True, help="entity (user) id")
        sub.add_argument("--process", default=None, help="process (agent) id")
        return sub

    scoped("sessions", "list an entity's sessions").set_defaults(func=_cmd_sessions)
    recall = scoped("recall", "recall memories for a query, with score parts")
    recall.add_argument("query")
    recall.add_argument("--limit", type=int, default=5)
    recall.add_argument("--share", action="store_true", help="include entity-wide memories")
    recall.add_argument("--json", action="store_true", help="one JSON object per line")
    recall.set_defaults(func=_cmd_recall)

    export = commands.add_parser("export", help="export sessions, messages, memories as JSON Lines")
    export.add_argument("--entity", default=None, help="only this entity (default: all)")
    export.add_argument("--output", "-o", default=None, help="file to write (default: stdout)")
    export.set_defaults(func=_cmd_export)

    forget = commands.add_parser("forget", help="delete everything stored about an entity")
    forget.add_argument("--entity", required=True)
    forget.add_argument("--yes", action="store_true", help="confirm the deletion")
    forget.set_defaults(func=_cmd_forget)

    commands.add_parser("stats", help="row counts").set_defaults(func=_cmd_stats)
    commands.add_parser("reindex", help="rebuild all embeddings").set_defaults(func=_cmd_reindex)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `memori-core` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except MemoriError as e:
        print(f"memori-core: error: {e}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
