"""Append-only leaderboard tables: ``leaderboards/<protocol>/v<N>/results.jsonl`` + README.md.

Every write takes a file lock, writes the whole new file to a temporary name and renames it
over the old one, so concurrent runs never lose or interleave rows and an interrupted write
leaves the previous table intact. An existing row is never rewritten.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

SCHEMA_VERSION = 1
REQUIRED_FIELDS = ("schema", "id", "created", "protocol", "tokenizer", "data", "metrics", "provenance", "wall_time_s")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def table_dir(root: Path, protocol_name: str, version: int) -> Path:
    return Path(root) / protocol_name / f"v{version}"


def read_records(directory: Path) -> list[dict[str, Any]]:
    """All records of one table, in the order they were appended."""
    path = Path(directory) / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def validate_record(record: dict[str, Any]) -> None:
    """Raise ValueError when a record lacks a required field."""
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise ValueError(f"result record lacks {missing}; refusing to write it")
    if record["schema"] != SCHEMA_VERSION:
        raise ValueError(f"record schema {record['schema']} != {SCHEMA_VERSION}")


def append_record(root: Path, record: dict[str, Any]) -> Path:
    """Append one record to its protocol's table and re-render the table's README.md.

    Returns:
        The table directory.
    """
    validate_record(record)
    proto = record["protocol"]
    directory = table_dir(root, proto["name"], proto["version"])
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / ".lock"), timeout=120):
        records = read_records(directory)
        if any(r["id"] == record["id"] for r in records):
            raise ValueError(f"record {record['id']} is already in {directory}; rows are never rewritten")
        fingerprints = {r["protocol"]["fingerprint"] for r in records}
        if fingerprints and proto["fingerprint"] not in fingerprints:
            raise ValueError(
                f"protocol {proto['name']} v{proto['version']} changed (fingerprint {proto['fingerprint'][:12]} vs "
                f"{sorted(fingerprints)[0][:12]} in {directory}); a changed protocol needs a new version number"
            )
        path = directory / "results.jsonl"
        old = path.read_text() if path.exists() else ""
        atomic_write_text(path, old + json.dumps(record, sort_keys=True) + "\n")
        atomic_write_text(directory / "README.md", render_table(records + [record]))
    return directory


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


COLUMNS = (  # (metric key, header, digits)
    ("psnr", "PSNR (dB) ↑", 2),
    ("ssim", "SSIM ↑", 4),
)


def render_table(records: list[dict[str, Any]]) -> str:
    """Markdown table of a protocol version's results (deterministic for the same records)."""
    if not records:
        return "# (empty)\n"
    proto = records[0]["protocol"]
    lines = [
        f"# Leaderboard: `{proto['name']}` v{proto['version']}",
        "",
        f"{proto.get('description', '')}",
        "",
        f"Protocol fingerprint `{proto['fingerprint'][:16]}`. Generated from `results.jsonl` "
        "(one JSON record per run, append-only); do not edit by hand.",
        "",
        "| tokenizer | latent | params (M) | " + " | ".join(h for _, h, _ in COLUMNS) + " | n eval | train steps | wall (s) | commit | date |",
        "|---|---|---|" + "---|" * len(COLUMNS) + "---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r["tokenizer"]["name"], r["created"])):
        tok, metrics = r["tokenizer"], r["metrics"]
        values = [_fmt(metrics.get(k, {}).get("value"), d) for k, _, d in COLUMNS]
        n = max((m.get("n", 0) for m in metrics.values()), default=0)
        commit = r["provenance"]["code"]["commit"][:8] + ("+dirty" if r["provenance"]["code"]["dirty"] else "")
        lines.append(
            f"| {tok['name']} | {'x'.join(map(str, tok['latent']['shape']))} | {tok['params']['total'] / 1e6:.2f} | "
            + " | ".join(values)
            + f" | {n} | {tok['trained_steps']} | {sum(r['wall_time_s'].values()):.0f} | {commit} | {r['created'][:10]} |"
        )
    return "\n".join(lines) + "\n"
