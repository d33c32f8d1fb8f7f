"""standalone, finetune, lowrank and mask factorizers: layers, storage, and forgetting."""
import copy
import json
import math

import pytest
import torch
from torch import nn

from pbgan_core.errors import PbganError
from pbgan_plugins.factorizers import FinetuneFactorizer, FreeConv, StandaloneFactorizer
from pbgan_plugins.lowrank import LowRankConv, LowRankFactorizer
from pbgan_plugins.mask import MaskConv, MaskFactorizer, pack_mask, unpack_mask

from .conftest import EDGES2SHOES, FACADES, needs_data, one_line_error

torch.manual_seed(0)


class Tiny(nn.Module):
    """A conv and a transposed conv with a residual sum, like the generators' blocks."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 4, 2, 1)
        self.norm = nn.BatchNorm2d(8)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1, padding_mode="reflect"))
        self.up = nn.ConvTranspose2d(8, 3, 4, 2, 1)

    def forward(self, x):
        h = self.norm(self.down(x))
        return torch.tanh(self.up(h + self.body(h)))


def first_task(factorizer):
    """A trained-looking first task: (its dense generator, the bank it commits)."""
    gen = factorizer.wrap(Tiny(), {}, {})
    assert all(isinstance(m, FreeConv) for m in (gen.down, gen.body[1], gen.up))
    _, bank = factorizer.split(gen)
    assert set(bank) == {"down", "body.1", "up"} and bank["up"].shape == (3, 8, 4, 4)  # filter-major
    return factorizer.materialize(gen).eval(), bank


def roundtrip(factorizer, gen, bank, opts):
    """Store a wrapped task and load it back the way the engine does for inference."""
    kept, added = factorizer.split(gen)
    fresh = factorizer.wrap(Tiny(), bank, opts, initialize=False)
    fresh.load_state_dict(factorizer.join(kept, added), strict=True)
    return factorizer.materialize(fresh).eval(), kept


@pytest.mark.parametrize("factorizer", [LowRankFactorizer(), MaskFactorizer()])
def test_later_task_starts_at_the_first_tasks_function(factorizer):
    dense, bank = first_task(factorizer)
    later = factorizer.wrap(copy.deepcopy(dense), bank, {}).eval()
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(later(x), dense(x), rtol=0, atol=1e-6)
    _, added = factorizer.split(later)
    assert added == {}  # later tasks commit nothing to the bank


def test_lowrank_update_is_rank_r_and_survives_store_and_materialize():
    factorizer = LowRankFactorizer()
    dense, bank = first_task(factorizer)
    gen = factorizer.wrap(copy.deepcopy(dense), bank, {"rank": 2}).eval()
    assert isinstance(gen.up, LowRankConv) and gen.down.rank == 2 and gen.up.rank == 2
    assert gen.down.B.abs().max() == 0 and gen.down.A.abs().max() > 0  # the LoRA start: B = 0, A not
    with torch.no_grad():
        for m in (gen.down, gen.body[1], gen.up):
            m.B.normal_()
    delta = (gen.down.filters() - bank["down"]).flatten(1)
    assert torch.linalg.matrix_rank(delta) == 2
    loaded, kept = roundtrip(factorizer, gen, bank, {"rank": 2})
    assert {"down.A", "down.B", "down.bias", "norm.weight"} <= set(kept) and "down.free" not in kept
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x), gen(x), rtol=1e-5, atol=1e-6)
    assert type(loaded.down) is nn.Conv2d and type(loaded.up) is nn.ConvTranspose2d
    # A + B + biases + norm affine of the later task, nothing from the bank
    expected = sum(p.numel() for n, p in gen.named_parameters())
    assert factorizer.stored_parameters(gen) == expected < sum(t.numel() for t in bank.values())


def test_lowrank_warm_start_from_a_later_task_reproduces_its_update():
    factorizer = LowRankFactorizer()
    dense, bank = first_task(factorizer)
    task2 = factorizer.wrap(copy.deepcopy(dense), bank, {"rank": 3})
    with torch.no_grad():
        for m in (task2.down, task2.body[1], task2.up):
            m.B.normal_()
    task2_dense = factorizer.materialize(copy.deepcopy(task2)).eval()
    task3 = factorizer.wrap(copy.deepcopy(task2_dense), bank, {"rank": 3}).eval()
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(task3(x), task2_dense(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("count", [1, 7, 8, 9, 123])
def test_mask_packs_to_bits_and_back(count):
    mask = torch.rand(count) > 0.5
    bits = pack_mask(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == math.ceil(count / 8)
    assert torch.equal(unpack_mask(bits, torch.tensor([count])).bool(), mask)


def test_mask_learns_through_the_threshold_and_stores_bits_only():
    factorizer = MaskFactorizer()
    dense, bank = first_task(factorizer)
    gen = factorizer.wrap(copy.deepcopy(dense), bank, {"mask_threshold": 5e-3}).train()
    assert isinstance(gen.up, MaskConv) and torch.all(gen.down.scores == 1e-2) and gen.down.mask().all()
    x = torch.rand(2, 3, 16, 16)
    gen(x).square().mean().backward()
    assert gen.down.scores.grad.abs().sum() > 0  # straight-through: the hard threshold passes gradients
    with torch.no_grad():  # drop about half the weights of every layer
        for m in (gen.down, gen.body[1], gen.up):
            m.scores.copy_(torch.where(torch.rand_like(m.scores) > 0.5, 1e-2, 0.0))
    gen.eval()
    kept_mask = gen.down.mask().bool()
    torch.testing.assert_close(gen.down.filters(), bank["down"] * kept_mask)
    loaded, kept = roundtrip(factorizer, gen, bank, {})
    assert not any(k.endswith(".scores") for k in kept)
    assert kept["down.mask_bits"].dtype == torch.uint8 and kept["down.mask_bits"].numel() == math.ceil(3 * 8 * 16 / 8)
    assert torch.equal(loaded.down.weight, bank["down"] * kept_mask)
    torch.testing.assert_close(loaded(x), gen(x), rtol=0, atol=1e-6)
    masks = sum(m.scores.numel() for m in (gen.down, gen.body[1], gen.up))
    others = sum(p.numel() for n, p in gen.named_parameters() if not n.endswith("scores"))
    assert factorizer.stored_parameters(gen) == others + sum(
        math.ceil(m.scores.numel() / 32) for m in (gen.down, gen.body[1], gen.up)) < others + masks


def test_damaged_mask_is_refused():
    with pytest.raises(PbganError, match="damaged"):
        unpack_mask(torch.zeros(3, dtype=torch.uint8), torch.tensor([8, 8]))


def test_standalone_and_finetune_store_the_plain_generator():
    for factorizer in (StandaloneFactorizer(), FinetuneFactorizer()):
        gen = factorizer.wrap(Tiny(), {}, {})
        assert type(gen.down) is nn.Conv2d
        kept, added = factorizer.split(gen)
        assert added == {} and kept.keys() == gen.state_dict().keys()
        assert factorizer.stored_parameters(gen) == sum(p.numel() for p in gen.parameters())
    assert StandaloneFactorizer.keeps_old_tasks and not FinetuneFactorizer.keeps_old_tasks


def test_a_bank_for_another_generator_is_refused():
    _, bank = first_task(LowRankFactorizer())
    bank["down"] = bank["down"][:, :2]
    with pytest.raises(PbganError, match="do not fit"):
        LowRankFactorizer().wrap(Tiny(), bank, {})
    with pytest.raises(PbganError, match="do not match the bank"):
        MaskFactorizer().wrap(Tiny(), {"other": bank["up"]}, {})


# --- three tasks through the CLI ------------------------------------------------------------
TINY = ["--size", "32", "--ngf", "8", "--ndf", "8", "--max-images", "16", "--eval-images", "4", "--device", "cpu",
        "--steps", "4"]
TASKS = [("facades", ["--data", FACADES, "--direction", "BtoA"]),
         ("shoes", ["--data", EDGES2SHOES, "--direction", "BtoA"]),
         ("gray", ["--data", FACADES, "--derive", "grayscale", "--half", "A"])]


def outputs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module", params=["standalone", "finetune", "lowrank", "mask"])
def three_tasks(request, tmp_path_factory):
    """Train three tasks with one factorizer; task 1's outputs after tasks 1 and 3."""
    from pbgan_core.cli import main

    if not (FACADES.exists() and EDGES2SHOES.exists()):
        pytest.skip("facades / edges2shoes data not available")
    method = request.param
    root = tmp_path_factory.mktemp(method)
    model = root / "model"
    inputs = root / "inputs"
    inputs.mkdir()
    for path in sorted((EDGES2SHOES / "val").iterdir())[:3]:
        (inputs / path.name).write_bytes(path.read_bytes())

    def generate(task, out):
        assert main(["generate", "--task", task, "--aligned", "--direction", "BtoA", "--model-dir", str(model),
                     str(inputs), str(out)]) == 0
        return outputs(out)

    snapshots = {}
    for i, (task, data) in enumerate(TASKS):
        extra = ["--rank", "4"] if method == "lowrank" else []
        assert main(["train", "--arch", "pix2pix", "--task", task, "--model-dir", str(model), "--factorizer",
                     method, *TINY, *data, *extra]) == 0
        if i == 0:
            snapshots["facades-1"] = generate("facades", root / "facades-1")
            task1_files = {p.name: p.read_bytes() for p in sorted((model / "tasks").iterdir())}
    snapshots["facades-3"] = generate("facades", root / "facades-3")
    snapshots["gray-3"] = generate("gray", root / "gray-3")
    return {"method": method, "model": model, "snapshots": snapshots, "task1_files": task1_files}


