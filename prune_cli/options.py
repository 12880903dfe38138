"""Typed options: one way to read a config group (or a method's options) into a checked object.

A group is declared as an :class:`Options` subclass (a pydantic model) whose fields carry the
type, default, range and choices of each key, written with the helpers below::

    class TrainOptions(Options):
        epochs: Int(ge=1) = 4
        lr: Float(gt=0) = 0.1
        schedule: OneOf("constant", "multistep", "cosine") = "cosine"
        amp: Bool = True

:func:`parse` validates a plain mapping against it and turns the first problem into ONE line
(a :class:`~prune_cli.errors.ConfigError`) naming the key, the value and what is valid::

    train.lr 'fast' is not a number; valid: a number > 0
    train.epochs -3 is out of range; valid: an integer >= 1
    unknown train.schedule 'fast'; choose one of: constant, multistep, cosine
    unknown key train.foo; valid keys of train: amp, batch_size, epochs, ...

Integers accept ``3``, ``3.0`` and ``"3"`` (a quoted command-line value), never ``2.5`` or
``true``; booleans accept only ``true``/``false``; numbers must be finite.

Why pydantic: it checks types, ranges and enumerations of plain dicts and reports each problem
with its key path, input and constraint, from which the one-line message is built; it works the
same inside and outside Hydra (methods are also built from dicts in tests and scripts), and it
runs inside each job, so in a sweep a bad job fails alone with its own ``metrics.json``. Hydra's
structured configs check types at compose time but have no ranges, report over several lines,
and a composition error stops a whole sweep instead of one job.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict
from pydantic import ValidationError as _PydanticError

from prune_cli.errors import ConfigError

__all__ = [
    "Bool",
    "Float",
    "Int",
    "OneOf",
    "Options",
    "Text",
    "Valid",
    "describe",
    "parse",
]

OptionsT = TypeVar("OptionsT", bound="Options")


class Options(BaseModel):
    """Base of every typed group: unknown keys are errors, defaults are checked too."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class Valid:
    """Annotation metadata: how the "valid: ..." part of an error describes a type."""

    def __init__(self, text: str, plural: str | None = None) -> None:
        self.text, self.plural = text, plural or text

    def __repr__(self) -> str:
        return f"Valid({self.text!r})"


#: Integers must fit in 64 bits: PyTorch and NumPy take nothing larger.
INT_LIMIT = 2**63


def _no_bool(kind: str) -> Any:
    def check(value: Any) -> Any:
        # ``true`` is not 1 here: a boolean typed into a number is a mistake, not a value.
        if isinstance(value, bool):
            raise ValueError(f"is not {kind}")
        return value

    return BeforeValidator(check)


