"""CycleGAN on unpaired data: both generators lifelong, directions, cycle metrics, parameter counts."""
import random

import pytest
import torch
import torch.nn.functional as F

from pbgan_core import engine
from pbgan_core.engine import TrainRequest, load_generators, task_options
from pbgan_core.generate import load_condition
from pbgan_core.images import list_images, read_image, write_image
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore

from .conftest import EDGES2SHOES, needs_data

pytestmark = needs_data(EDGES2SHOES)
SMALL = ["--size", "32", "--netG", "resnet_6blocks", "--ngf", "8", "--ndf", "8", "--eval-images", "3",
         "--device", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many small convolutions: on a busy machine a second intra-op thread makes them ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def make_unpaired(root, swap=False, train=16, test=3, size=64):
    """trainA/testA from left halves of some edges2shoes files, trainB/testB from right halves of
    other files, shuffled: no A image has its B partner. `swap` makes photos A and edges B."""
    paths = list_images(EDGES2SHOES / "train")
    random.Random(1 if swap else 0).shuffle(paths)
    n = train + test
    halves = {"A": paths[:n], "B": paths[n:2 * n]}
    for side, chosen in halves.items():
        take_left = (side == "A") != swap
        for i, path in enumerate(chosen):
            image = read_image(path)
            h = image.shape[-2]
            half = image[..., :h] if take_left else image[..., h:]
            half = F.interpolate(half[None], (size, size), mode="bilinear", antialias=True, align_corners=False)[0]
            split = "train" if i < train else "test"
            write_image(half, root / f"{split}{side}" / f"{path.stem}.png")
    return root


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory):
    return make_unpaired(tmp_path_factory.mktemp("edges_shoes"))


def test_unpaired_data_has_no_pairs(unpaired):
    a = {p.stem for p in (unpaired / "trainA").iterdir()} | {p.stem for p in (unpaired / "testA").iterdir()}
    b = {p.stem for p in (unpaired / "trainB").iterdir()} | {p.stem for p in (unpaired / "testB").iterdir()}
    assert len(a) == len(b) == 19 and not a & b


@pytest.fixture(scope="module")
def lifelong(unpaired, tmp_path_factory):
    """Two CycleGAN tasks; both directions of task 1 generated before and after task 2."""
    from pbgan_core.cli import main

    root = tmp_path_factory.mktemp("cyclegan")
    model = root / "model"
    second = make_unpaired(root / "shoes_edges", swap=True)

    def generate(task, direction, source, out):
        assert main(["generate", "--task", task, "--direction", direction, "--model-dir", str(model),
                     str(source), str(out)]) == 0
        return files(out)

    def train(task, data, *args):
        assert main(["train", "--arch", "cyclegan", "--task", task, "--data", str(data), "--model-dir", str(model),
                     "--steps", "4", *SMALL, *args]) == 0

    train("edges2shoes", unpaired)
    before = {d: generate("edges2shoes", d, unpaired / f"test{d[0]}", root / f"before-{d}") for d in ("AtoB", "BtoA")}
    bank_before = files(model / "bank")
    train("shoes2edges", second, "--direction", "BtoA", "--seed", "3")
    after = {d: generate("edges2shoes", d, unpaired / f"test{d[0]}", root / f"after-{d}") for d in ("AtoB", "BtoA")}
    return {"model": model, "root": root, "data": unpaired, "before": before, "after": after,
            "bank_before": bank_before}


def test_both_directions_of_task_1_are_byte_identical_after_task_2(lifelong):
    for direction in ("AtoB", "BtoA"):
        assert len(lifelong["before"][direction]) == 3
        assert lifelong["after"][direction] == lifelong["before"][direction], direction


