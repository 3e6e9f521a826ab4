"""Write the JSON Schemas in schemas/ from the typed models, so the two cannot drift apart.

The models and the table in ``streams.contracts.versions`` are the single source of truth;
``mkpi schemas`` rewrites the files and
``mkpi schemas --check`` (run by the tests) fails when a committed file is stale.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import msgspec

from streams.contracts.versions import CONTRACTS, Contract

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _clean_descriptions(node: Any) -> Any:
    """Docstring descriptions with their indentation removed: msgspec 0.23 began doing this
    itself, so the files come out the same whichever version is installed."""
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else _clean_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(item) for item in node]
    return node


def render(contract: Contract) -> str:
    generated: dict[str, Any] = _clean_descriptions(msgspec.json.schema(contract.model))
    document = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"mkpi/{contract.schema_path.removesuffix('.json')}",
        "title": contract.name,
        "description": contract.description,
        **{k: v for k, v in generated.items() if k not in ("title", "description")},
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def stale_files(root: Path) -> list[str]:
    return [
        c.schema_path
        for c in CONTRACTS
        if not (root / c.schema_path).exists()
        or (root / c.schema_path).read_text(encoding="utf-8") != render(c)
    ]


def write_all(root: Path) -> list[str]:
    written = []
    for contract in CONTRACTS:
        target = root / contract.schema_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(contract), encoding="utf-8")
        written.append(contract.schema_path)
    return written
