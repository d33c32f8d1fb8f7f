"""`import pbgan`: the same Python API as `pbgan_core` (see `pbgan_core.api`)."""
from pbgan_core import PROTOCOLS, Model, PbganError, Task, __version__, save_image, train

__all__ = ["Model", "Task", "train", "save_image", "PROTOCOLS", "PbganError", "__version__"]
