"""``prune-run``: parse the command line with Hydra and run the pipeline.

Thin by design: it finds the config tree, checks the group names a user typed (so that a typo
gives one line naming the valid choices rather than Hydra's multi-line report), expands
``resume=RUN_DIR``, and hands each composed config to :class:`prune_cli.pipeline.Pipeline`.

No traceback reaches the terminal. Every failure is one line on stderr
(``prune-run: error: ...``) and a non-zero exit:

- expected failures (a bad config value or key, unreadable data, a bad checkpoint, a NaN loss,
  out of memory, disk full, no permission: :mod:`prune_cli.errors`) exit with status 2;
- anything else is a bug in prune-cli: exit status 1, and the line says where the traceback is.

The full traceback of a failed run is kept in its log file (``<run dir>/prune-run.log``), and
its ``metrics.json`` says ``status: failed`` with the message. A failure before any run
directory exists (Hydra cannot compose the config) needs no traceback; an unexpected one is
written to a file in the temporary directory, named on stderr. ``HYDRA_FULL_ERROR=1`` shows
Hydra's own tracebacks for composition errors, as usual.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import gc
import logging
import os
import re
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prune_cli.errors import (
    CheckpointError,
    ConfigError,
    DataNotFoundError,
    UserError,
    explain,
    one_line,
    unknown_choice,
)
from prune_cli.renamed import renamed_key_message

log = logging.getLogger("prune_cli")

#: Config groups whose names users type; checked before Hydra composes anything.
CHECKED_GROUPS = (
    "model",
    "dataset",
    "method",
    "train",
    "finetune",
    "experiment",
    "logger",
    "weights",
)
#: ``weights`` is in the defaults list with no default (``weights=NAME``); ``experiment`` is
#: not (it is appended after everything, so that it can override every group). Both take
#: either spelling on the command line: ``NAME`` is mapped onto the one Hydra wants.
GROUP_SPELLING = {"weights": "weights", "+weights": "weights", "experiment": "+experiment"}
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


def find_config_dir() -> Path:
    """The ``configs/`` tree: beside the package in a checkout (editable install), or inside it
    as ``prune_cli/configs`` in a regular install."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs", here / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"prune-cli configs not found next to {here}; reinstall the package")


CONFIG_DIR = find_config_dir()
#: ``(message, exit status)`` of every job of this process that failed.
_failures: list[tuple[str, int]] = []
#: :func:`entry` turned the garbage collector off until the first job's imports are done.
_gc_paused = False


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
        names = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        for name in filter(None, (n.strip() for n in names.split(","))):
            if name not in choices:
                raise unknown_choice(key, name, choices)


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


def several_loggers(args: list[str]) -> list[str]:
    """``logger=tensorboard,mlflow`` means both trackers for every job, like Hydra's list
    ``logger=[tensorboard,mlflow]``, with or without ``-m``: Hydra would refuse the comma form
    in a single run and make it a sweep (one job per tracker, the same experiment run twice)
    with ``-m``. A sweep over loggers is still possible: ``-m logger=choice(csv,mlflow)``."""
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        listed = value.startswith(("[", "'")) or "(" in value  # choice(...): an explicit sweep
        if key.lstrip("+") == "logger" and "," in value and not listed:
            arg = f"{key}=[{value}]"
        out.append(arg)
    return out


def group_selection(args: list[str]) -> list[str]:
    """``experiment=NAME`` -> ``+experiment=NAME`` and ``+weights=NAME`` -> ``weights=NAME``
    (:data:`GROUP_SPELLING`), so that either spelling selects the group."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in GROUP_SPELLING:
            arg = f"{GROUP_SPELLING[key]}={value}"
        out.append(arg)
    return out


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


def traceback_to_log(exc: BaseException, run_dir: Path) -> Path | None:
    """Write ``exc``'s full traceback to the run's log file only (not to the terminal) and
    return that file; the log handlers are Hydra's (``hydra/job_logging``)."""
    from prune_cli import distributed

    if not distributed.is_main():
        return None
    record = logging.LogRecord(
        log.name, logging.ERROR, __file__, 0, "full traceback of the failure above:", None,
        (type(exc), exc, exc.__traceback__),
    )  # fmt: skip
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        handler.handle(record)
    if files:
        return Path(files[0].baseFilename)
    path = run_dir / "prune-run.log"  # logging turned off (hydra/job_logging=none): write it
    try:
        with path.open("a") as f:
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError:
        return None
    return path