def test_both_generators_are_factorized_against_the_bank(lifelong):
    store = ModelStore(lifelong["model"])
    bank = store.load_bank()
    assert len(bank) == 2
    for segment in bank.segments:
        owners = {key.split("/")[0] for key in segment.tensors}
        assert owners == {"G_A", "G_B"}
    first, second = store.tasks
    assert first["params"]["standalone"] == second["params"]["standalone"]
    assert 0.2 < second["params"]["stored"] / second["params"]["standalone"] < 0.5
    for name, data in lifelong["bank_before"].items():
        assert (lifelong["model"] / "bank" / name).read_bytes() == data
    losses = second["train"]["final_losses"]
    assert set(losses) == {"G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B"}


def test_direction_picks_the_generator(lifelong, cli):
    arch = get_plugins().architectures.get("cyclegan")
    assert (arch.generator_for("AtoB"), arch.generator_for("BtoA")) == ("G_A", "G_B")
    root, model, image = lifelong["root"], lifelong["model"], next((lifelong["data"] / "testA").iterdir())
    outs = {}
    for direction in ("AtoB", "BtoA"):
        outs[direction] = root / f"one-{direction}.png"
        cli("generate", "--task", "edges2shoes", "--direction", direction, "--model-dir", model, image,
            outs[direction])
    assert outs["AtoB"].read_bytes() != outs["BtoA"].read_bytes()
    # the task's own direction (AtoB) is the default, and it is G_A
    cli("generate", "--task", "edges2shoes", "--model-dir", model, image, root / "one-default.png")
    assert (root / "one-default.png").read_bytes() == outs["AtoB"].read_bytes()
    _, gens = load_generators(ModelStore(model), get_plugins(), "edges2shoes")
    x = load_condition(image, 32, "AtoB", aligned=False)[None]
    with torch.no_grad():
        write_image(gens["G_A"](x)[0], root / "direct.png")
    assert (root / "direct.png").read_bytes() == outs["AtoB"].read_bytes()


def test_unpaired_metrics_score_the_cycle(lifelong):
    """For unpaired data the test "target" is unrelated; the metrics compare x with G_B(G_A(x))."""
    store, plugins = ModelStore(lifelong["model"]), get_plugins()
    for name, (forward, back, side) in {"edges2shoes": ("G_A", "G_B", "A"),
                                        "shoes2edges": ("G_B", "G_A", "B")}.items():
        entry, gens = load_generators(store, plugins, name)
        data = engine.eval_split(entry, plugins)
        real = torch.stack([data[i][side] for i in range(3)])
        with torch.no_grad():
            l1 = (gens[back](gens[forward](real)) - real).abs().mean().item() / 2  # the metric's [0, 1] scale
        assert entry["metrics"]["l1"] == pytest.approx(l1, abs=1e-5)
    stages = store.manifest["stages"]
    assert stages[1]["metrics"]["edges2shoes"] == stages[0]["metrics"]["edges2shoes"]


def test_cycle_reconstruction_improves_with_training(unpaired):
    plugins = get_plugins()
    arch = plugins.architectures.get("cyclegan")
    request = TrainRequest(arch="cyclegan", task="t", data=unpaired, model_dir=unpaired / "unused", size=32,
                           extra={"netG": "resnet_6blocks", "ngf": 8, "ndf": 8})
    opts = task_options(request, plugins)
    torch.manual_seed(0)
    train = plugins.datasets.get("unaligned").build(unpaired, "train", opts, train=True)
    test = plugins.datasets.get("unaligned").build(unpaired, "test", opts, train=False)
    fixed = {side: torch.stack([test[i][side] for i in range(3)]) for side in "AB"}
    gens = arch.build_generators(opts)
    trainer = arch.build_trainer(gens, opts, torch.device("cpu"), total_steps=60)

    @torch.no_grad()
    def cycle_error():
        a, b = fixed["A"], fixed["B"]
        return ((gens["G_B"](gens["G_A"](a)) - a).abs().mean() + (gens["G_A"](gens["G_B"](b)) - b).abs().mean()) / 2

    start = cycle_error()
    loader = torch.utils.data.DataLoader(train, batch_size=1, shuffle=True, generator=torch.Generator().manual_seed(0))
    steps = 0
    while steps < 60:
        for batch in loader:
            losses = trainer.step(batch)
            steps += 1
            if steps == 60:
                break
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert cycle_error() < 0.6 * start


