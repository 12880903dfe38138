"""``hydra/launcher=ray``: hydra-ray-launcher (1.2.x) with two fixes for today's Ray.

hydra-ray-launcher is the Ray launcher Hydra users know; it is used as it is (its config keys,
its ``ray.init`` / ``ray.remote`` settings, its job bookkeeping), except that

- it passes ``object_store_memory`` to every ``ray.init`` (a CI workaround of the plugin), which
  Ray refuses when it connects to a running cluster (``RAY_ADDRESS``): the setting is left to
  Ray unless the config gives one;
- its tasks run in the directory their Ray node was started from, so the relative paths of a
  run (the sweep directory ``outputs/multirun/...``, a relative ``dataset.root``) would resolve
  there rather than where ``prune-run`` was started: each task first changes to the launch
  directory (``hydra.runtime.cwd``, which a cluster must share, like ``cache.dir``). That needs
  the plugin's ``launch`` with another remote function, so it is restated here (the plugin
  offers no hook for it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as _PluginRayLauncher
except ImportError:  # the plugin (and Ray) are optional: pip install -e '.[ray]'
    _PluginRayLauncher = None


def run_job_in_launch_dir(
    hydra_context: Any, sweep_config: DictConfig, task_function: Any, singleton_state: Any
) -> JobReturn:
    """The plugin's remote job, run from the launch directory (module docstring)."""
    from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job

    launch_dir = str(sweep_config.hydra.runtime.cwd)
    try:
        os.chdir(launch_dir)
    except OSError as exc:
        raise RuntimeError(
            f"this Ray worker cannot enter the launch directory {launch_dir} ({exc}): the "
            "workers must share the filesystem prune-run was started from"
        ) from None
    return _run_job(hydra_context, sweep_config, task_function, singleton_state)


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
            # hydra_ray_launcher._core.launch, with run_job_in_launch_dir as the remote function
            import ray
            from hydra.core.singleton import Singleton
            from hydra.core.utils import configure_log, filter_overrides, setup_globals
            from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

            setup_globals()
            assert self.config is not None and self.hydra_context is not None
            assert self.task_function is not None
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            log.info(
                "Ray Launcher is launching %d jobs, sweep output dir: %s",
                len(job_overrides),
                sweep_dir,
            )
            start_ray(self.ray_cfg.init)
            remote_opts = OmegaConf.to_container(self.ray_cfg.remote, resolve=True) or {}
            remote = ray.remote(**remote_opts)(run_job_in_launch_dir)
            runs = []
            for offset, overrides in enumerate(job_overrides):
                idx = initial_job_idx + offset
                log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
                sweep_config = self.hydra_context.config_loader.load_sweep_config(
                    self.config, list(overrides)
                )
                with open_dict(sweep_config):
                    sweep_config.hydra.job.id = f"job_id_for_{idx}"
                    sweep_config.hydra.job.num = idx
                runs.append(
                    remote.remote(
                        self.hydra_context,
                        sweep_config,
                        self.task_function,
                        Singleton.get_state(),
                    )
                )
            return [ray.get(run) for run in runs]

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