@needs_data(FACADES)
@needs_data(EDGES2SHOES)
def test_three_tasks_forget_only_with_finetune(three_tasks):
    shots = three_tasks["snapshots"]
    assert shots["facades-1"]
    if three_tasks["method"] == "finetune":
        assert shots["facades-3"] != shots["facades-1"]  # retrained: task 1 changed
        assert shots["facades-3"] == shots["gray-3"]  # ... and now runs the latest weights
    else:
        assert shots["facades-3"] == shots["facades-1"], "task 1 changed after later tasks"
    for name, data in three_tasks["task1_files"].items():
        assert (three_tasks["model"] / "tasks" / name).read_bytes() == data


@needs_data(FACADES)
@needs_data(EDGES2SHOES)
def test_three_tasks_accounting(three_tasks, cli):
    method, model = three_tasks["method"], three_tasks["model"]
    _, out, _ = cli("tasks", "--json", "--model-dir", model)
    rows = json.loads(out)["tasks"]
    assert [r["factorizer"] for r in rows] == [method] * 3
    ratios = [r["ratio_to_standalone"] for r in rows]
    manifest = json.loads((model / "manifest.json").read_text())
    bank_added = [t["params"]["bank_added"] for t in manifest["tasks"]]
    assert ratios[0] == pytest.approx(1.0)
    if method in ("standalone", "finetune"):
        assert ratios == [pytest.approx(1.0)] * 3 and bank_added == [0, 0, 0]
    else:
        assert bank_added[0] == rows[0]["stored_parameters"] - sum(
            t.numel() for k, t in _task_tensors(model, 1).items() if not k.endswith(_STATS))
        assert bank_added[1:] == [0, 0]
        assert 0 < ratios[1] == ratios[2] < 0.5  # later tasks cost the same: the bank never grows
        assert rows[1]["file_bytes"] < rows[0]["file_bytes"] / 2
    if method == "mask":
        tensors = _task_tensors(model, 2)
        assert any(k.endswith(".mask_bits") and t.dtype == torch.uint8 for k, t in tensors.items())
        assert not any(k.endswith(".scores") for k in tensors)