def _fits_int64(value: int) -> int:
    if abs(value) >= INT_LIMIT:
        raise ValueError("is too large")
    return value


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _range_text(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    low = f">= {_num(ge)}" if ge is not None else f"> {_num(gt)}" if gt is not None else ""
    high = f"<= {_num(le)}" if le is not None else f"< {_num(lt)}" if lt is not None else ""
    if low and high:
        left = "[" if ge is not None else "("
        right = "]" if le is not None else ")"
        lo, hi = (ge if ge is not None else gt), (le if le is not None else lt)
        return f"in {left}{_num(lo)}, {_num(hi)}{right}"  # type: ignore[arg-type]
    return low or high


def Int(
    *,
    ge: int | None = None,
    gt: int | None = None,
    le: int | None = None,
    lt: int | None = None,
    valid: str | None = None,
) -> Any:
    """An integer in the given range (``3``, ``3.0`` and ``"3"`` are 3; ``2.5`` and booleans
    are errors)."""
    rng = _range_text(ge, gt, le, lt)
    text = valid or f"an integer {rng}".strip()
    plural = valid or f"integers {rng}".strip()
    return Annotated[
        int,
        _no_bool("an integer"),
        AfterValidator(_fits_int64),
        Field(ge=ge, gt=gt, le=le, lt=lt),
        Valid(text, plural),
    ]


def Float(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    valid: str | None = None,
) -> Any:
    """A finite number in the given range (integers are accepted; booleans, nan and inf not)."""
    rng = _range_text(ge, gt, le, lt)
    text = valid or f"a number {rng}".strip()
    plural = valid or f"numbers {rng}".strip()
    return Annotated[
        float,
        _no_bool("a number"),
        Field(ge=ge, gt=gt, le=le, lt=lt, allow_inf_nan=False),
        Valid(text, plural),
    ]


#: ``true`` or ``false`` only (not 0/1, not "yes").
Bool = Annotated[bool, Strict(), Valid("true, false", "true or false values")]


def _number_to_text(value: Any) -> Any:
    # A directory named 2024 arrives from the command line as the int 2024.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty")
    return value


def Text(what: str = "a non-empty string") -> Any:
    """A non-empty string (a path, a name); numbers are taken as their text."""
    return Annotated[
        str, BeforeValidator(_number_to_text), AfterValidator(_not_blank), Valid(what, what)
    ]


def OneOf(*choices: str) -> Any:
    """One of ``choices`` (kept in the order given, which is the order the error lists)."""
    return Literal[choices]  # type: ignore[valid-type]


# ---------------------------------------------------------------------------- describing types
def _split_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(args) < len(get_args(annotation)):
            return args[0], True
    return annotation, False


def _with_metadata(field: Any) -> Any:
    """A model field's annotation with its metadata put back (pydantic strips the outer
    ``Annotated`` into ``FieldInfo.metadata``)."""
    if field.metadata:
        return Annotated[(field.annotation, *field.metadata)]
    return field.annotation


def describe(annotation: Any, plural: bool = False) -> str:
    """What a value of ``annotation`` must be, in words (the "valid: ..." of an error)."""
    inner, optional = _split_optional(annotation)
    text = _describe(inner, plural)
    return f"{text}, or null" if optional else text


def _describe(annotation: Any, plural: bool) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        for meta in reversed(annotation.__metadata__):
            if isinstance(meta, Valid):
                return meta.plural if plural else meta.text
        return _describe(get_args(annotation)[0], plural)
    if origin is Literal:
        return "one of: " + ", ".join(map(str, get_args(annotation)))
    if origin in (list, tuple, typing.List, typing.Tuple):  # noqa: UP006
        item = get_args(annotation)[0] if get_args(annotation) else Any
        return f"a list of {describe(item, plural=True)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "keys " + ", ".join(sorted(annotation.model_fields))
    names = {int: "an integer", float: "a number", bool: "true, false", str: "a string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _annotation_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The annotation that validated the value at ``loc`` (None if it cannot be followed)."""
    annotation: Any = model
    for part in loc:
        annotation, _ = _split_optional(annotation)
        while get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            annotation, _ = _split_optional(annotation)
        if isinstance(part, str) and isinstance(annotation, type):
            if not issubclass(annotation, BaseModel) or part not in annotation.model_fields:
                return None
            annotation = _with_metadata(annotation.model_fields[part])
        elif isinstance(part, int) and get_origin(annotation) in (list, tuple):
            args = get_args(annotation)
            annotation = args[0] if args else Any
        else:
            return None
    return annotation


def _group_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    annotation = _annotation_at(model, loc)
    annotation, _ = _split_optional(annotation)
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


# ---------------------------------------------------------------------------- the message
_PROBLEMS = {
    "int_parsing": "is not an integer",
    "int_type": "is not an integer",
    "int_from_float": "is not an integer",
    "int_parsing_size": "is too large",
    "float_parsing": "is not a number",
    "float_type": "is not a number",
    "finite_number": "is not a finite number",
    "bool_type": "is not true or false",
    "bool_parsing": "is not true or false",
    "string_type": "is not a string",
    "string_too_short": "is empty",
    "greater_than": "is out of range",
    "greater_than_equal": "is out of range",
    "less_than": "is out of range",
    "less_than_equal": "is out of range",
    "list_type": "is not a list",
    "too_short": "has too few items",
    "too_long": "has too many items",
    "model_type": "is not a group of keys",
    "model_attributes_type": "is not a group of keys",
    "dict_type": "is not a group of keys",
}


def _show(value: Any, limit: int = 60) -> str:
    """A value as the user typed it (YAML spelling for booleans and null), on one line."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    text = repr(value)
    text = " ".join(text.split())  # a multi-line string value must not break the one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix.rstrip(".")
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else f"{out}.{part}" if out else str(part)
    return out


def _message(
    model: type[BaseModel], error: Mapping[str, Any], prefix: str, context: str, group: str
) -> str:
    loc = tuple(error["loc"])
    key = _key(prefix, loc)
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        parent = _group_at(model, loc[:-1]) or model
        owner = _key(prefix, loc[:-1]) if len(loc) > 1 else group
        where = "" if context or not owner else f" of {owner}"
        valid = ", ".join(sorted(parent.model_fields)) or "none"
        return f"unknown key {key}{context}; valid keys{where}: {valid}"
    annotation = _annotation_at(model, loc)
    inner, _ = _split_optional(annotation)
    while get_origin(inner) is Annotated:
        inner = get_args(inner)[0]
    if kind == "literal_error" and get_origin(inner) is Literal:
        choices = ", ".join(map(str, get_args(inner)))
        return f"unknown {key} {_show(value)}{context}; choose one of: {choices}"
    valid = describe(annotation) if annotation is not None else None
    if kind == "missing":
        problem = f"{key} is missing"
    else:
        if kind in ("value_error", "assertion_error") and error.get("ctx", {}).get("error"):
            reason = str(error["ctx"]["error"])
        else:
            reason = _PROBLEMS.get(kind) or str(error.get("msg", "is invalid")).lower()
        problem = f"{key} {_show(value)} {reason}{context}"
    return f"{problem}; valid: {valid}" if valid else problem


def parse(
    model: type[OptionsT],
    data: Any,
    prefix: str = "",
    *,
    context: str = "",
    group: str | None = None,
) -> OptionsT:
    """``data`` (a mapping) validated into ``model``; the first problem as a one-line
    :class:`ConfigError`. ``prefix`` (``"train."``) names the keys, ``context`` is appended
    after the value (``" for method 'magnitude'"``), ``group`` names the group in
    unknown-key errors (default: the prefix)."""
    group = prefix.rstrip(".") if group is None else group
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{group or 'config'} {_show(data)} is not a group of keys; valid keys: "
            + ", ".join(sorted(model.model_fields))
        )
    try:
        return model.model_validate(dict(data))
    except _PydanticError as exc:
        raise ConfigError(_message(model, exc.errors()[0], prefix, context, group)) from None


def is_number(value: Any) -> bool:
    """A real, finite number (not a boolean)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
