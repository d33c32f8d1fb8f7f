"""Training length and learning-rate schedule: the reference's defaults and linear policy."""
import pytest
import torch

from pbgan_core.engine import TrainRequest, schedule
from pbgan_core.errors import PbganError
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore
from pbgan_plugins.pix2pix import reference_lr_rule
from tests.conftest import FACADES, TINY, needs_data


def reference_rates(n_epochs: int, n_epochs_decay: int, steps_per_epoch: int) -> list[float]:
    """The reference's linear policy as its current train.py applies it: networks.get_scheduler's
    lambda_rule(epoch) = 1 - max(0, epoch + epoch_count - n_epochs) / (n_epochs_decay + 1) with
    epoch_count 1, and model.update_learning_rate() after each epoch's iterations (the 2020-2024
    train.py called it before them)."""
    epoch_count = 1

    def lambda_rule(epoch):
        return 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)

    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=2e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda_rule)
    rates = []
    for _ in range(n_epochs + n_epochs_decay):
        rates += [opt.param_groups[0]["lr"]] * steps_per_epoch
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("epochs,decay,per_epoch", [(3, 2, 4), (100, 100, 1), (1, 0, 3), (0, 5, 2)])
def test_per_step_rule_equals_the_reference_per_epoch_policy(epochs, decay, per_epoch):
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=2e-4)
    rule = reference_lr_rule({"epochs": epochs, "epochs_decay": decay, "steps_per_epoch": per_epoch})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, rule)
    ours = []
    for _ in range((epochs + decay) * per_epoch):
        ours.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert ours == pytest.approx(reference_rates(epochs, decay, per_epoch), rel=1e-12, abs=0)
    if decay:
        assert ours[-1] == pytest.approx(2e-4 / (decay + 1))  # the last epoch: 1/(decay+1) of the rate


@pytest.mark.parametrize("arch", ["pix2pix", "cyclegan"])
def test_defaults_are_the_reference_100_plus_100_epochs(arch):
    plugins = get_plugins()
    architecture = plugins.architectures.get(arch)
    req = TrainRequest(arch=arch, task="t", data=FACADES, model_dir=FACADES, batch_size=1)
    total, lr = schedule(req, architecture, images=400)
    assert total == 200 * 400 and lr == {"epochs": 100, "epochs_decay": 100, "steps_per_epoch": 400}
    req.batch_size = 3
    assert schedule(req, architecture, images=400)[0] == 200 * 134  # the last batch of an epoch may be short


def test_steps_and_epochs_overrides():
    arch = get_plugins().architectures.get("pix2pix")
    req = TrainRequest(arch="pix2pix", task="t", data=FACADES, model_dir=FACADES, steps=7)
    assert schedule(req, arch, images=10) == (7, {"epochs": 100, "epochs_decay": 100, "steps_per_epoch": 10})
    req = TrainRequest(arch="pix2pix", task="t", data=FACADES, model_dir=FACADES, epochs=2, epochs_decay=1,
                       batch_size=4)
    assert schedule(req, arch, images=10)[0] == 3 * 3
    req.epochs, req.epochs_decay = 0, 0
    with pytest.raises(PbganError, match="nothing to train"):
        schedule(req, arch, images=10)
    req.epochs = -1
    with pytest.raises(PbganError, match="cannot be negative"):
        schedule(req, arch, images=10)


def test_help_states_what_each_length_option_means(cli):
    _, out, _ = cli("train", "--help")
    text = " ".join(out.split())
    assert "Stop after exactly this many optimizer steps" in text
    assert "reference n_epochs]" in text and "reference n_epochs_decay" in text


@needs_data(FACADES)
def test_epochs_train_whole_passes_and_record_the_schedule(cli, tmp_path):
    model = tmp_path / "m"
    cli("train", "--arch", "pix2pix", "--task", "f", "--data", FACADES, "--direction", "BtoA", *TINY,
        "--max-images", 3, "--batch-size", 2, "--epochs", 1, "--epochs-decay", 1, "--model-dir", model)
    entry = ModelStore(model).task("f")
    assert entry["train"]["steps"] == 4
    assert {k: entry["options"][k] for k in ("epochs", "epochs_decay", "steps_per_epoch")} == \
        {"epochs": 1, "epochs_decay": 1, "steps_per_epoch": 2}
