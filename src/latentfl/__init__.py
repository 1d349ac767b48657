"""latentfl: privacy-first federated learning with latent-space dataset distillation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("latentfl")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
