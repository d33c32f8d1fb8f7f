"""pbgan: lifelong image-to-image GAN training with Piggyback GAN.

The Python API (see `pbgan_core.api`): `train(...)`, `Model.open(dir)`, `model.tasks`,
`model.generator(task)`, `model.translate(task, image)`, `model.evaluate()`, `save_image`.
"""

__version__ = "0.1.0"

__all__ = ["Model", "Task", "train", "save_image", "PROTOCOLS", "PbganError", "__version__"]


def __getattr__(name: str):
    """The API loads on first use, so that `pbgan` starts (and takes a Ctrl-C) before torch loads."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pbgan_core' has no attribute {name!r}")
