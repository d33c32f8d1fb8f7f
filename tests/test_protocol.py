"""Test-time protocols: reference (batch statistics, dropout on, seeded per image) and eval."""
import copy
import json

import pytest
import torch

from pbgan_core.engine import load_generators
from pbgan_core.plugins import get_plugins
from pbgan_core.protocol import image_seed, translate
from pbgan_core.store import ModelStore
from pbgan_plugins.networks import UnetGenerator, get_norm_layer
from tests.conftest import FACADES, TINY, needs_data, one_line_error


def reference_like_net() -> UnetGenerator:
    """A U-Net as the reference builds it (BatchNorm, dropout) with trained-looking statistics."""
    torch.manual_seed(3)
    net = UnetGenerator(3, 3, 6, ngf=8, norm_layer=get_norm_layer("batch"), use_dropout=True)  # dropout at level 4
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_reference_protocol_is_the_reference_train_mode_forward():
    """The reference test.py without --eval: net in train mode, batch of one; same dropout mask
    when the global RNG is seeded alike."""
    net = reference_like_net()
    ours = copy.deepcopy(net)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    seeds = [11, 12, 13]
    y = translate(ours, x, "reference", seeds)
    net.train()
    with torch.no_grad():
        for i, seed in enumerate(seeds):
            torch.manual_seed(seed)
            assert torch.equal(y[i: i + 1], net(x[i: i + 1]))
    # running statistics untouched, back in eval mode, and the eval protocol differs
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items()) and not ours.training
    assert not torch.equal(y, translate(ours, x, "eval", seeds))


def test_each_image_is_translated_on_its_own():
    net = reference_like_net()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    together = translate(net, x, "reference", [1, 2, 3])
    alone = torch.cat([translate(net, x[i: i + 1], "reference", [s]) for i, s in enumerate([1, 2, 3])])
    assert torch.equal(together, alone)
    assert not torch.equal(translate(net, x[:1], "reference", [1]), translate(net, x[:1], "reference", [2]))
    state = torch.random.get_rng_state()
    translate(net, x, "reference", [1, 2, 3])
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG stream is left alone


def test_seeds_depend_on_task_generator_and_file_name():
    assert image_seed("facades", "G", "1.jpg") == image_seed("facades", "G", "1.jpg")
    assert len({image_seed("facades", "G", "1.jpg"), image_seed("facades", "G", "2.jpg"),
                image_seed("shoes", "G", "1.jpg"), image_seed("facades", "G_B", "1.jpg")}) == 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pbgan_core.cli import main

    root = tmp_path_factory.mktemp("protocol")
    model = root / "m"
    assert main(["train", "--arch", "pix2pix", "--task", "facades", "--data", str(FACADES), "--direction", "BtoA",
                 *TINY, "--max-images", "4", "--steps", "3", "--model-dir", str(model)]) == 0
    return root, model


@needs_data(FACADES)
def test_generate_is_byte_identical_run_to_run_and_in_any_folder(cli, trained, tmp_path):
    _, model = trained
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("1.jpg", "2.jpg"):
        (folder / name).write_bytes((FACADES / "test" / name).read_bytes())
    outs = []
    for k in range(2):
        cli("generate", "--task", "facades", "--aligned", "--protocol", "reference", folder, tmp_path / f"out{k}",
            "--model-dir", model)
        outs.append({p.name: p.read_bytes() for p in (tmp_path / f"out{k}").iterdir()})
    assert outs[0] == outs[1] and len(outs[0]) == 2
    cli("generate", "--task", "facades", "--aligned", "--protocol", "reference", FACADES / "test" / "2.jpg",
        tmp_path / "one.png", "--model-dir", model)
    assert (tmp_path / "one.png").read_bytes() == outs[0]["2.png"]
    cli("generate", "--task", "facades", "--aligned", folder, tmp_path / "ev", "--model-dir", model)  # default: eval
    assert (tmp_path / "ev" / "2.png").read_bytes() != outs[0]["2.png"]


@needs_data(FACADES)
def test_protocol_is_stored_with_the_metrics_and_eval_reports_it(cli, trained):
    _, model = trained
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["stages"][0]["protocol"] == "eval"
    assert manifest["tasks"][0]["metrics_protocol"] == "eval"
    _, out, _ = cli("eval", "--json", "--model-dir", model)
    report = json.loads(out)
    assert report["protocol"] == "eval" and report["matrix"]["protocols"] == ["eval"]
    assert report["metrics"]["facades"] == manifest["tasks"][0]["metrics"]
    runs = [json.loads(cli("eval", "--json", "--protocol", "reference", "--model-dir", model)[1]) for _ in range(2)]
    assert runs[0]["protocol"] == "reference" and runs[0]["metrics"] == runs[1]["metrics"]  # same seeds
    assert runs[0]["metrics"]["facades"] != manifest["tasks"][0]["metrics"]
    _, gens = load_generators(ModelStore(model), get_plugins(), "facades")
    assert not gens["G"].training


@needs_data(FACADES)
def test_unknown_protocol_is_one_line(cli, trained, tmp_path):
    _, model = trained
    for command in (["generate", "--task", "facades", FACADES / "test" / "1.jpg", tmp_path / "o.png"],
                    ["eval"], ["report"]):
        _, _, err = cli(*command, "--protocol", "train", "--model-dir", model, expect=2)
        assert "unknown test-time protocol 'train'" in one_line_error(err)
