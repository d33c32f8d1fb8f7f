"""Training one task in several processes (torchrun, gloo on CPU) and in mixed precision."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pbgan_core import distributed
from pbgan_core.engine import _batches
from pbgan_core.lock import lock_holder, model_lock
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore
from tests.conftest import EDGES2SHOES, FACADES, needs_data, one_line_error

SMALL = ["--size", "32", "--ngf", "8", "--ndf", "8", "--max-images", "16", "--eval-images", "4", "--device", "cpu"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list, hash_dir: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           distributed.WEIGHTS_HASH_DIR_ENV: str(hash_dir)}
    proc = subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def rank_hashes(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("rank*.sha256"))}


def test_shards_are_disjoint_and_equal():
    data = list(range(11))
    seen = []
    for rank in range(2):
        ranks = distributed.Ranks(rank=rank, world=2)
        epoch = [int(i) for b, _ in zip(_batches(data, 2, 0, seed=3, ranks=ranks), range(3)) for i in b]
        assert len(epoch) == 5  # 11 images, 2 processes: 5 each, one left out this epoch
        seen.append(set(epoch))
    assert not seen[0] & seen[1]
    whole = [int(i) for b, _ in zip(_batches(data, 11, 0, seed=3), range(1)) for i in b]
    assert sorted(whole) == data  # a single process still sees every image


@needs_data(FACADES)
@needs_data(EDGES2SHOES)
def test_two_processes_train_lifelong_tasks_in_step(tmp_path):
    model = tmp_path / "model"
    first = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(), "-m",
             "pbgan_core", "train", "--arch", "pix2pix", "--task", "facades", "--data", FACADES,
             "--direction", "BtoA", *SMALL, "--steps", "4", "--model-dir", model]
    out = run(first, tmp_path / "h1")
    assert out.count("trained task") == 1  # rank 0 reports, the other rank stays quiet
    hashes = rank_hashes(tmp_path / "h1")
    assert set(hashes) == {"rank0.sha256", "rank1.sha256"}
    assert len(set(hashes.values())) == 1  # different data shards, same weights: gradients were averaged

    store = ModelStore(model)
    assert [t["name"] for t in store.tasks] == ["facades"]
    assert store.tasks[0]["train"]["processes"] == 2
    assert len(list((model / "tasks").glob("*.safetensors"))) == 1
    assert not (model / ".lock").exists() and not (model / "checkpoints").exists()
    task1 = (model / store.tasks[0]["file"]).read_bytes()

    second = ["-m", "pbgan_core", "train", "--nproc", "2", "--arch", "pix2pix", "--task", "edges2shoes",
              "--data", EDGES2SHOES, "--direction", "BtoA", *SMALL, "--steps", "3", "--model-dir", model]
    run(second, tmp_path / "h2")
    hashes = rank_hashes(tmp_path / "h2")
    assert len(hashes) == 2 and len(set(hashes.values())) == 1
    store = ModelStore(model)
    assert [t["name"] for t in store.tasks] == ["facades", "edges2shoes"]
    assert len(list((model / "tasks").glob("*.safetensors"))) == 2
    assert (model / store.tasks[0]["file"]).read_bytes() == task1


@needs_data(FACADES)
def test_bf16_on_cpu_trains_a_task(cli, tmp_path):
    cli("train", "--arch", "pix2pix", "--task", "facades", "--data", FACADES, "--direction", "BtoA", *SMALL,
        "--steps", "3", "--precision", "bf16", "--model-dir", tmp_path)
    entry = ModelStore(tmp_path).task("facades")
    assert entry["train"]["precision"] == "bf16" and entry["probe_sha256"]


@needs_data(FACADES)
def test_fp16_on_cpu_is_refused(cli, tmp_path):
    _, _, err = cli("train", "--arch", "pix2pix", "--task", "facades", "--data", FACADES, *SMALL,
                    "--steps", "3", "--precision", "fp16", "--model-dir", tmp_path, expect=1)
    assert "bf16" in one_line_error(err)
    assert not ModelStore(tmp_path).exists


@pytest.mark.parametrize("arch", ["pix2pix", "cyclegan"])
def test_loss_scaling_leaves_an_fp32_step_unchanged(arch):
    """The trainers route backward and optimizer steps through their GradScaler (what fp16
    needs): with an exact power-of-two scale, a step matches the unscaled step bit for bit."""
    plugins = get_plugins()
    architecture = plugins.architectures.get(arch)
    opts = {o.key: o.default for o in architecture.options}
    opts.update(size=32, ngf=8, ndf=8, direction="AtoB", seed=0, netG="resnet_6blocks" if arch == "cyclegan"
                else "auto")
    batch = {k: torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) * 2 - 1
             for i, k in enumerate("AB")}
    weights = []
    for scaled in (False, True):
        torch.manual_seed(0)
        generators = architecture.build_generators(opts)
        trainer = architecture.build_trainer(generators, opts, torch.device("cpu"), 10)
        if scaled:
            trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        trainer.step(batch)
        weights.append(torch.cat([p.detach().flatten() for g in generators.values() for p in g.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert trainer.state_dict()["scaler"]["scale"] == 1024.0


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@needs_data(FACADES)
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_stopping_the_parent_of_two_processes_stops_them_and_frees_the_model(tmp_path):
    model = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-m", "pbgan_core", "train", "--nproc", "2", "--arch", "pix2pix",
                               "--task", "f", "--data", FACADES, "--direction", "BtoA", *SMALL, "--steps", "100000",
                               "--model-dir", model], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 300
        while lock_holder(model) is None:  # the workers have started and taken the model's lock
            assert parent.poll() is None and time.monotonic() < deadline, parent.communicate()
            time.sleep(0.5)
        launcher = children(parent.pid)
        parent.send_signal(signal.SIGINT)  # the parent only, as `kill -INT PID` does
        _, err = parent.communicate(timeout=120)
        assert parent.returncode == 130 and "error: interrupted" in err, err
        with model_lock(model):  # free: no worker holds it
            pass
        for pid in launcher:
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)  # nothing of the launcher's process group is left
    finally:
        if parent.poll() is None:
            parent.kill()
        holder = lock_holder(model)
        if holder:  # a worker left running by a failure above
            os.kill(int(holder.split()[1]), signal.SIGKILL)
