"""Interoperability with the reference pix2pix code and deployment formats.

`pbgan export` writes a task's materialized generator as a plain state dict (safetensors and
.pth, keys as in the reference UnetGenerator), TorchScript or ONNX. `pbgan import` starts a
model from a reference generator checkpoint (latest_net_G.pth): it becomes task 1, all of its
filters free, so later tasks piggyback on it.
"""
from __future__ import annotations

import importlib.util
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
import typer

from pbgan_core.atomic import atomic_write_bytes
from pbgan_core.errors import PbganError, UsageError
from pbgan_core.hookspecs import hookimpl
from pbgan_core.store import ModelStore, check_task_name, default_model_dir, refuse_inside_model
from pbgan_core.tensorfile import save_bytes

FORMATS = ("state-dict", "torchscript", "onnx")


# --- export ------------------------------------------------------------------------------

def task_generator(store: ModelStore, plugins, name: str) -> tuple[dict[str, Any], torch.nn.Module]:
    """The task's dense generator for its own direction, on the CPU in eval mode."""
    from pbgan_core.engine import load_generators

    entry, generators = load_generators(store, plugins, name)
    return entry, generators[plugins.architectures.get(entry["arch"]).generator_for(entry["direction"])]


def export(store: ModelStore, plugins, name: str, fmt: str, out: Path, force: bool = False) -> list[Path]:
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise PbganError("exporting to ONNX needs the onnx package: pip install onnx (or use --format torchscript)")
    out = Path(out)
    if fmt == "state-dict":
        stem = out.with_suffix("") if out.suffix in (".pth", ".safetensors") else out
        paths = [stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".pth")]
    else:
        paths = [out]
    for path in paths:
        refuse_inside_model(path, store.root)
        if path.is_dir():
            raise PbganError(f"{path} is a folder; give the path of the file to write")
    entry, gen = task_generator(store, plugins, name)
    if fmt == "state-dict":
        state = {k: v.detach().contiguous() for k, v in gen.state_dict().items()}
        buffer = io.BytesIO()
        torch.save(state, buffer)  # tensors only: loads with torch.load(..., weights_only=True)
        contents = [save_bytes(state, metadata={"task": name, "arch": entry["arch"]}), buffer.getvalue()]
    else:
        size = int(entry["options"]["size"])
        first = next(m for m in gen.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))
        example = torch.rand(1, first.in_channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        buffer = io.BytesIO()
        with torch.no_grad():
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(gen, example), buffer)
            else:
                torch.onnx.export(gen, (example,), buffer, input_names=["input"], output_names=["output"],
                                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
        contents = [buffer.getvalue()]
    todo = [(path, data) for path, data in zip(paths, contents) if not _holds(path, data)]
    for path, _ in todo:
        if path.exists() and not force:
            raise PbganError(f"{path} exists already; add --force to replace it, or choose another path")
    created = []
    try:
        for path, data in todo:
            existed = path.exists()
            atomic_write_bytes(path, data, overwrite=force)
            if not existed:
                created.append(path)
    except BaseException:  # an export is whole or absent, so the same command can run again
        for path in created:
            path.unlink(missing_ok=True)
        raise
    return paths


def _holds(path: Path, data: bytes) -> bool:
    """Whether `path` has exactly these bytes already (writing them again replaces nothing)."""
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


# --- import ------------------------------------------------------------------------------

def read_reference_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, cleaned as the reference loader cleans it (no `module.`, no
    `num_batches_tracked`). Loaded with weights_only=True: no code runs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PbganError(f"checkpoint {path} does not exist; give the path of a latest_net_G.pth") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise PbganError(f"{path} is not a readable weights-only PyTorch checkpoint ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise PbganError(f"{path} is not a plain state dict of tensors (like latest_net_G.pth)")
    return {re.sub(r"^module\.", "", k): v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def infer_unet(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """netG depth, ngf and norm of a reference UnetGenerator from its keys and shapes."""
    first = state.get("model.model.0.weight")
    if first is None or first.dim() != 4:
        raise PbganError(f"{path} is not a pix2pix U-Net generator (no model.model.0.weight); "
                         "only --arch pix2pix U-Net checkpoints can be imported")
    depth = max(k.split(".").count("model") for k in state) - 1
    norm_weights = [k for k, v in state.items() if k.endswith(".weight") and v.dim() == 1]
    if norm_weights:
        norm = "batch"
    elif "model.model.1.model.1.bias" in state:
        norm = "instance"
    else:
        norm = "none"
    if norm != "batch":  # old instance-norm checkpoints carry statistics the layer does not track
        state = {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var"))}
    return {"netG": f"unet_{2 ** depth}", "ngf": int(first.shape[0]), "norm": norm, "in": int(first.shape[1]),
            "state": state}


def _not_empty(store: ModelStore) -> PbganError:
    return PbganError(f"{store.root} has tasks already; an import starts a new model: give an empty --model-dir")


def import_reference(plugins, checkpoint: Path, arch_name: str, task: str, model_dir: Path, data: Path,
                     direction: str, size: int | None, eval_images: int) -> dict[str, Any]:
    from pbgan_core.engine import TrainRequest, count_parameters, generator_signature, store_task, task_options

    check_task_name(task)
    if arch_name != "pix2pix":
        raise UsageError(f"--arch {arch_name}: only pix2pix (U-Net) checkpoints can be imported")
    store = ModelStore(model_dir)
    if store.tasks:  # an early answer; asked again under the lock
        raise _not_empty(store)
    found = infer_unet(read_reference_checkpoint(checkpoint), checkpoint)
    if found["in"] != 3:
        raise PbganError(f"{checkpoint} takes {found['in']} input channels; pix2pix here translates RGB (3)")
    size = size or int(found["netG"][len("unet_"):])
    req = TrainRequest(arch=arch_name, task=task, data=data, model_dir=model_dir, direction=direction, size=size,
                       extra={"netG": found["netG"], "ngf": found["ngf"], "norm": found["norm"],
                              "eval_images": eval_images})
    opts = task_options(req, plugins)
    arch, factorizer = plugins.architectures.get(arch_name), plugins.factorizers.get(req.factorizer)
    plugins.datasets.get(opts["dataset"]).build(Path(data), "test", opts, train=False)  # fail before storing
    with store.transaction():
        if store.tasks:
            raise _not_empty(store)
        generators = arch.build_generators(opts)
        try:
            generators["G"].load_state_dict(found["state"], strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise PbganError(f"{checkpoint} does not fit a {found['netG']} U-Net with ngf {found['ngf']} "
                             f"({first[:200]})") from None
        signature, standalone = generator_signature(generators), count_parameters(generators)
        gen = factorizer.wrap(generators["G"], {}, opts)  # empty bank: every filter is free
        gen.eval()
        kept, added = factorizer.split(gen)
        entry = {
            "name": task, "arch": arch_name, "factorizer": req.factorizer, "dataset": opts["dataset"],
            "data": str(data), "direction": direction, "options": {k: v for k, v in opts.items()
                                                                   if isinstance(v, (str, int, float, bool))},
            "signature": signature,
            "params": {"stored": factorizer.stored_parameters(gen), "standalone": standalone, "bank_before": 0,
                       "bank_added": sum(t.numel() for t in added.values())},
            "train": {"steps": 0, "imported_from": str(checkpoint)},
        }
        store_task(store, plugins, entry, {f"G/{k}": v for k, v in kept.items()},
                   {f"G/{k}": v for k, v in added.items()}, store.load_bank().fingerprint())
    return store.task(task)


@hookimpl
def register_commands(cli):
    from pbgan_core.console import console
    from pbgan_core.plugins import get_plugins

    model_dir_option = typer.Option(None, "--model-dir", envvar="PBGAN_MODEL_DIR",
                                    help="Lifelong model directory [default: ./pbgan-model]")

    @cli.command("export")
    def export_cmd(out: Path = typer.Argument(..., help="Output file (state-dict: writes OUT.safetensors "
                                              "and OUT.pth)"),
                   task: str = typer.Option(..., "--task", help="Which task's generator to export"),
                   fmt: str = typer.Option("state-dict", "--format", help="state-dict, torchscript or onnx"),
                   force: bool = typer.Option(False, "--force", help="Replace existing output files"),
                   model_dir: Optional[Path] = model_dir_option) -> None:
        """Write a task's standalone generator for use without pbgan.

        Example: pbgan export --task facades --format torchscript facades_G.pt
        """
        store = ModelStore(model_dir or default_model_dir())
        if not store.exists:
            raise PbganError(f"no pbgan model in {store.root}; train a task first or pass --model-dir")
        for path in export(store, get_plugins(), task, fmt, out, force):
            console.print(f"wrote {path}", markup=False)

    @cli.command("import")
    def import_cmd(checkpoint: Path = typer.Argument(..., help="A reference generator checkpoint "
                                                     "(latest_net_G.pth)"),
                   arch: str = typer.Option(..., "--arch", help="Architecture of the checkpoint: pix2pix"),
                   task: str = typer.Option(..., "--task", help="Name of the task it becomes"),
                   data: Path = typer.Option(..., "--data", help="The task's dataset folder (for evaluation)"),
                   direction: str = typer.Option("AtoB", "--direction", help="AtoB or BtoA"),
                   size: Optional[int] = typer.Option(None, "--size", help="Image size [default: 2**depth of "
                                                      "the U-Net, e.g. 256 for unet_256]"),
                   eval_images: int = typer.Option(32, "--eval-images", help="Test images for the metrics"),
                   model_dir: Optional[Path] = model_dir_option) -> None:
        """Start a model whose first task is a reference pix2pix generator.

        Example: pbgan import --arch pix2pix --task facades --data ../shared/data/facades latest_net_G.pth
        """
        root = model_dir or default_model_dir()
        entry = import_reference(get_plugins(), checkpoint, arch, task, root, data, direction, size, eval_images)
        console.print(f"imported {checkpoint} as task {task!r} ({entry['options']['netG']}, ngf "
                      f"{entry['options']['ngf']}, {entry['options']['norm']} norm) in {root}; metrics "
                      f"{entry.get('metrics', {})}", markup=False)
