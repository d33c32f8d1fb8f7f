"""An example pbgan plugin: one entry point, three hooks."""
from pbgan_core.hookspecs import hookimpl

from .csvlog import LOGGER
from .shapes import ShapesDataset
from .tinygan import TinyGAN

__version__ = "0.1.0"


@hookimpl
def register_architectures(register):
    register(TinyGAN())


@hookimpl
def register_datasets(register):
    register(ShapesDataset())


@hookimpl
def register_loggers(register):
    register(LOGGER)
