"""Typed errors. Every message says what went wrong *and what to do about it*.

The CLI prints ``str(error)`` on one line and exits with ``error.exit_code``; library
users catch :class:`SdrtError` (or a subclass) instead of parsing messages.
"""

from __future__ import annotations


class SdrtError(Exception):
    """Base class of every error sdrt raises on purpose."""

    exit_code = 1


class ConfigError(SdrtError, ValueError):
    """A generation/build option is out of range or inconsistent (steps, sampler, size, ...)."""

    exit_code = 2


class ShapeError(ConfigError):
    """A requested width/height/batch that the exported graphs or engines cannot run."""


class ModelDirError(SdrtError):
    """A source model directory that is missing, incomplete or not a supported pipeline."""


class UnsafeCheckpointError(ModelDirError):
    """A pickle checkpoint was found and the user did not opt in to loading pickles."""


class ArtifactError(SdrtError):
    """An artifact directory that is missing files, corrupt, or inconsistent with its manifest."""


class ManifestVersionError(ArtifactError):
    """A manifest written by an unknown (newer or older) artifact format version."""


class BackendError(SdrtError):
    """A backend cannot be created or run (missing package, wrong device, bad feeds)."""


class ProviderMismatchError(BackendError):
    """ONNX Runtime gave a session other execution providers than the ones asked for."""


class EngineCacheError(BackendError):
    """A TensorRT engine whose stored cache key does not match the current build environment."""


class OutputError(SdrtError):
    """An output path that cannot be written."""


class ExportError(SdrtError):
    """Export of a component to ONNX failed."""


class ToleranceError(SdrtError):
    """A verification found differences above the allowed tolerance."""

    exit_code = 3


class NumericsError(SdrtError):
    """A model produced NaN or inf (e.g. the fp16 SDXL VAE overflowing); nothing is written."""
