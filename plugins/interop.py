"""Interoperability with the reference pix2pix/CycleGAN code and deployment formats.

`pbgan export` writes a task's materialized generators as plain state dicts under the reference's
file names (latest_net_G.pth; CycleGAN: latest_net_G_A.pth, latest_net_G_B.pth; keys as in the
reference networks, plus .safetensors twins), or as TorchScript or ONNX files (CycleGAN: one per
generator) that carry the task, direction, size and pixel scaling as metadata and take any image
size the generator can (a multiple of its total downsampling).
`pbgan import` starts a model from reference generator checkpoints: they become task 1, all
filters free, so later tasks piggyback on them.
"""
from __future__ import annotations

import importlib.util
import io
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import typer

from pbgan_core.atomic import atomic_write_bytes
from pbgan_core.errors import PbganError, UsageError
from pbgan_core.hookspecs import hookimpl
from pbgan_core.store import ModelStore, check_task_name, default_model_dir, refuse_inside_model
from pbgan_core.tensorfile import save_bytes
from pbgan_core.weights import load_weights_only

FORMATS = ("state-dict", "torchscript", "onnx")


# --- export ------------------------------------------------------------------------------

def reference_file(gname: str) -> str:
    """The reference code's file name of a generator: latest_net_G.pth (pix2pix), latest_net_G_A.pth
    (CycleGAN, A -> B) and latest_net_G_B.pth (B -> A)."""
    return f"latest_net_{gname}.pth"


def state_dict_files(entry: dict[str, Any], generators: dict[str, torch.nn.Module], name: str,
                     folder: Path) -> list[tuple[Path, bytes]]:
    """Every generator of the task as the reference saves it (FOLDER/latest_net_G*.pth, plain state
    dicts that load with torch.load(weights_only=True)), plus the same tensors as .safetensors."""
    files = []
    for gname, gen in generators.items():
        state = {k: v.detach().contiguous() for k, v in gen.state_dict().items()}
        pth = folder / reference_file(gname)
        buffer = io.BytesIO()
        torch.save(state, buffer)  # tensors only
        files.append((pth, buffer.getvalue()))
        meta = {"task": name, "arch": entry["arch"], "generator": gname}
        files.append((pth.with_suffix(".safetensors"), save_bytes(state, metadata=meta)))
    return files


def export(store: ModelStore, plugins, name: str, fmt: str, out: Path, force: bool = False) -> list[Path]:
    from pbgan_core.engine import load_generators

    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise PbganError("exporting to ONNX needs the onnx package: pip install onnx (or use --format torchscript)")
    out = Path(out)
    if fmt == "state-dict":
        if out.suffix in (".pth", ".safetensors", ".pt") or (out.exists() and not out.is_dir()):
            raise PbganError(f"--format state-dict writes one file per generator into a folder, under the "
                             f"reference's names (latest_net_G.pth; CycleGAN: latest_net_G_A.pth and "
                             f"latest_net_G_B.pth); give a folder, not {out}")
        refuse_inside_model(out, store.root)
        if store.task(name)["options"].get("upsample", "transpose") != "transpose":
            raise PbganError(f"task {name!r} upsamples by resize-convolution, which the reference networks do not "
                             "have: its state dict would not load there; export it with --format torchscript or onnx")
        entry, generators = load_generators(store, plugins, name)
        files = state_dict_files(entry, generators, name, out)
    else:
        refuse_inside_model(out, store.root)
        if out.is_dir():
            raise PbganError(f"{out} is a folder; give the path of the file to write")
        entry, generators = load_generators(store, plugins, name)
        arch = plugins.architectures.get(entry["arch"])
        directions = {arch.generator_for(d): d for d in ("AtoB", "BtoA")}
        files = [(deployment_path(out, gname, len(generators)),
                  deployment_bytes(gen, fmt, deployment_metadata(entry, gname, directions.get(gname), gen)))
                 for gname, gen in generators.items()]
    todo = [(path, data) for path, data in files if not _holds(path, data)]
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
    return [path for path, _ in files]


