"""``hydra/launcher=ray``: hydra-ray-launcher (1.2.x) with two fixes for today's Ray.

hydra-ray-launcher is the Ray launcher Hydra users know; it is used as it is, except that

- it passes ``object_store_memory`` to every ``ray.init`` (a CI workaround of the plugin), which
  Ray refuses when it connects to a running cluster (``RAY_ADDRESS``): the setting is left to
  Ray unless the config gives one;
- its tasks run in the directory their Ray node was started from, so a relative sweep
  directory (``outputs/multirun/...``) would land there rather than under the directory
  ``prune-run`` was started in: the sweep directory is made absolute before the jobs go out
  (its ``${now:...}`` then resolves once, in ``prune-run``, not in every task).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from omegaconf import DictConfig, open_dict

try:
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as _PluginRayLauncher
except ImportError:  # the plugin (and Ray) are optional: pip install -e '.[ray]'
    _PluginRayLauncher = None

if _PluginRayLauncher is not None:

    class RayLauncher(_PluginRayLauncher):
        """hydra-ray-launcher's ``RayLauncher`` with the fixes of the module docstring."""

        def __init__(self, ray: DictConfig) -> None:
            with open_dict(ray):
                # null, not absent: the plugin's setdefault then leaves the choice to Ray
                ray.init.setdefault("object_store_memory", None)
            super().__init__(ray)

        def launch(
            self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
        ) -> Sequence[JobReturn]:
            assert self.config is not None
            with open_dict(self.config):
                sweep_dir = Path(str(self.config.hydra.sweep.dir)).expanduser()
                self.config.hydra.sweep.dir = str(sweep_dir.absolute())
            return super().launch(job_overrides, initial_job_idx)

else:
    from hydra.plugins.launcher import Launcher

    class RayLauncher(Launcher):  # type: ignore[no-redef]
        """Stands in when hydra-ray-launcher is missing: says how to install it."""

        def __init__(self, **_: Any) -> None:
            raise ImportError(
                "hydra/launcher=ray needs hydra-ray-launcher and Ray: pip install -e '.[ray]'"
            )

        def setup(self, **_: Any) -> None:  # never reached: __init__ raises
            raise NotImplementedError

        def launch(self, *_: Any) -> Sequence[JobReturn]:
            raise NotImplementedError
