"""Three tasks on real data: earlier tasks stay byte-identical, bank and files are guarded."""
import json
import shutil

import pytest
import torch

from pbgan_core.engine import load_generators
from pbgan_core.errors import PbganError
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore
from pbgan_plugins.piggyback import PiggybackFactorizer

from .conftest import EDGES2SHOES, FACADES, TINY, needs_data, one_line_error

pytestmark = [needs_data(FACADES), needs_data(EDGES2SHOES)]
STEPS = ["--steps", "6"]


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def lifelong(tmp_path_factory):
    """facades -> edges2shoes -> derived grayscale, with outputs captured after each task."""
    from pbgan_core.cli import main

    root = tmp_path_factory.mktemp("lifelong")
    model = root / "model"
    snapshots = {}

    def train(task, *args):
        assert main(["train", "--arch", "pix2pix", "--task", task, "--model-dir", str(model), *STEPS, *TINY,
                     *args]) == 0
        snapshots[task] = {}

    train("facades", "--data", FACADES, "--direction", "BtoA")
    hashes = {}
    for t in ["facades"]:
        out = root / f"{t}-after-1"
        assert main(["generate", "--task", t, "--aligned", "--direction", "BtoA", "--model-dir", str(model),
                     str(EDGES2SHOES / "val"), str(out)]) == 0
        hashes[(t, 1)] = files(out)
    train("shoes", "--data", EDGES2SHOES, "--direction", "BtoA")
    out = root / "shoes-after-2"
    assert main(["generate", "--task", "shoes", "--aligned", "--model-dir", str(model),
                 str(EDGES2SHOES / "val"), str(out)]) == 0
    hashes[("shoes", 2)] = files(out)
    bank_before = files(model / "bank")
    tasks_before = files(model / "tasks")
    train("gray", "--data", FACADES, "--derive", "grayscale", "--half", "A")
    return {"model": model, "root": root, "hashes": hashes, "bank_before": bank_before,
            "tasks_before": tasks_before}


def test_earlier_tasks_are_byte_identical_after_later_tasks(lifelong, cli):
    model, root = lifelong["model"], lifelong["root"]
    for task, stage in [("facades", 1), ("shoes", 2)]:
        out = root / f"{task}-final"
        direction = ["--direction", "BtoA"]
        cli("generate", "--task", task, "--aligned", *direction, "--model-dir", model, EDGES2SHOES / "val", out)
        before = lifelong["hashes"][(task, stage)]
        assert before and files(out) == before, f"task {task} changed after later tasks"


def test_earlier_files_are_never_rewritten(lifelong):
    model = lifelong["model"]
    for name, data in lifelong["bank_before"].items():
        assert (model / "bank" / name).read_bytes() == data
    for name, data in lifelong["tasks_before"].items():
        assert (model / "tasks" / name).read_bytes() == data
    assert len(list((model / "tasks").iterdir())) == 3


def test_tasks_json_accounting_matches_the_formula(lifelong, cli):
    _, out, _ = cli("tasks", "--json", "--model-dir", lifelong["model"])
    report = json.loads(out)
    rows = report["tasks"]
    assert [r["name"] for r in rows] == ["facades", "shoes", "gray"]
    assert rows[0]["ratio_to_standalone"] == pytest.approx(1.0)
    # recount task 2 from the generator itself: free filters + coefficients + biases + norms
    store = ModelStore(lifelong["model"])
    entry, tensors, new_filters, bank = store.load_task("shoes")
    free = sum(t.numel() for t in new_filters.values())
    kept = sum(t.numel() for k, t in tensors.items() if not k.endswith(("running_mean", "running_var",
                                                                     "num_batches_tracked")))
    assert rows[1]["stored_parameters"] == free + kept
    # the default --budget holds however large the bank grows (more bank filters: fewer free ones)
    assert all(0.25 < r["ratio_to_standalone"] <= 0.3 for r in rows[1:])
    assert report["totals"]["stored_parameters"] == sum(r["stored_parameters"] for r in rows)
    manifest = json.loads((lifelong["model"] / "manifest.json").read_text())
    assert [list(s["metrics"]) for s in manifest["stages"]] == [["facades"], ["facades", "shoes"],
                                                               ["facades", "shoes", "gray"]]
    assert manifest["stages"][2]["metrics"]["facades"] == manifest["stages"][0]["metrics"]["facades"]


def test_materialized_equals_factorized(lifelong):
    store = ModelStore(lifelong["model"])
    plugins = get_plugins()
    entry, dense = load_generators(store, plugins, "shoes")
    _, tensors, new_filters, bank = store.load_task("shoes")
    arch = plugins.architectures.get("pix2pix")
    gen = arch.build_generators(entry["options"])["G"]
    fac = PiggybackFactorizer()
    fac.wrap(gen, bank.prefix(len(bank), "G"), entry["options"], initialize=False)
    gen.load_state_dict(fac.join({k[2:]: v for k, v in tensors.items()}, {k[2:]: v for k, v in new_filters.items()}))
    gen.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = gen(x), dense["G"](x)
    assert ((a - b).abs().max() / b.abs().max()) < 1e-5


def test_task_file_from_another_bank_is_refused(lifelong, tmp_path, cli):
    model = tmp_path / "other"
    shutil.copytree(lifelong["model"], model)
    # another first task: a different bank under the same later task files
    store = ModelStore(model)
    with store.transaction():
        first = store.tasks[0]
        tensors, meta = store.read_tensors(first["bank_file"], first["bank_sha256"])
        from safetensors.torch import save_file
        save_file({k: v + 1 for k, v in tensors.items()}, str(model / first["bank_file"]), metadata=meta)
        import hashlib
        first["bank_sha256"] = hashlib.sha256((model / first["bank_file"]).read_bytes()).hexdigest()
        store.save_manifest()
    _, _, err = cli("generate", "--task", "shoes", "--model-dir", model, FACADES / "test" / "1.jpg",
                    tmp_path / "o.png", expect=1)
    assert "another filter bank" in one_line_error(err)


def test_tampered_task_file_is_refused(lifelong, tmp_path, cli):
    model = tmp_path / "tampered"
    shutil.copytree(lifelong["model"], model)
    path = next((model / "tasks").glob("0002-*"))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    _, _, err = cli("generate", "--task", "shoes", "--model-dir", model, FACADES / "test" / "1.jpg",
                    tmp_path / "o.png", expect=1)
    assert "does not match the hash" in one_line_error(err)


def test_corrupt_safetensors_header_is_refused(lifelong, tmp_path):
    model = tmp_path / "corrupt"
    shutil.copytree(lifelong["model"], model)
    store = ModelStore(model)
    entry = store.task("facades")
    (model / entry["file"]).write_bytes(b"\xff" * 64)
    with pytest.raises(PbganError, match="not a valid safetensors file"):
        store.read_tensors(entry["file"], None)


def test_existing_task_name_is_refused(lifelong, cli):
    _, _, err = cli("train", "--arch", "pix2pix", "--task", "facades", "--data", FACADES, "--model-dir",
                    lifelong["model"], *STEPS, *TINY, expect=1)
    assert "exists already" in one_line_error(err)


def test_a_different_generator_is_refused(lifelong, tmp_path, cli):
    model = tmp_path / "m"
    shutil.copytree(lifelong["model"], model)
    _, _, err = cli("train", "--arch", "pix2pix", "--task", "wide", "--data", FACADES, "--model-dir", model,
                    *STEPS, *TINY, "--ngf", "16", expect=1)
    assert "--ngf 16, but this model's generator (first task 'facades') has --ngf 8" in one_line_error(err)
