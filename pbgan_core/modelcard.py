"""The model directory's README.md: what the model holds and how to use it, rewritten after each
stored task so that a copied or shared model explains itself."""
from __future__ import annotations

from typing import Any, Mapping

from . import __version__

README = "README.md"
SHARED = ("size", "netG", "ngf", "norm", "upsample", "no_dropout", "dropout")  # shown once: every task shares them


def _metrics(entry: Mapping[str, Any]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in (entry.get("metrics") or {}).items()) or "-"


def model_card(store) -> str:
    tasks = store.tasks
    first = tasks[0]
    shared = ", ".join(f"{k} {first['options'][k]}" for k in SHARED if k in first["options"])
    rows = [f"| {e['index']} | {e['name']} | {e['factorizer']} | {e['direction']} | "
            f"{e['data']} | {e['train']['steps']} | "
            f"{e['params']['stored'] / e['params']['standalone']:.3f} | {_metrics(e)} |" for e in tasks]
    name = first["name"]
    return "\n".join([
        "# pbgan model",
        "",
        f"A lifelong {first['arch']} generator ({shared}) that learned {len(tasks)} task(s) one after another "
        f"with pbgan {__version__}; each stored task's outputs stay bit-identical. Written by pbgan after each "
        "stored task: edit nothing here, `manifest.json` has every option.",
        "",
        "| # | task | factorizer | direction | data | steps | x standalone | metrics |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Metrics: on each task's test split right after training it. `x standalone`: parameters the task "
        "stored, as a share of one standalone generator.",
        "",
        "## Use it",
        "",
        "`pip install pbgan`, then, with MODEL_DIR this folder:",
        "",
        "```bash",
        "pbgan tasks --model-dir MODEL_DIR",
        f"pbgan generate --model-dir MODEL_DIR --task {name} INPUT_IMAGES out/",
        f"pbgan eval --model-dir MODEL_DIR                     # --data {name}=PATH if its data moved",
        "pbgan verify --model-dir MODEL_DIR",
        "```",
        "",
        "```python",
        "import pbgan",
        'model = pbgan.Model.open("MODEL_DIR")',
        f'image = model.translate("{name}", "input.png")   # a PIL image',
        f'G = model.generator("{name}")                    # a plain nn.Module',
        "```",
        "",
    ])


def write_model_card(store) -> None:
    """Rewrite MODEL_DIR/README.md atomically (inside a transaction)."""
    store.write_file(README, model_card(store).encode())
