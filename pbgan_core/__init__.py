"""pbgan: lifelong image-to-image GAN training with Piggyback GAN."""

__version__ = "0.1.0"
