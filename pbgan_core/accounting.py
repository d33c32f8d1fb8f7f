"""Parameter and file-size accounting of a model's tasks."""
from __future__ import annotations

from typing import Any

from .store import ModelStore


def task_rows(store: ModelStore) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = []
    for entry in store.tasks:
        p = entry["params"]
        size = sum((store.root / entry[k]).stat().st_size for k in ("file", "bank_file", "probe_file")
                   if k in entry and (store.root / entry[k]).exists())
        rows.append({
            "index": entry["index"], "name": entry["name"], "arch": entry["arch"],
            "factorizer": entry["factorizer"], "direction": entry["direction"],
            "stored_parameters": p["stored"], "standalone_parameters": p["standalone"],
            "ratio_to_standalone": p["stored"] / p["standalone"], "file_bytes": size,
            "metrics": entry.get("metrics"),
        })
    standalone = rows[0]["standalone_parameters"] if rows else 0
    stored = sum(r["stored_parameters"] for r in rows)
    totals = {
        "tasks": len(rows), "stored_parameters": stored, "standalone_parameters": standalone,
        "one_standalone_per_task": standalone * len(rows),
        "ratio_to_standalone_per_task": stored / max(standalone * len(rows), 1),
        "bank_filter_parameters": sum(e["params"].get("bank_added", 0) for e in store.tasks),
        "file_bytes": sum(r["file_bytes"] for r in rows),
    }
    return rows, totals