def setting_hint(exc: Exception, cfg: DictConfig) -> str:
    """For a dataset or a known checkpoint that is not where the config points: the setting
    that points there. Data and checkpoints live outside the repository, found through
    ``dataset.root`` (default ``$PRUNE_CLI_DATA/<dataset>``) and ``$PRUNE_CLI_MODELS``."""
    if isinstance(exc, DataNotFoundError):
        name = OmegaConf.select(cfg, "dataset.name", default="<dataset>")
        return f"; point dataset.root=DIR at it (default: $PRUNE_CLI_DATA/{name})"
    weights = OmegaConf.select(cfg, "weights.name", default=None, throw_on_resolution_failure=False)
    if isinstance(exc, CheckpointError) and weights and "does not exist" in str(exc):
        return (
            f"; weights={weights} looks for its file under $PRUNE_CLI_MODELS: set it to the "
            "folder that holds it, or pass pretrained=PATH"
        )
    return ""


def report_failure(exc: Exception, run_dir: Path, hint: str = "") -> tuple[str, int]:
    """One line for a failed job (logged, and printed on stderr) and its exit status; the
    traceback goes to the run's log file. ``hint`` ends the line of an expected failure."""
    failure = explain(exc)
    if failure is not None:
        message, status = one_line(failure) + hint, EXIT_USER_ERROR
        log.error("%s", message)
        traceback_to_log(exc, run_dir)
    else:
        log.error("internal error: %s: %s", type(exc).__name__, one_line(exc))
        where = traceback_to_log(exc, run_dir)
        kept = f"full traceback in {where}" if where else "no log file to keep the traceback"
        message = (
            f"internal error (a bug in prune-cli): {type(exc).__name__}: {one_line(exc)}; {kept}"
        )
        status = EXIT_INTERNAL_ERROR
    print(f"prune-run: error: {message}", file=sys.stderr)
    return message, status


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _task(cfg: DictConfig) -> float | None:
    from prune_cli.pipeline import Pipeline

    _imports_done()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = Pipeline(cfg, run_dir).run()
    except Exception as exc:
        # One line, no traceback; the run directory keeps metrics.json with the failure and
        # the log the traceback, and in a sweep the other jobs go on.
        _failures.append(report_failure(exc, run_dir, setting_hint(exc, cfg)))
        return None
    final = metrics.get("final", {})
    log.info("run finished: %s (metrics.json)", run_dir)
    return final.get("top1")


def composition_error(exc: BaseException) -> str | None:
    """Hydra's report of a config it cannot compose, as one line (None if ``exc`` is not one).

    An unknown key (``train.foo=1`` without ``+``) names the valid keys of its group.
    """
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = str(cause.full_key)
        parent = getattr(cause, "parent_node", None)
        if parent is not None and "not in struct" in str(cause):
            renamed = renamed_key_message(key)
            if renamed is not None:
                return renamed
            group, _, _ = key.rpartition(".")
            valid = sorted(k for k in parent if k != "hydra")
            extra = f" (a new model option: +{key}=...)" if group == "model" else ""
            where = f"of {group}" if group else "of the config"
            return f"unknown key {key}; valid keys {where}: {', '.join(valid)}{extra}"
        return f"{key}: {one_line(cause)}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override {exc.override!r}: {one_line(exc)} (see {_GRAMMAR})"
    if isinstance(exc, MissingConfigException):
        first = one_line(exc)
        options = getattr(exc, "options", None)
        return f"{first}; choose one of: {', '.join(options)}" if options else first
    if isinstance(exc, (hydra.errors.HydraException, OmegaConfBaseException)):
        return " ".join(str(exc).split())
    return None


_GRAMMAR = "https://hydra.cc/docs/1.2/advanced/override_grammar/basic"