def deployment_path(out: Path, gname: str, count: int) -> Path:
    """OUT for a task's only generator; OUT_G_A.pt and OUT_G_B.pt (say) for each of two."""
    return out if count == 1 else out.with_name(f"{out.stem}_{gname}{out.suffix}")


def downsampling(gen: torch.nn.Module) -> int:
    """The generator's total downsampling: image sides must be multiples of it."""
    strides = [m.stride[0] for m in gen.modules() if isinstance(m, torch.nn.Conv2d)]
    return math.prod(s for s in strides if s > 1)


def deployment_metadata(entry: dict[str, Any], gname: str, direction: str | None,
                        gen: torch.nn.Module) -> dict[str, str]:
    """What a TorchScript or ONNX file says about itself (string values, as ONNX metadata_props)."""
    return {"task": entry["name"], "arch": entry["arch"], "generator": gname, "direction": direction or "",
            "size": str(entry["options"]["size"]), "size_multiple": str(downsampling(gen)),
            "input": "float32 (N, 3, H, W) RGB, pixel / 127.5 - 1 (range [-1, 1])",
            "output": "float32 (N, 3, H, W) RGB in [-1, 1]; pixel = (output + 1) * 127.5",
            "normalization": "[-1, 1]"}


def deployment_bytes(gen: torch.nn.Module, fmt: str, meta: dict[str, str]) -> bytes:
    """The generator traced at its training size as TorchScript (metadata in the extra file
    pbgan.json) or ONNX (metadata_props), with batch, height and width left free."""
    size, multiple = int(meta["size"]), int(meta["size_multiple"])
    first = next(m for m in gen.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))
    example = torch.rand(1, first.in_channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter notes speak of torch internals, not of the file
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(gen, example), buffer, _extra_files={"pbgan.json": json.dumps(meta)})
            return buffer.getvalue()
        axes = {0: "batch", 2: f"height_{multiple}k", 3: f"width_{multiple}k"}
        torch.onnx.export(gen, (example,), buffer, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": axes, "output": axes}, dynamo=False)
    import onnx

    model = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    return model.SerializeToString()


def reference_loader(entry: dict[str, Any], plugins) -> str | None:
    """How the reference code builds the network that loads the exported .pth (pix2pix and CycleGAN)."""
    o = plugins.architectures.get(entry["arch"]).generator_options(entry["options"])
    if entry["arch"] == "pix2pix":
        dropout = not o["no_dropout"]
        depth = int(math.log2(int(o["netG"][len("unet_"):])))
        network = f"UnetGenerator(input_nc=3, output_nc=3, num_downs={depth}, ngf={o['ngf']}, " \
                  f"norm_layer=get_norm_layer('{o['norm']}'), use_dropout={dropout})"
    elif entry["arch"] == "cyclegan":
        dropout = o["dropout"]
        network = f"ResnetGenerator(input_nc=3, output_nc=3, ngf={o['ngf']}, " \
                  f"norm_layer=get_norm_layer('{o['norm']}'), use_dropout={dropout}, " \
                  f"n_blocks={o['netG'][len('resnet_'):-len('blocks')]})"
    else:
        return None
    model, size = "pix2pix" if entry["arch"] == "pix2pix" else "cycle_gan", entry["options"]["size"]
    flags = (f"--model {model} --netG {o['netG']} --ngf {o['ngf']} --norm {o['norm']}"
             f"{'' if dropout else ' --no_dropout'} --direction {entry['direction']} --load_size {size} "
             f"--crop_size {size}")
    return f"the reference networks.{network}, as test.py builds it with {flags}"


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
    state = load_weights_only(path, "checkpoint")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise PbganError(f"{path} is not a plain state dict of tensors (like latest_net_G.pth)")
    return {re.sub(r"^module\.", "", k): v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def drop_instance_statistics(state: dict[str, torch.Tensor], norm: str) -> tuple[dict[str, torch.Tensor], int]:
    """Instance norm here (as in the reference) tracks no running statistics; some checkpoints carry
    them anyway (old PyTorch, some forks). Returns the state without them and how many were dropped."""
    if norm == "batch":
        return state, 0
    kept = {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var"))}
    return kept, len(state) - len(kept)


def infer_unet(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """netG depth, ngf and norm of a reference UnetGenerator from its keys and shapes."""
    first = state.get("model.model.0.weight")
    if first is None or first.dim() != 4:
        raise PbganError(f"{path} is not a pix2pix U-Net generator (no model.model.0.weight); "
                         "import it with the --arch it was trained with (pix2pix or cyclegan)")
    depth = max(k.split(".").count("model") for k in state) - 1
    norm_weights = [k for k, v in state.items() if k.endswith(".weight") and v.dim() == 1]
    if norm_weights:
        norm = "batch"
    elif "model.model.1.model.1.bias" in state:
        norm = "instance"
    else:
        norm = "none"
    return {"netG": f"unet_{2 ** depth}", "ngf": int(first.shape[0]), "norm": norm, "in": int(first.shape[1])}


def infer_resnet(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """Blocks, ngf, norm and dropout of a reference ResnetGenerator from its keys and shapes."""
    first = state.get("model.1.weight")
    if first is None or first.dim() != 4 or first.shape[-1] != 7:
        raise PbganError(f"{path} is not a CycleGAN ResNet generator (no 7x7 model.1.weight); "
                         "import it with the --arch it was trained with (pix2pix or cyclegan)")
    blocks = {k.split(".")[1] for k in state if ".conv_block." in k}
    if len(blocks) not in (6, 9):
        raise PbganError(f"{path} has {len(blocks)} ResNet blocks; pbgan builds resnet_6blocks and resnet_9blocks")
    norm = "batch" if "model.2.weight" in state else "instance" if "model.1.bias" in state else "none"
    dropout = any(".conv_block.6.weight" in k for k in state)  # dropout shifts the second conv from 5 to 6
    return {"netG": f"resnet_{len(blocks)}blocks", "ngf": int(first.shape[0]), "norm": norm,
            "dropout": dropout, "in": int(first.shape[1])}


def reference_checkpoints(arch_name: str, paths: list[Path]) -> dict[str, Path]:
    """Generator name -> checkpoint: a file (pix2pix), a pair (cyclegan: G_A and G_B, told apart by
    their names), or a folder holding the reference's latest_net_G*.pth files."""
    names = ("G_A", "G_B") if arch_name == "cyclegan" else ("G",)
    if len(paths) == 1 and Path(paths[0]).is_dir():
        folder = Path(paths[0])
        found = {g: folder / reference_file(g) for g in names}
        missing = [p.name for p in found.values() if not p.is_file()]
        if missing:
            raise PbganError(f"{folder} has no {' or '.join(missing)}; give the reference checkpoint files")
        return found
    if arch_name != "cyclegan":
        if len(paths) != 1:
            raise UsageError(f"--arch {arch_name} takes one checkpoint (latest_net_G.pth), got {len(paths)}")
        return {"G": Path(paths[0])}
    by_name = {g: [Path(p) for p in paths if re.search(rf"(^|[^A-Za-z]){g}([^A-Za-z]|$)", Path(p).stem)]
               for g in names}
    if len(paths) != 2 or any(len(found) != 1 for found in by_name.values()):
        raise UsageError("--arch cyclegan takes two checkpoints, the A -> B generator and the B -> A one, named as "
                         "the reference names them (latest_net_G_A.pth, latest_net_G_B.pth), or their folder")
    return {g: found[0] for g, found in by_name.items()}


def _not_empty(store: ModelStore) -> PbganError:
    return PbganError(f"{store.root} has tasks already; an import starts a new model: give an empty --model-dir")


def import_reference(plugins, checkpoints: list[Path], arch_name: str, task: str, model_dir: Path, data: Path,
                     direction: str | None, size: int | None, eval_images: int) -> dict[str, Any]:
    from pbgan_core.engine import (TrainRequest, count_parameters, data_paths, generator_signature, split_task,
                                   store_task, task_options)

    check_task_name(task)
    if arch_name not in ("pix2pix", "cyclegan"):
        raise UsageError(f"--arch {arch_name}: only pix2pix (U-Net) and cyclegan (ResNet) checkpoints can be imported")
    if direction is None:
        if arch_name == "pix2pix":
            raise UsageError("give --direction AtoB or BtoA: which half of the A|B files is the generator's input "
                             "cannot be told from the data (facades and the edges2shoes here are BtoA)")
        direction = "AtoB"  # both CycleGAN generators are imported; AtoB picks G_A as the task's own
    if direction not in ("AtoB", "BtoA"):
        raise UsageError(f"--direction must be AtoB or BtoA, got {direction!r}")
    store = ModelStore(model_dir)
    if store.tasks:  # an early answer; asked again under the lock
        raise _not_empty(store)
    files = reference_checkpoints(arch_name, [Path(p) for p in checkpoints])
    infer = infer_unet if arch_name == "pix2pix" else infer_resnet
    states, found, dropped = {}, {}, 0
    for gname, path in files.items():
        state = read_reference_checkpoint(path)
        found[gname] = infer(state, path)
        states[gname], n = drop_instance_statistics(state, found[gname]["norm"])
        dropped += n
        if found[gname]["in"] != 3:
            raise PbganError(f"{path} takes {found[gname]['in']} input channels; pbgan translates RGB (3)")
    shapes = {tuple((k, v) for k, v in f.items()) for f in found.values()}
    if len(shapes) > 1:
        raise PbganError(f"{' and '.join(str(p) for p in files.values())} are different generators "
                         f"({' / '.join(str(f) for f in found.values())}); give the two of one CycleGAN model")
    shape = next(iter(found.values()))
    default_size = int(shape["netG"][len("unet_"):]) if arch_name == "pix2pix" else \
        (256 if shape["netG"] == "resnet_9blocks" else 128)
    extra = {k: v for k, v in shape.items() if k != "in"} | {"eval_images": eval_images}
    if arch_name == "pix2pix":
        extra["no_dropout"] = False  # the U-Net's dropout layers have no weights: keep the reference's
    req = TrainRequest(arch=arch_name, task=task, data=data, model_dir=model_dir, direction=direction,
                       size=size or default_size, extra=extra)
    opts = task_options(req, plugins)
    arch, factorizer = plugins.architectures.get(arch_name), plugins.factorizers.get(req.factorizer)
    plugins.datasets.get(opts["dataset"]).build(Path(data), "test", opts, train=False)  # fail before storing
    with store.transaction():
        if store.tasks:
            raise _not_empty(store)
        generators = arch.build_generators(opts)
        for gname, gen in generators.items():
            try:
                gen.load_state_dict(states[gname], strict=True)
            except RuntimeError as exc:
                lines = str(exc).splitlines()
                first = (lines[1] if len(lines) > 1 else lines[0] if lines else "mismatch").strip()
                raise PbganError(f"{files[gname]} does not fit a {shape['netG']} generator with ngf {shape['ngf']} "
                                 f"({first[:200]})") from None
        signature, standalone = generator_signature(generators), count_parameters(generators)
        for gen in generators.values():
            factorizer.wrap(gen, {}, opts)  # empty bank: every filter is free
        task_tensors, new_filters, stored = split_task(factorizer, generators)
        note = (f"dropped {dropped} running statistics of instance-norm layers, which track none (as the "
                "reference loader does)") if dropped else ""
        entry = {
            "name": task, "arch": arch_name, "factorizer": req.factorizer, "dataset": opts["dataset"],
            **data_paths(Path(data), store.root), "direction": direction, "options": {k: v for k, v in opts.items()
                                                                   if isinstance(v, (str, int, float, bool))},
            "signature": signature,
            "params": {"stored": stored, "standalone": standalone, "bank_before": 0,
                       "bank_added": sum(t.numel() for t in new_filters.values())},
            "train": {"steps": 0, "imported_from": {g: str(p) for g, p in files.items()},
                      **({"import_note": note} if note else {})},
        }
        store_task(store, plugins, entry, task_tensors, new_filters, store.load_bank().fingerprint())
    return store.task(task)


@hookimpl
def register_commands(cli):
    from pbgan_core.console import console
    from pbgan_core.plugins import get_plugins

    model_dir_option = typer.Option(None, "--model-dir", envvar="PBGAN_MODEL_DIR",
                                    help="Lifelong model directory [default: ./pbgan-model]")

    @cli.command("export")
    def export_cmd(out: Path = typer.Argument(..., help="state-dict: a folder that gets the reference's files "
                                              "(latest_net_G.pth; CycleGAN: latest_net_G_A.pth and "
                                              "latest_net_G_B.pth) and .safetensors twins; torchscript or "
                                              "onnx: the output file (CycleGAN: OUT_G_A and OUT_G_B, e.g. "
                                              "h2z_G_A.onnx for h2z.onnx)"),
                   task: str = typer.Option(..., "--task", help="Which task's generator(s) to export"),
                   fmt: str = typer.Option("state-dict", "--format", help="state-dict, torchscript or onnx "
                                           "(CycleGAN: a file per generator, OUT_G_A and OUT_G_B)"),
                   force: bool = typer.Option(False, "--force", help="Replace existing output files"),
                   model_dir: Optional[Path] = model_dir_option) -> None:
        """Write a task's standalone generator(s) for use without pbgan; state dicts load into the
        reference code by its own file names.

        Example: pbgan export --task facades checkpoints/facades_pix2pix
        """
        store = ModelStore(model_dir or default_model_dir())
        if not store.exists:
            raise PbganError(f"no pbgan model in {store.root}; train a task first or pass --model-dir")
        plugins = get_plugins()
        for path in export(store, plugins, task, fmt, out, force):
            console.print(f"wrote {path}", markup=False)
        loader = reference_loader(store.task(task), plugins) if fmt == "state-dict" else None
        if loader:
            console.print(f"load it into {loader}", markup=False, soft_wrap=True)

    @cli.command("import")
    def import_cmd(checkpoints: list[Path] = typer.Argument(..., help="Reference generator checkpoint(s): "
                                                            "latest_net_G.pth (pix2pix), latest_net_G_A.pth and "
                                                            "latest_net_G_B.pth (cyclegan), or their folder"),
                   arch: str = typer.Option(..., "--arch", help="Architecture of the checkpoint: pix2pix or cyclegan"),
                   task: str = typer.Option(..., "--task", help="Name of the task it becomes"),
                   data: Path = typer.Option(..., "--data", help="The task's dataset folder (for evaluation)"),
                   direction: Optional[str] = typer.Option(None, "--direction", help="AtoB or BtoA, as the model "
                                                           "was trained (required for pix2pix; cyclegan: the task's "
                                                           "own direction, default AtoB = G_A)"),
                   size: Optional[int] = typer.Option(None, "--size", help="Image size [default: 2**depth of "
                                                      "the U-Net, e.g. 256 for unet_256; cyclegan: 256 for 9 "
                                                      "blocks, 128 for 6]"),
                   eval_images: int = typer.Option(32, "--eval-images", help="Test images for the metrics"),
                   model_dir: Optional[Path] = model_dir_option) -> None:
        """Start a model whose first task is a reference pix2pix or CycleGAN generator.

        Example: pbgan import --arch pix2pix --task facades --direction BtoA --data ../shared/data/facades
        latest_net_G.pth
        """
        root = model_dir or default_model_dir()
        entry = import_reference(get_plugins(), checkpoints, arch, task, root, data, direction, size, eval_images)
        o = entry["options"]
        note = entry["train"].get("import_note")
        console.print(f"imported {', '.join(entry['train']['imported_from'].values())} as task {task!r} "
                      f"({o['netG']}, ngf {o['ngf']}, {o['norm']} norm, {entry['direction']}) in {root}"
                      f"{'; ' + note if note else ''}; metrics {entry.get('metrics', {})}", markup=False)
