"""Later tasks take the generator-shaping options they are not given from the model's first task;
a different value given explicitly is still refused with its name."""
import pytest

import pbgan
from pbgan_core.errors import PbganError
from pbgan_core.store import ModelStore

from .conftest import EDGES2SHOES, FACADES, needs_data, one_line_error

FIRST = ["--arch", "pix2pix", "--size", "32", "--ngf", "8", "--upsample", "resize", "--norm", "instance"]
SMALL = ["--ndf", "8", "--max-images", "8", "--eval-images", "2", "--device", "cpu", "--steps", "2",
         "--bn-images", "0"]


@pytest.fixture
def first_task(tmp_path, cli):
    if not (FACADES.exists() and EDGES2SHOES.exists()):
        pytest.skip("shared data not available")
    model = tmp_path / "m"
    cli("train", "--task", "facades", "--data", FACADES, "--direction", "BtoA", "--model-dir", model,
        *FIRST, *SMALL)
    return model


def test_later_task_inherits_the_generator_in_the_cli(first_task, cli):
    cli("train", "--task", "shoes", "--data", EDGES2SHOES, "--direction", "BtoA", "--model-dir", first_task, *SMALL)
    shoes = ModelStore(first_task).task("shoes")
    assert shoes["arch"] == "pix2pix"
    assert {k: shoes["options"][k] for k in ("size", "ngf", "upsample", "norm")} == \
        {"size": 32, "ngf": 8, "upsample": "resize", "norm": "instance"}


def test_later_task_inherits_the_generator_in_the_api(first_task):
    shoes = pbgan.train(None, "shoes", EDGES2SHOES, model_dir=first_task, direction="BtoA", ndf=8, max_images=8,
                        eval_images=2, device="cpu", steps=2, bn_images=0)
    assert shoes.size == 32 and shoes.options["ngf"] == 8 and shoes.options["upsample"] == "resize"


@pytest.mark.parametrize("given, named", [(["--ngf", "16"], "--ngf 16"), (["--upsample", "transpose"],
                                                                          "--upsample transpose")])
def test_a_different_value_given_is_refused_by_name(first_task, cli, given, named):
    _, _, err = cli("train", "--task", "shoes", "--data", EDGES2SHOES, "--model-dir", first_task, *SMALL, *given,
                    expect=1)
    assert f"{named}, but this model's generator (first task 'facades') has" in one_line_error(err)


def test_the_first_task_needs_an_architecture(tmp_path, cli):
    _, _, err = cli("train", "--task", "facades", "--data", FACADES, "--model-dir", tmp_path / "m", expect=2)
    assert "--arch is required for the first task" in one_line_error(err)
    with pytest.raises(PbganError, match="--arch is required"):
        pbgan.train(None, "facades", FACADES, model_dir=tmp_path / "m")