def test_parameter_counts():
    arch = get_plugins().architectures.get("cyclegan")
    counts = {}
    for netG in ("resnet_9blocks", "resnet_6blocks"):
        opts = {"netG": netG, "ngf": 64, "norm": "instance", "dropout": False, "init_type": "normal", "size": 256}
        with torch.device("meta"):
            gens = arch.build_generators(opts)
        assert set(gens) == {"G_A", "G_B"}
        counts[netG] = {name: sum(p.numel() for p in g.parameters()) for name, g in gens.items()}
    assert counts["resnet_9blocks"] == {"G_A": 11_378_179, "G_B": 11_378_179}
    assert counts["resnet_6blocks"] == {"G_A": 7_837_699, "G_B": 7_837_699}


def test_defaults_follow_the_reference():
    arch = get_plugins().architectures.get("cyclegan")
    opts = {o.key: o.default for o in arch.options}
    assert (arch.paired, arch.default_dataset) == (False, "unaligned")
    assert opts["netG"] == "resnet_9blocks" and opts["norm"] == "instance" and opts["dropout"] is False
    assert (opts["gan_mode"], opts["lambda_a"], opts["lambda_b"], opts["lambda_identity"]) == ("lsgan", 10, 10, 0.5)
    assert (opts["pool_size"], opts["lr"], opts["beta1"], opts["ngf"], opts["ndf"]) == (50, 2e-4, 0.5, 64, 64)


def test_a_size_the_resnet_cannot_restore_is_refused(unpaired, tmp_path, cli):
    _, _, err = cli("train", "--arch", "cyclegan", "--task", "odd", "--data", unpaired, "--model-dir",
                    tmp_path / "m", "--steps", "1", *SMALL, "--size", "30", expect=1)
    assert "multiple of 4" in err


def test_trainer_state_resumes_exactly(unpaired):
    """Discriminators, optimizers, schedules, image pools and their random choices all round-trip."""
    from pbgan_core.checkpoint import flatten_state, unflatten_state

    plugins = get_plugins()
    arch = plugins.architectures.get("cyclegan")
    request = TrainRequest(arch="cyclegan", task="t", data=unpaired, model_dir=unpaired / "unused", size=32,
                           extra={"netG": "resnet_6blocks", "ngf": 4, "ndf": 4, "pool_size": 2})
    opts = task_options(request, plugins)
    data = plugins.datasets.get("unaligned").build(unpaired, "train", opts, train=False)
    batches = [{side: data[i][side][None] for side in "AB"} for i in range(8)]

    def fresh():
        torch.manual_seed(0)
        gens = arch.build_generators(opts)
        return gens, arch.build_trainer(gens, opts, torch.device("cpu"), total_steps=8)

    gens, trainer = fresh()
    for batch in batches[:4]:
        trainer.step(batch)
    saved_gens = {name: {k: v.clone() for k, v in g.state_dict().items()} for name, g in gens.items()}
    saved = unflatten_state(*flatten_state(trainer.state_dict()))
    for batch in batches[4:]:
        trainer.step(batch)

    resumed_gens, resumed = fresh()
    for name, g in resumed_gens.items():
        g.load_state_dict(saved_gens[name])
    resumed.load_state_dict(saved)
    for batch in batches[4:]:
        resumed.step(batch)
    for name, g in gens.items():
        for (key, a), b in zip(g.state_dict().items(), resumed_gens[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key}"
    assert len(resumed.pool_A) == 2 and torch.equal(torch.cat(resumed.pool_A.images), torch.cat(trainer.pool_A.images))
