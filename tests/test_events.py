"""Training events: listeners, the logger plugins (jsonl, tensorboard, samples) and progress output."""
import io
import re
import sys
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

import pbgan
from pbgan_core.console import PlainProgress, progress_bar, sequence_progress, training_progress
from pbgan_core.errors import PbganError
from pbgan_core.events import Start, Step
from pbgan_core.store import ModelStore
from pbgan_plugins.loggers import JsonlLog, read_log

from .conftest import FACADES, TINY, needs_data, one_line_error

SMALL = dict(size=32, ngf=8, ndf=8, max_images=3, eval_images=2, device="cpu", direction="BtoA")
CYCLEGAN_LOSSES = {k: 0.123456 for k in ("G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B")}


class Recorder:
    """A listener keeping every event it hears."""

    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if name.startswith("on_"):
            return self.events.append
        raise AttributeError(name)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A run with every built-in logger and a recording listener, and the same run without loggers."""
    if not FACADES.exists():
        pytest.skip("shared data not available")
    root = tmp_path_factory.mktemp("events")
    recorder = Recorder()
    with_loggers = pbgan.train("pix2pix", "facades", FACADES, model_dir=root / "logged", steps=5, log_every=2,
                               sample_every=2, loggers=["tensorboard", "samples"], listeners=[recorder],
                               progress=False, **SMALL)
    without = pbgan.train("pix2pix", "facades", FACADES, model_dir=root / "quiet", steps=5, loggers=["none"],
                          progress=False, **SMALL)
    return root, recorder.events, with_loggers, without


@needs_data(FACADES)
def test_listeners_hear_every_event_in_order(logged):
    _, events, _, _ = logged
    names = [e.name for e in events]
    assert names[0] == "start" and names[-3:] == ["stored", "eval", "end"]
    steps = [e for e in events if e.name == "step"]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5] and all(e.total == 5 for e in steps)
    assert [e.step for e in events if e.name == "samples"] == [2, 4, 5]  # every 2 steps and after the last
    assert steps[0].lrs == {"G": 2e-4, "D": 2e-4} and steps[0].epoch == 1 and steps[-1].epoch == 2  # 3 images an epoch
    condition, output, target = events[names.index("samples")].images["test"]
    assert condition.shape == output.shape == target.shape == (3, 3, 32, 32)
    assert events[-1].error is None and set(events[-2].metrics["facades"]) == {"l1", "psnr", "ssim"}


@needs_data(FACADES)
def test_jsonl_log_keeps_its_contract(logged):
    root, _, _, _ = logged
    log = read_log(root / "logged" / "logs" / "facades.jsonl")
    assert [r["event"] for r in log] == ["start", "step", "step", "samples", "step", "samples", "step", "samples",
                                         "stored", "eval", "end"]
    steps = [r for r in log if r["event"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 4, 5]  # the first, every --log-every, the last
    for r in steps:
        assert isinstance(r["step"], int) and r["total"] == 5 and isinstance(r["epoch"], int)
        assert isinstance(r["lr"], float) and r["lr"] == 2e-4 and isinstance(r["time"], float)
        assert set(r["losses"]) == {"G_GAN", "G_L1", "D"} and all(isinstance(v, float) for v in r["losses"].values())
    assert not (root / "quiet" / "logs").exists()  # --logger none


@needs_data(FACADES)
def test_logs_are_no_model_files(logged):
    root, _, with_loggers, without = logged
    store = ModelStore(root / "logged")
    assert store.leftovers() == []
    assert store.task("facades")["sha256"] == ModelStore(root / "quiet").task("facades")["sha256"]  # samples change nothing


@needs_data(FACADES)
def test_tensorboard_reader_loads_the_scalars_and_samples(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, _, _ = logged
    events = EventAccumulator(str(root / "logged" / "logs" / "tensorboard" / "facades"))
    events.Reload()
    tags = events.Tags()
    assert {"loss/G_GAN", "loss/G_L1", "loss/D", "lr/G", "lr/D", "metrics/facades/ssim"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss/G_L1")] == [1, 2, 4, 5]
    assert {"samples/train", "samples/test"} <= set(tags["images"])


@needs_data(FACADES)
def test_sample_strips_are_written_as_pngs(logged):
    root, _, _, _ = logged
    folder = root / "logged" / "logs" / "samples" / "facades"
    assert sorted(p.name for p in folder.iterdir()) == [f"{s:07d}-{split}.png" for s in (2, 4, 5)
                                                        for split in ("test", "train")] + ["index.html"]
    page = (folder / "index.html").read_text()
    assert page.index("step 5") < page.index("step 2") and page.count('<img src="0000004-') == 2
    assert Image.open(folder / "0000005-test.png").size == (3 * 32, 3 * 32)  # condition | output | target rows


def _jsonl_run(path: Path, start: int, steps: range, resume: bool) -> None:
    log = JsonlLog(path, 5, resume)
    log.on_start(Start("t", path.parent, {}, 20, start))
    for s in steps:
        log.on_step(Step("t", s, 20, 1, {"G": 0.1}, {"L": float(s)}, 0.5))


def test_a_resumed_log_appends_after_its_checkpoint_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "logs" / "t.jsonl"
    _jsonl_run(path, 0, range(1, 13), resume=False)  # logged up to step 10; killed mid-line
    with open(path, "a") as f:
        f.write('{"event": "step", "st')
    assert [r.get("step") for r in read_log(path)] == [None, 1, 5, 10]
    _jsonl_run(path, 5, range(6, 21), resume=True)  # the checkpoint was at step 5
    log = read_log(path)
    assert [(r["event"], r.get("step")) for r in log] == [("start", None), ("step", 1), ("step", 5),
                                                           ("start", None), ("step", 10), ("step", 15), ("step", 20)]
    _jsonl_run(path, 0, range(1, 2), resume=False)  # a new run starts it afresh
    assert [r["event"] for r in read_log(path)] == ["start", "step"]


def test_reading_a_missing_log_is_one_clear_error(tmp_path):
    with pytest.raises(PbganError, match="no training log"):
        read_log(tmp_path / "t.jsonl")


@needs_data(FACADES)
def test_a_failed_run_logs_why_and_its_name_stays_free(tmp_path):
    class Failing:
        def on_step(self, event):
            if event.step == 2:
                raise PbganError("disk full")

    with pytest.raises(PbganError, match="disk full"):
        pbgan.train("pix2pix", "t", FACADES, model_dir=tmp_path, steps=3, listeners=[Failing()], progress=False,
                    checkpoint_every=0, **SMALL)
    assert read_log(tmp_path / "logs" / "t.jsonl")[-1] == {"event": "end", "time": pytest.approx(0, abs=600),
                                                           "error": "disk full"}
    pbgan.train("pix2pix", "t", FACADES, model_dir=tmp_path, steps=1, progress=False, **SMALL)
    events = [r["event"] for r in read_log(tmp_path / "logs" / "t.jsonl")]
    assert events == ["start", "step", "stored", "eval", "end"]  # no samples are made for the jsonl log alone


@needs_data(FACADES)
def test_logger_choices_are_checked_before_training(cli, tmp_path, monkeypatch):
    train = ["train", "--arch", "pix2pix", "--task", "t", "--data", FACADES, *TINY, "--steps", "1",
             "--model-dir", tmp_path]
    _, _, err = cli(*train, "--logger", "wandb", expect=2)
    assert "unknown logger 'wandb'" in one_line_error(err)
    _, _, err = cli(*train, "--log-every", "0", expect=2)
    assert "--log-every must be >= 1, got 0" in one_line_error(err)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    _, _, err = cli(*train, "--logger", "tensorboard", expect=1)
    assert "pip install 'pbgan[tensorboard]'" in one_line_error(err)
    assert not (tmp_path / "manifest.json").exists()


@needs_data(FACADES)
def test_the_api_shows_progress_by_default_as_plain_lines_without_a_terminal(tmp_path, capsys):
    pbgan.train("pix2pix", "shown", FACADES, model_dir=tmp_path, steps=2, loggers=["none"], **SMALL)
    lines = [line for line in capsys.readouterr().out.splitlines() if "steps/s" in line]
    assert lines[-1].startswith("shown step 2/2 G_GAN ") and "eta 0:00:00" in lines[-1]
    pbgan.train("pix2pix", "quiet", FACADES, model_dir=tmp_path, steps=2, loggers=["none"], progress=False, **SMALL)
    assert "steps/s" not in capsys.readouterr().out


def test_plain_progress_prints_a_line_every_tenth_of_the_run():
    out = io.StringIO()
    target = Console(file=out, width=80)
    progress = training_progress("h2z", target)
    assert isinstance(progress, PlainProgress)
    progress.on_start(Start("h2z", Path("m"), {}, 100))
    for step in range(1, 101):
        progress.on_step(Step("h2z", step, 100, 1, {"G": 2e-4}, {"G_A": 0.5, "D_A": 0.25}, step / 10))
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("h2z step 10/100 G_A 0.500 D_A 0.250 ")
    assert lines[-1].endswith("eta 0:00:00")


def render(progress, width: int) -> str:
    target = Console(width=width, record=True, file=io.StringIO(), force_terminal=True)
    target.print(progress.get_renderable())
    return target.export_text()


@pytest.mark.parametrize("width", [80, 120])
def test_the_cyclegan_bar_keeps_bar_count_and_eta_at_narrow_widths(width):
    bar = progress_bar(Console(width=width))
    bar.add_task("horse2zebra", total=2000, completed=1043, losses=CYCLEGAN_LOSSES)
    line = render(bar, width)
    assert len(line.splitlines()) == 1 and "━" in line and "1043/2000" in line and "eta -:--:--" in line
    assert "G_A 0.123" in line  # losses show in what is left, cut first


def test_the_demo_bar_reads_whole_at_80_columns():
    target = Console(width=80, force_terminal=True)
    progress, start = sequence_progress(["denoise", "brighten", "negative2photo"], 1500, target)
    listener = start("negative2photo")
    listener.on_step(Step("negative2photo", 1043, 1500, 1, {}, {"G_GAN": 0.7, "G_L1": 0.3, "D": 0.6}, 1.0))
    line = render(progress, 80)
    assert "task 3 of 3: negative2photo" in line and "4043/4500" in line and "━" in line
    assert re.search(r"left (\d:\d\d:\d\d|-:--:--)", line)


def test_the_tasks_table_never_cuts_a_number_at_80_columns():
    from pbgan_core.cli import tasks_table

    rows = [dict(index=i, name=name, arch="cyclegan", factorizer="piggyback", stored_parameters=1_043_651_234,
                 ratio_to_standalone=0.3, file_bytes=4_000_000_000,
                 metrics={"l1": 0.123, "psnr": 23.456, "ssim": 0.789, "fid": 123.456})
            for i, name in enumerate(["horse2zebra", "negative2photo"], 1)]
    target = Console(width=80, record=True, file=io.StringIO())
    target.print(tasks_table("tasks in /a/long/path/to/the/model", rows))
    text = target.export_text()
    assert "…" not in text and text.count("1,043,651,234") == 2 and text.count("psnr 23.456") == 2
    assert "3.7 GB" in text and max(len(line) for line in text.splitlines()) <= 80


def test_every_table_folds_names_before_cutting_a_number():
    from rich.table import Table

    from pbgan_core.console import keep_numbers_whole

    tasks = ["facades_labels", "edges2shoes_long", "grayscale2color", "negative2photo", "horse2zebra_x"]
    grid = Table(title="ssim after each task")
    grid.add_column("after")
    for task in tasks:
        grid.add_column(task, justify="right", no_wrap=True)
    for task in tasks:
        grid.add_row(task, *["-12345.6789"] * len(tasks))
    target = Console(width=80, record=True, file=io.StringIO())
    target.print(keep_numbers_whole(grid))
    assert target.export_text().count("-12345.6789") == len(tasks) ** 2


def test_a_log_that_cannot_be_written_warns_once_and_training_goes_on(tmp_path):
    from pbgan_plugins.loggers import LogWarning

    (tmp_path / "logs").write_text("a file where the logs folder would be")
    with pytest.warns(LogWarning, match="could not be written") as warned:
        _jsonl_run(tmp_path / "logs" / "t.jsonl", 0, range(1, 11), resume=False)
    assert len(warned) == 1


@needs_data(FACADES)
def test_listeners_need_the_run_in_this_process(tmp_path):
    with pytest.raises(PbganError, match="use them with nproc=1"):
        pbgan.train("pix2pix", "t", FACADES, model_dir=tmp_path, steps=1, nproc=2, listeners=[Recorder()], **SMALL)
    assert not tmp_path.joinpath("manifest.json").exists()
