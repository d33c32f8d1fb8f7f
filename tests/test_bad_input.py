"""Bad input across the command line: each case ends in one clear `error:` line and a non-zero
exit (or, where skipping is right, a counted warning), and never costs the model a byte."""
import fcntl
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load, save

from pbgan_core.cli import main
from pbgan_core.manifest import FORMAT
from tests.conftest import FACADES, TINY, needs_data

pytestmark = needs_data(FACADES)

FAST = [*TINY, "--max-images", "4", "--eval-images", "1", "--steps", "1"]


def write_pairs(folder: Path, n: int = 3, mode: str = "RGB", size=(64, 32), splits=("train", "test")) -> Path:
    """An aligned dataset: A|B images, width twice the height."""
    rng = np.random.default_rng(0)
    for split in splits:
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = size
            if mode == "I;16":
                img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
            else:
                img = Image.fromarray(rng.integers(0, 255, (h, w, 4), dtype=np.uint8), "RGBA").convert(mode)
            img.save(folder / split / f"{i}.png")
    return folder


def train(model: Path, data: Path, *more) -> list:
    return ["train", "--arch", "pix2pix", "--task", "new", "--data", data, *FAST, *more, "--model-dir", model]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- the cases: (tmp, model) -> (argv, expected) where expected is "ok", "warn" or an error substring ---

