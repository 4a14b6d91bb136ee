"""The one backend interface every engine runner implements.

Modelled on Polygraphy's runners: public methods validate and delegate to private ``_*_impl``
methods that do the work; a backend is a context manager. The pipeline only ever calls
``run(component, feeds)``; it never branches on the backend's type.
"""

from __future__ import annotations

import abc
from typing import Mapping

import numpy as np

from sdrt.errors import BackendError

from ..manifest import Artifact
from ..specs import ComponentSpec


class Backend(abc.ABC):
    """Runs an artifact's components.

    ``run`` returns fresh numpy arrays owned by the caller (never aliases of internal buffers),
    so results stay valid across later calls. ``run`` may be called from several threads at once.
    """

    #: short name used by the CLI and in reports, e.g. "ort-cpu"
    name: str = "backend"

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.specs: Mapping[str, ComponentSpec] = artifact.manifest.components
        self._active = False

    # -- lifecycle ----------------------------------------------------------
    def load(self) -> "Backend":
        """Create sessions / engines for every component. Idempotent."""
        if not self._active:
            self._load_impl()
            self._active = True
        return self

    def close(self) -> None:
        if self._active:
            self._close_impl()
            self._active = False

    def __enter__(self) -> "Backend":
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference ------------------------------------------------------------
    def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``component`` on ``feeds`` (checked against its spec); return outputs by name."""
        if not self._active:
            raise BackendError(f"{self.name}: call load() (or use `with backend:`) before run()")
        spec = self.specs.get(component)
        if spec is None:
            raise BackendError(
                f"{self.name}: unknown component {component!r}; this artifact has {list(self.specs)}"
            )
        spec.check_feeds(feeds)
        return self._run_impl(spec, feeds)

    def describe(self) -> dict[str, object]:
        """What actually runs (providers, devices, precisions), for reports and PNG metadata."""
        return {"backend": self.name}

    # -- to implement -------------------------------------------------------
    @abc.abstractmethod
    def _load_impl(self) -> None: ...

    @abc.abstractmethod
    def _run_impl(
        self, spec: ComponentSpec, feeds: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]: ...

    def _close_impl(self) -> None:
        """Release sessions / device memory. Default: nothing to release."""