_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _task_tensors(model, index):
    from pbgan_core.store import ModelStore

    store = ModelStore(model)
    entry = store.tasks[index - 1]
    return store.read_tensors(entry["file"], entry["sha256"])[0]


@pytest.mark.parametrize("args, message", [(["--factorizer", "lowrank", "--rank", "0"], "--rank must be"),
                                           (["--factorizer", "mask", "--mask-threshold", "2"], "--mask-threshold")])
@needs_data(FACADES)
def test_bad_factorizer_options_are_one_line_errors(args, message, tmp_path, cli):
    model = tmp_path / "m"
    _, _, err = cli("train", "--arch", "pix2pix", "--task", "one", "--data", FACADES, "--model-dir", model,
                    *TINY, *args, expect=2)
    assert message in one_line_error(err)
    assert not (model / "manifest.json").exists()


@needs_data(FACADES)
@needs_data(EDGES2SHOES)
def test_three_tasks_run_unmaterialized_as_materialized(three_tasks):
    from pbgan_core.engine import load_generators
    from pbgan_core.layers import FilterConv
    from pbgan_core.plugins import get_plugins
    from pbgan_core.store import ModelStore

    store, x = ModelStore(three_tasks["model"]), torch.rand(2, 3, 32, 32) * 2 - 1
    for task in ("facades", "gray"):
        _, lazy = load_generators(store, get_plugins(), task, materialize=False)
        _, dense = load_generators(store, get_plugins(), task)
        assert not any(t.is_meta for t in (*lazy["G"].parameters(), *lazy["G"].buffers()))
        if three_tasks["method"] in ("lowrank", "mask") and task == "gray":
            assert any(isinstance(m, FilterConv) for m in lazy["G"].modules())
        with torch.no_grad():
            assert torch.allclose(lazy["G"](x), dense["G"](x), rtol=1e-5, atol=1e-5)