def corrupt_image(tmp, model):
    data = write_pairs(tmp / "d")
    (data / "train" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    return train(model, data), "warn"


def truncated_image(tmp, model):
    data = write_pairs(tmp / "d")
    full = (data / "train" / "0.png").read_bytes()
    (data / "train" / "cut.png").write_bytes(full[: len(full) // 2])
    return train(model, data), "warn"


def grayscale_images(tmp, model):
    return train(model, write_pairs(tmp / "d", mode="L")), "ok"


def rgba_images(tmp, model):
    return train(model, write_pairs(tmp / "d", mode="RGBA")), "ok"


def sixteen_bit_images(tmp, model):
    return train(model, write_pairs(tmp / "d", mode="I;16")), "ok"


def tiny_images(tmp, model):
    return train(model, write_pairs(tmp / "d", size=(4, 2))), "ok"


def non_image_files(tmp, model):
    data = tmp / "d"
    for split in ("train", "test"):
        (data / split).mkdir(parents=True)
        (data / split / "notes.png").write_text("not an image")
    return train(model, data), "no usable images"


def wrong_layout(tmp, model):
    return train(model, write_pairs(tmp / "d", size=(1, 32))), "are not"


def empty_folder(tmp, model):
    (tmp / "d" / "train").mkdir(parents=True)
    (tmp / "d" / "test").mkdir()
    return train(model, tmp / "d"), "no usable images"


def missing_folder(tmp, model):
    return train(model, tmp / "nowhere"), "does not exist"


def no_train_split(tmp, model):
    return train(model, write_pairs(tmp / "d", splits=("test",))), "no train data"


def unknown_arch(tmp, model):
    return ["train", "--arch", "nosuch", "--task", "x", "--data", FACADES, "--model-dir", model], "nosuch"


def unknown_option(tmp, model):
    return train(model, FACADES, "--bogus", "3"), "--bogus"


def bad_direction(tmp, model):
    return train(model, FACADES, "--direction", "sideways"), "sideways"


def taken_task_name(tmp, model):
    return [*train(model, FACADES)[:4], "base", *train(model, FACADES)[5:]], "exists already"


def bad_task_name(tmp, model):
    return [*train(model, FACADES)[:4], "../evil", *train(model, FACADES)[5:]], "not allowed"


def unknown_task(tmp, model):
    return ["generate", "--task", "nosuch", FACADES / "test", tmp / "out", "--model-dir", model], "no task 'nosuch'"


def tampered_header(tmp, model):
    path = model / "tasks" / "0001-base.safetensors"
    data = bytearray(path.read_bytes())
    data[8:9] = b"["  # the JSON header no longer parses
    path.write_bytes(bytes(data))
    return ["generate", "--task", "base", FACADES / "test", tmp / "out", "--model-dir", model], "does not match"


def replace_first_task_file(model, data: bytes) -> None:
    """Overwrite task 1's file and make the manifest's hash agree, as a careful tamperer would."""
    from pbgan_core.atomic import sha256_bytes

    (model / "tasks" / "0001-base.safetensors").write_bytes(data)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["tasks"][0]["sha256"] = sha256_bytes(data)
    (model / "manifest.json").write_text(json.dumps(manifest))


def tampered_header_and_hash(tmp, model):
    """The header is rewritten and the manifest hash updated to match: the file must still be refused."""
    path = model / "tasks" / "0001-base.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    bad = data[:8] + b"{" + b" " * (n - 1) + data[8 + n:]
    replace_first_task_file(model, bad)
    return ["generate", "--task", "base", FACADES / "test", tmp / "out", "--model-dir", model], "safetensors"


def task_from_other_model(tmp, model):
    """A task file copied in from another model (hash updated): its bank fingerprint gives it away."""
    path = model / "tasks" / "0001-base.safetensors"
    data = path.read_bytes()
    tensors = load(data)
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n])["__metadata__"]
    foreign = save(tensors, metadata={**meta, "bank_fingerprint": "0" * 64})
    replace_first_task_file(model, foreign)
    return ["generate", "--task", "base", FACADES / "test", tmp / "out", "--model-dir", model], "another filter bank"


def future_manifest(tmp, model):
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["format"] = 99
    (model / "manifest.json").write_text(json.dumps(manifest))
    return ["tasks", "--model-dir", model], "upgrade pbgan"


def broken_manifest(tmp, model):
    path = model / "manifest.json"
    path.write_bytes(path.read_bytes()[:40])
    return ["tasks", "--model-dir", model], "unreadable"


def missing_task_file(tmp, model):
    (model / "tasks" / "0001-base.safetensors").unlink()
    return ["generate", "--task", "base", FACADES / "test", tmp / "out", "--model-dir", model], "is missing"


def output_below_a_file(tmp, model):
    (tmp / "file").write_text("x")
    return ["generate", "--task", "base", "--aligned", FACADES / "test", tmp / "file" / "out",
            "--model-dir", model], "file"


def read_only_output(tmp, model):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root writes to read-only folders")
    out = tmp / "out"
    out.mkdir()
    out.chmod(0o500)
    return ["generate", "--task", "base", "--aligned", FACADES / "test", out, "--model-dir", model], "cannot write"


HELD: list[int] = []  # lock files held by "another process" during a case


def model_in_use(tmp, model):
    fd = os.open(model / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running pbgan command holds it
    os.write(fd, str(os.getppid()).encode())
    HELD.append(fd)
    return train(model, FACADES), f"in use by another pbgan process (pid {os.getppid()})"


def gc_in_use(tmp, model):
    argv, expected = model_in_use(tmp, model)
    return ["gc", "--model-dir", model], expected


def report_in_use(tmp, model):
    argv, expected = model_in_use(tmp, model)
    return ["report", "--model-dir", model], expected


def model_dir_is_a_file(tmp, model):
    (tmp / "file").write_text("x")
    return train(tmp / "file", FACADES), "is a file, not a model directory"


def model_dir_below_a_file(tmp, model):
    (tmp / "file").write_text("x")
    return train(tmp / "file" / "model", FACADES), "cannot create the model directory"


def edit_manifest(model: Path, change) -> None:
    manifest = json.loads((model / "manifest.json").read_text())
    change(manifest)
    (model / "manifest.json").write_text(json.dumps(manifest))


def manifest_without_sha256(tmp, model):
    edit_manifest(model, lambda m: m["tasks"][0].pop("sha256"))
    return ["generate", "--task", "base", FACADES / "test", tmp / "out", "--model-dir", model], \
        "tasks[0] ('base') has no field 'sha256'"


def manifest_without_index(tmp, model):
    edit_manifest(model, lambda m: m["tasks"][0].pop("index"))
    return ["tasks", "--model-dir", model], "has no field 'index'"


def task_name_a_number(tmp, model):
    edit_manifest(model, lambda m: m["tasks"][0].update(name=5))
    return ["tasks", "--model-dir", model], "tasks[0] field 'name' must be a task name"


def format_as_text(tmp, model):
    edit_manifest(model, lambda m: m.update(format="1"))
    return ["tasks", "--model-dir", model], f"field 'format' must be a whole number such as {FORMAT}, got \"1\""


def task_file_outside_the_model(tmp, model):
    edit_manifest(model, lambda m: m["tasks"][0].update(file="../../elsewhere.safetensors"))
    return ["verify", "--model-dir", model], "expected 'tasks/0001-base.safetensors'"


def malformed_stages(tmp, model):
    edit_manifest(model, lambda m: m.update(stages=[{"after": 3}]))
    return ["eval", "--model-dir", model], "delete the field 'stages' and run `pbgan eval`"


def export_into_the_model(tmp, model):
    return ["export", "--task", "base", "--model-dir", model, model / "bank" / "0001-base"], \
        "inside the model directory"


def export_over_a_file(tmp, model):
    (tmp / "G.pt").write_text("mine")
    return ["export", "--task", "base", "--format", "torchscript", "--model-dir", model, tmp / "G.pt"], \
        "G.pt exists already; add --force"


def generate_over_an_output(tmp, model):
    (tmp / "out").mkdir()
    (tmp / "out" / "1.png").write_text("mine")
    return ["generate", "--task", "base", "--aligned", FACADES / "test" / "1.jpg", tmp / "out", "--model-dir", model], \
        "1.png exists already; add --force"


def generate_into_the_model(tmp, model):
    return ["generate", "--task", "base", "--aligned", FACADES / "test" / "1.jpg", model / "tasks",
            "--model-dir", model], "inside the model directory"


def generate_inputs_sharing_an_output(tmp, model):
    Image.new("RGB", (64, 32)).save(tmp / "x.jpg")
    Image.new("RGB", (64, 32)).save(tmp / "x.png")
    Image.new("RGB", (64, 32)).save(tmp / "x.jpg.png")  # x.jpg's own output name when kept apart from x.png
    return ["generate", "--task", "base", "--aligned", tmp, tmp / "out", "--model-dir", model], \
        "would all be written to"


def generate_non_image(tmp, model):
    (tmp / "notes.png").write_text("hello")
    return ["generate", "--task", "base", tmp / "notes.png", tmp / "out", "--model-dir", model], "not an image"


def generate_wrong_layout(tmp, model):
    Image.new("RGB", (1, 32)).save(tmp / "line.png")
    return ["generate", "--task", "base", "--aligned", tmp / "line.png", tmp / "out", "--model-dir", model], \
        "A|B side by side"


def budget_below_the_generator(tmp, model):
    return train(model, FACADES, "--budget", "0.05"), "--budget 0.05 is below"


def budget_above_one(tmp, model):
    return train(model, FACADES, "--budget", "1.5"), "--budget must be in [0, 1], got 1.5"


def learning_rate_nan(tmp, model):
    return train(model, FACADES, "--lr", "nan"), "--lr must be a finite number, got nan"


def negative_workers(tmp, model):
    return train(model, FACADES, "--num-workers", "-1"), "--num-workers must be in [0, 256], got -1"


def huge_seed(tmp, model):
    return train(model, FACADES, "--seed", "99999999999999999999999"), "--seed must be in [0, 4294967295]"


def no_steps(tmp, model):
    return train(model, FACADES, "--steps", "0"), "--steps must be >= 1, got 0"


def negative_eval_images(tmp, model):
    """Scoring no image would store all-zero metrics for good (an L1 of 0 reads as perfect)."""
    return train(model, FACADES, "--eval-images", "-1"), "--eval-images must be >= 0, got -1"


def negative_max_images(tmp, model):
    return train(model, FACADES, "--max-images", "-1"), "--max-images must be >= 0, got -1"


def no_test_split(tmp, model):
    """Refused before training: the stored task would have no metrics row."""
    return train(model, write_pairs(tmp / "d", splits=("train",))), "no test data in"


def eval_negative_images(tmp, model):
    return ["eval", "--images", "-1", "--model-dir", model], "'--images': Input should be greater than or equal to 0"


def report_without_samples(tmp, model):
    return ["report", "--samples", "0", "--model-dir", model], "'--samples': Input should be greater than or equal to 1"


CASES = [read_only_output, corrupt_image, truncated_image, grayscale_images, rgba_images, sixteen_bit_images, tiny_images,
         non_image_files, wrong_layout, empty_folder, missing_folder, no_train_split, unknown_arch, unknown_option,
         bad_direction, taken_task_name, bad_task_name, unknown_task, tampered_header, tampered_header_and_hash,
         task_from_other_model, future_manifest, broken_manifest, missing_task_file, output_below_a_file,
         model_in_use, generate_non_image, generate_wrong_layout, gc_in_use, model_dir_is_a_file,
         model_dir_below_a_file, manifest_without_sha256, manifest_without_index, task_name_a_number, format_as_text,
         task_file_outside_the_model, malformed_stages, export_into_the_model, export_over_a_file,
         generate_over_an_output, generate_into_the_model, generate_inputs_sharing_an_output,
         budget_below_the_generator, budget_above_one, report_in_use, learning_rate_nan, negative_workers, huge_seed,
         no_steps, negative_eval_images, negative_max_images, no_test_split, eval_negative_images,
         report_without_samples]


@pytest.fixture(autouse=True)
def release_held_locks():
    yield
    while HELD:
        os.close(HELD.pop())


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-input") / "model"
    assert main(["train", "--arch", "pix2pix", "--task", "base", "--data", str(FACADES), *FAST,
                 "--model-dir", str(root)]) == 0
    return root


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_bad_input(case, cli, base_model, tmp_path):
    model = Path(shutil.copytree(base_model, tmp_path / "model"))
    argv, expected = case(tmp_path, model)
    before = snapshot(model)
    code, out, err = cli(*argv, expect=None)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in out + err
    if expected in ("ok", "warn"):
        assert code == 0 and not errors, err
        warned = [line for line in err.splitlines() if line.startswith("warning:")]
        if expected == "warn":
            assert len(warned) == 1 and "skipped 1 unreadable image" in warned[0], err
        after = snapshot(model)
        assert all(after[k] == v for k, v in before.items() if k not in ("manifest.json", "README.md"))
        assert json.loads(after["manifest.json"])["tasks"][0] == json.loads(before["manifest.json"])["tasks"][0]
    else:
        assert code != 0, out + err
        assert len(errors) == 1, err
        assert expected in errors[0], errors[0]
        assert snapshot(model) == before, "the model directory changed"


def test_demo_checks_its_options_before_writing_photos(cli, tmp_path):
    _, _, err = cli("demo", "--out", tmp_path / "demo", "--steps", "0", expect=2)
    assert "--steps must be >= 1, got 0" in err and "Traceback" not in err
    assert not (tmp_path / "demo").exists()
