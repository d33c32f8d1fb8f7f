import os
from pathlib import Path

import pytest
import torch

from pbgan_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FACADES = SHARED_DATA / "facades"
EDGES2SHOES = SHARED_DATA / "edges2shoes"

# Small and fast: 32 px, a thin U-Net, few images.
TINY = ["--size", "32", "--ngf", "8", "--ndf", "8", "--max-images", "24", "--eval-images", "4", "--device", "cpu"]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def needs_data(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not available")


class CLI:
    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *args, expect: int | None = 0):
        code = main([str(a) for a in args])
        out, err = self.capsys.readouterr()
        if expect is not None:
            assert code == expect, f"exit {code} (wanted {expect})\nstdout: {out}\nstderr: {err}"
        return code, out, err


@pytest.fixture
def cli(capsys):
    return CLI(capsys)


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]
