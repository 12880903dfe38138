"""prune-cli's Hydra launchers (found by Hydra's plugin scan of the ``hydra_plugins`` namespace):

- ``gpu_pool`` (:mod:`.gpu_pool_launcher`): one machine, several GPUs, one job per GPU at a time;
- ``ray`` / ``ray_cluster`` (:mod:`.ray_launcher`): hydra-ray-launcher's launcher, made to work
  against a running Ray cluster.

The configs are ``configs/hydra/launcher/{gpu_pool,ray,ray_cluster}.yaml``.
"""
