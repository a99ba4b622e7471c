"""The result record's JSON Schema (version 1), validated with ``jsonschema`` before any row is written.

A record must carry its provenance: what was measured (every metric with its sample count and,
for FIDs, the extractor's id and weights sha256 and, for gFID, the reference statistics'
sha256), on what (dataset fingerprint), with what (tokenizer name, config and checkpoint
sha256; generator config), by what code (commit and dirty flag, package versions, hardware),
how (precision, seeds) and at what cost (wall time per stage). A metric that could not be
measured is ``{"unavailable": reason}``, never a number.
"""
from __future__ import annotations

import math
from typing import Any

SCHEMA_VERSION = 1

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

_MEASURED = {  # a metric with a value: its sample count, and an interval when there is one
    "type": "object",
    "required": ["value", "n"],
    "properties": {
        "value": {"type": "number"},
        "n": {"type": "integer", "minimum": 1},
        "interval": {"oneOf": [{"type": "null"}, {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}]},
    },
}
_UNAVAILABLE = {"type": "object", "required": ["unavailable"], "properties": {"unavailable": {"type": "string", "minLength": 1}}}
_EXTRACTOR = {"type": "object", "required": ["id", "weights_sha256"], "properties": {"id": {"type": "string"}, "weights_sha256": {"type": "string"}}}
_FID = {"oneOf": [_UNAVAILABLE, {"allOf": [_MEASURED, {"required": ["extractor", "label"], "properties": {"extractor": _EXTRACTOR}}]}]}
_GFID = {"oneOf": [_UNAVAILABLE, {"allOf": [_FID["oneOf"][1], {
    "required": ["reference"], "properties": {"reference": {"type": "object", "required": ["sha256"], "properties": {"sha256": _SHA256}}}}]}]}

RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "latentbench result record",
    "type": "object",
    "required": ["schema", "id", "created", "protocol", "tokenizer", "data", "metrics", "seeds", "provenance", "wall_time_s"],
    "properties": {
        "schema": {"const": SCHEMA_VERSION},
        "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "created": {"type": "string"},
        "protocol": {"type": "object", "required": ["name", "version", "fingerprint"],
                     "properties": {"name": {"type": "string"}, "version": {"type": "integer"}, "fingerprint": _SHA256}},
        "tokenizer": {
            "type": "object",
            "required": ["name", "init_args", "module_args", "latent", "params", "checkpoint", "trained_steps"],
            "properties": {
                "name": {"type": "string"},
                "init_args": {"type": "object"},
                "module_args": {"type": "object"},
                # None only for a tokenizer evaluated as built (registry weights, no training, no --ckpt)
                "checkpoint": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["sha256"], "properties": {"sha256": _SHA256}}]},
            },
        },
        "training": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["precision"]}]},
        # training that left the protocol's precision (latentbench.precision), per stage: requested, used, why
        "precision_changed": {"oneOf": [{"type": "null"}, {"type": "object", "additionalProperties": {
            "type": "object", "required": ["requested", "used", "reason"]}}]},
        # the processes a result ran on (absent in records written before distributed runs)
        "distributed": {"type": "object", "required": ["world_size"], "properties": {"world_size": {"type": "integer", "minimum": 1}}},
        "data": {"type": "object", "required": ["eval"],
                 "properties": {"eval": {"type": "object", "required": ["fingerprint", "n", "source", "split"]}}},
        "metrics": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {"oneOf": [_UNAVAILABLE, _MEASURED]},
            "properties": {"rfid": _FID, "gfid": _GFID},
        },
        "generation": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["generator", "latents", "curve"],
            "properties": {"generator": {"type": "object", "required": ["name", "init_args", "module_args", "precision", "steps"]},
                           "latents": {"type": "object", "required": ["sha256", "n"], "properties": {"sha256": _SHA256}}}}]},
        "seeds": {"type": "object", "minProperties": 1},
        "provenance": {
            "type": "object",
            "required": ["code", "packages", "hardware", "python"],
            "properties": {
                "code": {"type": "object", "required": ["commit", "dirty"]},
                "packages": {"type": "object", "required": ["torch", "latentbench"]},
                "hardware": {"type": "object", "required": ["cpu", "cuda"]},
            },
        },
        "wall_time_s": {"type": "object", "required": ["eval"], "additionalProperties": {"type": "number", "minimum": 0}},
    },
}


def validate_record(record: dict[str, Any]) -> None:
    """Raise ValueError naming every place where ``record`` breaks the schema (missing provenance included)."""
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(RECORD_SCHEMA).iter_errors(record), key=lambda e: list(e.absolute_path))
    # JSON Schema's "number" admits NaN and infinity, which JSON itself cannot hold: a metric is a number or a reason
    problems = [f"{'.'.join(map(str, e.absolute_path)) or '(record)'}: {_short(e)}" for e in errors]
    problems += [f"{where}: {value} is not a finite number (a metric that could not be measured is "
                 "{'unavailable': reason})" for where, value in _not_finite(record.get("metrics"), "metrics")]
    if problems:
        raise ValueError(f"result record does not match schema v{SCHEMA_VERSION} ({len(problems)} problem(s)): "
                         f"{'; '.join(problems[:8])}; refusing to write it")


def _not_finite(value: Any, where: str) -> list[tuple[str, float]]:
    """(path, value) of every NaN or infinite float inside ``value``."""
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in _not_finite(v, f"{where}.{k}")]
    if isinstance(value, (list, tuple)):
        return [hit for i, v in enumerate(value) for hit in _not_finite(v, f"{where}.{i}")]
    return [(where, value)] if isinstance(value, float) and not math.isfinite(value) else []


def finite_or_str(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its name ("inf", "-inf", "nan"), for strict JSON."""
    if isinstance(value, dict):
        return {k: finite_or_str(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_str(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _short(error) -> str:
    """The most specific message of a (possibly nested oneOf) validation error."""
    while error.context:
        error = min(error.context, key=lambda e: len(e.message))
    return error.message[:200]
