"""pbgan: lifelong image-to-image GAN training with Piggyback GAN.

The Python API (see `pbgan_core.api`): `train(...)`, `Model.open(dir)`, `model.tasks`,
`model.generator(task)`, `model.translate(task, image)`, `model.evaluate()`, `save_image`.
"""

__version__ = "0.1.0"

from .api import PROTOCOLS, Model, Task, save_image, train  # noqa: E402
from .errors import PbganError  # noqa: E402

__all__ = ["Model", "Task", "train", "save_image", "PROTOCOLS", "PbganError", "__version__"]
