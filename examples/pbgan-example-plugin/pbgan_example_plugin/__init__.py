"""An example pbgan plugin: one entry point, two hooks."""
from pbgan_core.hookspecs import hookimpl

from .shapes import ShapesDataset
from .tinygan import TinyGAN

__version__ = "0.1.0"


@hookimpl
def register_architectures(register):
    register(TinyGAN())


@hookimpl
def register_datasets(register):
    register(ShapesDataset())