def _keep_traceback(exc: BaseException) -> Path | None:
    """An unexpected error outside any run: its traceback in a file of the temp directory."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(tempfile.gettempdir()) / f"prune-run-{stamp}-{os.getpid()}.traceback.txt"
    try:
        path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError:
        return None
    return path


def _outside_run(exc: Exception) -> tuple[str, int]:
    """One line and exit status for a failure before or around the jobs (composition,
    creating the run directory, the sweep launcher)."""
    composed = composition_error(exc)
    if composed is not None:
        return composed, EXIT_USER_ERROR
    failure = explain(exc)
    if failure is not None:
        return one_line(failure), EXIT_USER_ERROR
    where = _keep_traceback(exc)
    kept = f"full traceback in {where}" if where else "the traceback could not be written"
    message = f"internal error (a bug in prune-cli): {type(exc).__name__}: {one_line(exc)}; {kept}"
    return message, EXIT_INTERNAL_ERROR


def main() -> None:
    """Console entry point of ``prune-run``."""
    args = sys.argv[1:]
    # Started by torchrun: one run on several processes (prune_cli.distributed, DDP).
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        check_overrides(args)
        check_mandatory(args)
        check_model_options(args)
        args = several_loggers(group_selection(expand_resume(args)))
        if torchrun:
            from prune_cli import distributed

            args = distributed.torchrun_overrides(args, CONFIG_DIR / "config.yaml")
    except UserError as exc:
        print(f"prune-run: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    sys.argv = [sys.argv[0], *args]
    # configs/hydra/launcher/ray.yaml shares its name with hydra-ray-launcher's own config on
    # purpose (users type hydra/launcher=ray); Hydra's notice about that is noise to them.
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against")
    developer = bool(os.environ.get("HYDRA_FULL_ERROR"))
    # Hydra then re-raises instead of printing its own multi-line report, and we print one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _task()
    except KeyboardInterrupt:
        print("prune-run: interrupted (metrics.json says so; resume=RUN_DIR continues the run)",
              file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        if developer:
            raise
        message, status = _outside_run(exc)
        print(f"prune-run: error: {message}", file=sys.stderr)
        sys.exit(status)
    finally:
        if not developer:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        if torchrun:
            distributed.shutdown()
    from prune_cli.callbacks import SWEEP_FAILURES

    if _failures or SWEEP_FAILURES:
        if SWEEP_FAILURES and not _failures:  # jobs that failed in launcher worker processes
            print(f"prune-run: error: {SWEEP_FAILURES[0]}", file=sys.stderr)
        # A bug (status 1) outranks the user errors (status 2) of other jobs.
        sys.exit(min((status for _, status in _failures), default=EXIT_USER_ERROR))


def _imports_done() -> None:
    """After the first job's imports (torch, the pipeline): freeze the objects they made and
    turn the garbage collector back on (see :func:`entry`)."""
    global _gc_paused
    if _gc_paused:
        gc.freeze()  # later collections skip them: their cost no longer grows with torch's
        gc.enable()
        _gc_paused = False


def entry() -> NoReturn:
    """``prune-run`` as a program (the console script, ``python -m prune_cli.cli``):
    :func:`main` in a process that ends with it, with two savings :func:`main` alone cannot
    make for its in-process callers.

    - The cyclic garbage collector is off while torch and the pipeline import: their ~400,000
      objects otherwise set off full collections during the import (0.2 s), and frozen after
      it (:func:`_imports_done`) they are left out of every later one.
    - The process ends with ``os._exit`` after what a normal exit runs first (non-daemon
      threads joined, threading and ``atexit`` hooks: log files, trackers, launcher workers;
      output flushed), skipping the interpreter's teardown of torch's modules and objects one
      by one: 0.7-0.9 s of every run and sweep on 2 CPU cores, doing nothing a user sees.
    """
    global _gc_paused
    if gc.isenabled():
        gc.disable()
        _gc_paused = True
    try:
        main()
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc.code)
    _leave(status)


def _exit_status(code: object) -> int:
    """The exit status ``sys.exit(code)`` gives (a message is printed and gives 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _leave(status: int) -> NoReturn:
    """Exit with ``status`` as :func:`entry` says: the interpreter's own exit steps up to its
    teardown, then ``os._exit``."""
    try:
        # Joins the non-daemon threads and runs the hooks registered with the threading module
        # (concurrent.futures and loky executors), as the interpreter's exit does first.
        threading._shutdown()  # type: ignore[attr-defined]
    except Exception:  # another Python's internals: leave the usual way
        sys.exit(status)
    atexit._run_exitfuncs()  # logging.shutdown, trackers, Ray, ... (errors are printed there)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or gone: nothing to flush
            stream.flush()
    # What C code printed (ONNX Runtime, oneDNN) may sit in stdio buffers; where there is no C
    # library to ask (Windows), nothing of ours is buffered there.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)
    os._exit(status)


if __name__ == "__main__":
    entry()
