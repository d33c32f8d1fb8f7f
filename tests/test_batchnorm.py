"""After training, BatchNorm running statistics are recomputed over training images (--bn-images)."""
from pathlib import Path

import pytest
import torch
from torch import nn

from pbgan_core.batchnorm import spread_indices
from pbgan_core.engine import load_generators
from pbgan_core.plugins import get_plugins
from pbgan_core.protocol import batch_statistics
from pbgan_core.store import ModelStore

from .conftest import EDGES2SHOES, FACADES, TINY, needs_data

pytestmark = needs_data(FACADES)


def train(cli, model_dir, *extra):
    cli("train", "--arch", "pix2pix", "--task", "labels", "--data", FACADES, "--direction", "BtoA",
        "--model-dir", model_dir, "--steps", "3", "--seed", "2", *TINY, *extra)
    return load_generators(ModelStore(model_dir), get_plugins(), "labels")


def first_batchnorm(gen: nn.Module) -> nn.BatchNorm2d:
    return next(m for m in gen.modules() if isinstance(m, nn.BatchNorm2d))


def batch_statistics_of(gen: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over `batches` of the first BatchNorm's input statistics, each batch normalized as in
    training (its own statistics): the mean and the unbiased variance per channel."""
    seen = []
    hook = first_batchnorm(gen).register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad(), batch_statistics(gen):
        for batch in batches:
            gen(batch)
    hook.remove()
    return (torch.stack([x.mean(dim=(0, 2, 3)) for x in seen]).mean(0),
            torch.stack([x.var(dim=(0, 2, 3)) for x in seen]).mean(0))


def test_spread_indices_cover_the_whole_set():
    assert spread_indices(10, 3) == [0, 3, 6]
    assert spread_indices(2, 5) == [0, 1]
    assert spread_indices(5, 0) == []


@pytest.mark.parametrize("batch", [1, 2])
def test_stored_statistics_are_the_mean_over_training_images(cli, tmp_path, batch):
    """Each batch normalized as in training (its own statistics), the statistics averaged over batches."""
    entry, generators = train(cli, tmp_path / "m", "--bn-images", "6", "--batch-size", str(batch))
    gen = generators["G"]
    norm = first_batchnorm(gen)
    plugins = get_plugins()
    data = plugins.datasets.get(entry["dataset"]).build(Path(entry["data"]), "train", entry["options"], train=False)
    indices = spread_indices(len(data), 6)
    assert len(data) == 24 and len(indices) == 6
    means, variances = batch_statistics_of(gen, (torch.stack([data[k]["B"] for k in indices[start:start + batch]])
                                                 for start in range(0, len(indices), batch)))
    torch.testing.assert_close(norm.running_mean, means, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, variances, rtol=1e-4, atol=1e-5)
    assert entry["options"]["bn_images"] == 6


def test_bn_images_zero_keeps_the_moving_averages_and_the_same_weights(cli, tmp_path):
    _, recomputed = train(cli, tmp_path / "a", "--bn-images", "6")
    _, kept = train(cli, tmp_path / "b", "--bn-images", "0")
    a, b = recomputed["G"].state_dict(), kept["G"].state_dict()
    stats = [k for k in a if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(torch.equal(a[k], b[k]) for k in a if k not in stats)
    assert not torch.allclose(a[stats[0]], b[stats[0]])


@needs_data(EDGES2SHOES)
def test_each_cyclegan_generator_gets_the_statistics_of_its_own_domain(cli, tmp_path):
    from .test_cyclegan import make_unpaired

    data_dir = make_unpaired(tmp_path / "unpaired", train=6, test=2, size=32)
    cli("train", "--arch", "cyclegan", "--task", "edges2shoes", "--data", data_dir, "--model-dir", tmp_path / "m",
        "--steps", "2", "--size", "32", "--netG", "resnet_6blocks", "--ngf", "4", "--ndf", "4", "--norm", "batch",
        "--eval-images", "2", "--device", "cpu", "--bn-images", "4")
    entry, generators = load_generators(ModelStore(tmp_path / "m"), get_plugins(), "edges2shoes")
    data = get_plugins().datasets.get(entry["dataset"]).build(data_dir, "train", entry["options"], train=False)
    indices = spread_indices(len(data), 4)
    for gname, domain in (("G_A", "A"), ("G_B", "B")):
        gen = generators[gname]
        means, _ = batch_statistics_of(gen, (data[k][domain][None] for k in indices))
        torch.testing.assert_close(first_batchnorm(gen).running_mean, means, rtol=1e-4, atol=1e-5)
