"""``prune-run``: parse the command line with Hydra and run the pipeline.

Thin by design: it finds the config tree, checks the group names a user typed (so that a typo
gives one line naming the valid choices rather than Hydra's multi-line report), expands
``resume=RUN_DIR``, and hands each composed config to :class:`prune_cli.pipeline.Pipeline`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from prune_cli.errors import ConfigError, UserError, unknown_choice

log = logging.getLogger("prune_cli")

#: Config groups whose names users type; checked before Hydra composes anything.
CHECKED_GROUPS = ("model", "dataset", "method", "train", "finetune", "experiment")
EXIT_USER_ERROR = 2


def find_config_dir() -> Path:
    """The ``configs/`` tree: beside the package in a checkout (editable install), or inside it
    as ``prune_cli/configs`` in a regular install."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs", here / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"prune-cli configs not found next to {here}; reinstall the package")


CONFIG_DIR = find_config_dir()
_failures: list[str] = []


def group_choices(group: str) -> list[str]:
    folder = CONFIG_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def check_overrides(args: list[str]) -> None:
    """Reject unknown names in ``model=``, ``dataset=``, ``method=``... (sweep lists included)."""
    for arg in args:
        if "=" not in arg or arg.startswith("hydra"):
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in CHECKED_GROUPS or "(" in value or not value:
            continue
        choices = group_choices(key)
        for name in value.split(","):
            if name.strip() not in choices:
                raise unknown_choice(key, name.strip(), choices)


def mandatory_keys(group: str, choice: str) -> dict[str, str]:
    """``{key: comment}`` for the keys of ``configs/<group>/<choice>.yaml`` that are ``???``
    (no default), with the comment on their line as the hint."""
    path = CONFIG_DIR / group / f"{choice}.yaml"
    if not path.is_file():
        return {}
    keys: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z_][\w]*):\s*\?\?\?\s*(?:#\s*(.*))?$", line)
        if match:
            keys[match.group(1)] = (match.group(2) or "").strip()
    return keys


def check_mandatory(args: list[str]) -> None:
    """``model=torchvision`` without ``model.arch=...``: one line naming the key, rather than
    Hydra's MissingMandatoryValue traceback (it resolves ``hydra.run.dir`` from it first)."""
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in args if "=" in arg}
    for arg in args:
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key not in CHECKED_GROUPS or "(" in value or not value:
            continue
        for choice in value.split(","):
            for field, hint in mandatory_keys(key, choice.strip()).items():
                if f"{key}.{field}" not in given:
                    detail = f" ({hint})" if hint else ""
                    raise ConfigError(f"{key}={choice.strip()} needs {key}.{field}=...{detail}")


#: Model configs whose options are constructor arguments they do not list (new keys to Hydra).
OPEN_MODEL_CONFIGS = ("torchvision", "timm", "custom")


def check_model_options(args: list[str]) -> None:
    """``model=torchvision model.drop_rate=0.2``: Hydra wants ``+model.drop_rate=0.2`` for a key
    the config file lacks; say so in one line rather than with Hydra's multi-line report."""
    chosen = [
        name.strip()
        for arg in args
        if arg.partition("=")[0].lstrip("+~") == "model"
        for name in arg.partition("=")[2].split(",")
    ]
    if not chosen or any(name not in OPEN_MODEL_CONFIGS for name in chosen):
        return
    known = {
        key for name in chosen for key in OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    }
    for arg in args:
        key, _, value = arg.partition("=")
        if key.startswith("model.") and key.split(".")[1] not in known:
            raise ConfigError(
                f"{arg}: an option model={chosen[0]} does not list; pass it as +{key}={value}"
            )


def expand_resume(args: list[str]) -> list[str]:
    """``resume=RUN_DIR``: re-run that run's own overrides in its directory with resume=true."""
    out: list[str] = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key != "resume" or value.lower() in ("true", "false", "null", ""):
            out.append(arg)
            continue
        run_dir = Path(value).expanduser().resolve()
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            raise UserError(
                f"resume={value!r}: not a prune-run directory (no {overrides_file}); "
                "pass the run directory printed by the interrupted run, or resume=true"
            )
        saved = [o for o in OmegaConf.load(overrides_file) if not str(o).startswith("resume=")]
        out += [*map(str, saved), "resume=true", f"hydra.run.dir={run_dir}"]
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _task(cfg: DictConfig) -> float | None:
    from prune_cli.pipeline import Pipeline

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = Pipeline(cfg, run_dir).run()
    except UserError as exc:
        # One line, no traceback; the run directory keeps metrics.json with the failure, and
        # in a sweep the other jobs go on.
        message = str(exc).strip().splitlines()[0]
        log.error("%s", message)
        print(f"prune-run: error: {message}", file=sys.stderr)
        _failures.append(message)
        return None
    final = metrics.get("final", {})
    log.info("run finished: %s (metrics.json)", run_dir)
    return final.get("top1")


def main() -> None:
    """Console entry point of ``prune-run``."""
    args = sys.argv[1:]
    # Started by torchrun: one run on several processes (prune_cli.distributed, DDP).
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        check_overrides(args)
        check_mandatory(args)
        check_model_options(args)
        args = expand_resume(args)
        if torchrun:
            from prune_cli import distributed

            args = distributed.torchrun_overrides(args, CONFIG_DIR / "config.yaml")
    except UserError as exc:
        print(f"prune-run: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    sys.argv = [sys.argv[0], *args]
    try:
        _task()
    finally:
        if torchrun:
            distributed.shutdown()
    from prune_cli.callbacks import SWEEP_FAILURES

    if _failures or SWEEP_FAILURES:
        if SWEEP_FAILURES and not _failures:  # jobs that failed in launcher worker processes
            print(f"prune-run: error: {SWEEP_FAILURES[0]}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
