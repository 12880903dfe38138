"""The configuration reference, ``docs/configuration.md``, generated from the code and configs/.

    python -m prune_cli.docgen            # write docs/configuration.md
    python -m prune_cli.docgen --check    # exit 1 if the page is stale or a key is undocumented

Every key of every config group gets its type, what is valid, its default and one line of
meaning, from two sources the project keeps anyway:

- the typed options (:func:`options_for` maps a group and option to its
  :class:`~prune_cli.options.Options` class) give the type and the range or choices, in the words
  of the one-line errors (:func:`prune_cli.options.describe`);
- the group's YAML files (``configs/<group>/<option>.yaml``) give the default, as written, and
  the meaning: the comment on the key's line (continued on comment-only lines aligned under it),
  else the comment block right above the key; a file without one borrows the same key's comment
  from another file of the group, then the ``#:`` comment above the field in its options class.

A key with no meaning anywhere is listed by :func:`undocumented` instead of being written with an
empty cell; ``tests/test_docs.py`` fails on it and on a page that differs from :func:`render`.
Keys set by the files that act on the whole config (``experiment/``, ``budget/``, ``weights/``)
must be keys documented in their own group (:func:`unknown_overrides`).

Why written here: Sphinx autodoc and pydantic's JSON schema describe Python classes, not Hydra
groups composed from YAML files whose comments carry the meanings, and neither knows the
defaults, which live in the YAML files.

The only project imports are in :func:`options_for` (the typed options of each group), so the
generator follows the options wherever they move.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
import textwrap
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from omegaconf import OmegaConf
from pydantic import BaseModel

from prune_cli.options import describe

#: The config tree (``prune_cli/configs`` links to the repository's ``configs/``).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: Where the page goes, relative to the repository root.
PAGE = Path("docs") / "configuration.md"

#: The groups, in the page's order: (group, how its options are shown). ``merged``: one table of
#: keys for all the group's files; ``per_option``: one table per file; ``global``: files that set
#: keys of other groups (``# @package _global_``), listed with what they set.
GROUPS: tuple[tuple[str, str], ...] = (
    ("model", "merged"),
    ("dataset", "per_option"),
    ("method", "per_option"),
    ("train", "merged"),
    ("finetune", "merged"),
    ("logger", "merged"),
    ("weights", "global"),
    ("budget", "global"),
    ("experiment", "global"),
    ("experiment/template_reuse_cifar100_arm", "global"),
    ("hydra/launcher", "merged"),
)
#: Top-level keys of config.yaml that are groups of their own (documented in their sections).
GROUP_KEYS = ("model", "dataset", "method", "train", "finetune", "logger", "weights")


# ----------------------------------------------------------------------------- typed options
def options_for(group: str, option: str | None = None) -> type[BaseModel] | None:
    """The typed options of ``group`` (``""``: the top level of config.yaml); for ``dataset``
    and ``method``, of the dataset or method named ``option`` (its ``name:`` key). None where
    the keys are not typed (``model`` beyond its name, launchers)."""
    from prune_cli import schema
    from prune_cli.data import DATASET_OPTIONS
    from prune_cli.methods import METHODS

    if group == "dataset":
        return DATASET_OPTIONS.get(str(option))
    if group == "method":
        return METHODS.get(str(option)).Options if option in METHODS else None
    by_group: dict[str, type[BaseModel]] = {
        "": schema.RunOptions,
        "model": schema.ModelOptions,
        "train": schema.RunOptions.model_fields["train"].annotation,
        "finetune": schema.RunOptions.model_fields["finetune"].annotation,
        "logger": schema.RunOptions.model_fields["logger"].annotation,
        "weights": schema.WeightsOptions,
    }
    return by_group.get(group)


def _strip(annotation: Any) -> tuple[Any, bool]:
    """``annotation`` without ``Annotated`` wrappers and ``| None``; whether None was allowed."""
    optional = False
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) == len(get_args(annotation)) or len(args) != 1:
                return annotation, optional
            optional, annotation = True, args[0]
        else:
            return annotation, optional


def _field_annotation(cls: type[BaseModel], key: str) -> Any:
    info = cls.model_fields[key]
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def _subgroup(cls: type[BaseModel] | None, key: str) -> type[BaseModel] | None:
    """The options class of ``cls``'s field ``key`` when that field is a group of keys."""
    if cls is None or key not in cls.model_fields:
        return None
    inner, _ = _strip(cls.model_fields[key].annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _typed_field(cls: type[BaseModel] | None, path: str) -> tuple[type[BaseModel], str] | None:
    """The options class and field name that type the dotted ``path``, if any."""
    parts = path.split(".")
    for part in parts[:-1]:
        cls = _subgroup(cls, part)
    if cls is None or parts[-1] not in cls.model_fields:
        return None
    return cls, parts[-1]


def type_name(annotation: Any) -> str:
    """A short name of a field's type: ``int``, ``float``, ``bool``, ``str``, ``list[int]``,
    ``str | mapping``, with ``| null`` when null is allowed."""
    inner, optional = _strip(annotation)
    origin = get_origin(inner)
    if origin is Literal:
        name = "str"
    elif origin in (Union, types.UnionType):
        name = " | ".join(type_name(a) for a in get_args(inner) if a is not type(None))
        optional = optional or type(None) in get_args(inner)
    elif origin in (list, tuple):
        args = get_args(inner)
        name = f"list[{type_name(args[0]) if args else 'any'}]"
    elif (
        origin is dict
        or inner is dict
        or (isinstance(inner, type) and issubclass(inner, BaseModel))
    ):
        name = "mapping"
    else:
        names = {int: "int", float: "float", bool: "bool", str: "str"}
        name = names.get(inner, "any")
    return f"{name} | null" if optional and "null" not in name else name


def _valid_text(annotation: Any) -> str:
    """What a value must be, as the one-line errors say it (empty where the type says it all)."""
    inner, optional = _strip(annotation)
    if get_origin(inner) in (Union, types.UnionType):
        parts = [_valid_text(a) or type_name(a) for a in get_args(inner) if a is not type(None)]
        text = ", or ".join(parts)
        return f"{text}, or null" if optional or type(None) in get_args(inner) else text
    if isinstance(inner, type) and issubclass(inner, BaseModel) and not inner.model_fields:
        return ""
    if get_origin(inner) is dict:
        return "a mapping"
    text = describe(annotation)
    return "" if text in ("true, false", "a string") else text


@cache
def _field_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines right above each field of ``cls`` (and of its bases)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass in (object, BaseModel) or not issubclass(klass, BaseModel):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        tree = ast.parse(source)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node in body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                above: list[str] = []
                row = node.lineno - 2
                while row >= 0 and lines[row].strip().startswith("#:"):
                    above.insert(0, lines[row].strip()[2:].strip())
                    row -= 1
                if above:
                    out[node.target.id] = " ".join(above)
    return out


# ----------------------------------------------------------------------------- YAML files
@dataclass
class Key:
    """One key of a YAML file: its dotted path, value as written, value as loaded, comment."""

    path: str
    text: str
    value: Any
    comment: str = ""


@dataclass
class YamlFile:
    """A config file: header comment, defaults list, its keys (leaves) and whether it is global."""

    group: str
    name: str
    header: str = ""
    is_global: bool = False
    #: The defaults-list entries as written (``override /model: resnet56``, ``default``).
    defaults: list[str] = field(default_factory=list)
    #: Comments of the defaults-list entries (config.yaml: what each group is).
    default_comments: dict[str, str] = field(default_factory=dict)
    #: Comments and written values by dotted path (every key, groups of keys included).
    lines: dict[str, Key] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


_KEY = re.compile(
    r"^(?P<indent> *)(?P<key>[^\s#:-][^:#]*?|'[^']*'|\"[^\"]*\") *:(?: +(?P<rest>.*))?$"
)
_ITEM = re.compile(r"^(?P<indent> *)- +(?P<rest>.*)$")


def _split_comment(rest: str) -> tuple[str, str, int]:
    """``value  # comment`` -> (value, comment, column of the ``#`` in ``rest``; -1 if none),
    leaving ``#`` inside quotes and ``${...}`` alone."""
    quote, depth = "", 0
    for i, ch in enumerate(rest):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"" and (i == 0 or rest[i - 1] in " [{,:"):
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        elif ch == "#" and depth == 0 and (i == 0 or rest[i - 1] == " "):
            return rest[:i].rstrip(), rest[i + 1 :].strip(), i
    return rest.rstrip(), "", -1


def read_yaml(group: str, name: str) -> YamlFile:
    """``configs/<group>/<name>.yaml`` with its comments (:func:`parse_yaml`)."""
    return parse_yaml(_file(group, name).read_text(), group, name)


def parse_yaml(text: str, group: str = "", name: str = "") -> YamlFile:
    """A config file's header, defaults list, keys and their comments; the values are loaded
    by OmegaConf without resolving interpolations.

    A key's comment is the one on its line, continued by comment-only lines whose ``#`` is in
    the same column; else the comment lines right above it (no blank line between). The first
    comment block of the file is its header, not a key's comment.
    """
    out = YamlFile(group, name)
    loaded = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    out.data = dict(loaded or {})  # type: ignore[arg-type]
    header: list[str] = []
    pending: list[str] = []
    stack: list[tuple[int, str]] = []
    last: Key | None = None
    last_col = -1
    in_header, block_indent = True, -1
    for raw in text.splitlines():
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip(" "))
        if block_indent >= 0:  # the lines of a block scalar (>-, |)
            if not stripped or indent > block_indent:
                continue
            block_indent = -1
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if in_header:
                if body.startswith("@package"):
                    out.is_global = "_global_" in body
                else:
                    header.append(stripped[1:].removeprefix(" "))
            elif last is not None and last_col >= 0 and raw.index("#") == last_col:
                last.comment = f"{last.comment} {body}".strip()
            else:
                pending.append(stripped[1:].removeprefix(" "))
                last, last_col = None, -1
            continue
        if not stripped:
            if not in_header:
                pending, last, last_col = [], None, -1
            elif header:
                header.append("")
            continue
        in_header = False
        item = _ITEM.match(raw)
        if item and stack and stack[-1][1] == "defaults" and indent >= stack[-1][0]:
            value, comment, _ = _split_comment(item.group("rest"))
            out.defaults.append(value)
            out.default_comments[value] = comment or "\n".join(pending)
            pending, last = [], None
            continue
        match = _KEY.match(raw)
        if not match:
            last, last_col, pending = None, -1, []
            continue
        key = match.group("key").strip("'\"")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path_ = ".".join([k for _, k in stack] + [key])
        rest = match.group("rest") or ""
        value, comment, col = _split_comment(rest)
        entry = Key(path_, value, None, comment or " ".join(p.strip() for p in pending))
        out.lines[path_] = entry
        pending = []
        last, last_col = (entry, len(raw) - len(rest) + col) if col >= 0 else (None, -1)
        if value in (">-", ">", "|", "|-", ">+", "|+"):
            block_indent = indent
        elif not value:
            stack.append((indent, key))
    out.header = "\n".join(header).strip()
    return out


def _file(group: str, name: str) -> Path:
    return (CONFIG_DIR / group / f"{name}.yaml") if group else CONFIG_DIR / f"{name}.yaml"


def group_options(group: str) -> list[str]:
    """The option names of ``group``: its YAML files, sorted."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _bases(doc: YamlFile) -> list[str]:
    """The files of the same group that ``doc``'s defaults list builds on."""
    out = []
    for entry in doc.defaults:
        if entry != "_self_" and ":" not in entry and _file(doc.group, entry).is_file():
            out.append(entry)
    return out


def _selected(doc: YamlFile, group: str) -> str | None:
    """The option of ``group`` that a global file selects (``override /method: l1_filter``)."""
    for entry in doc.defaults:
        head, _, value = entry.partition(":")
        if head.replace("override", "").strip().strip("/") == group:
            return value.strip()
    return None


# ----------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One documented key of a group."""

    key: str
    type: str = ""
    valid: str = ""
    default: str = ""
    meaning: str = ""
    #: The files of the group that set it (merged tables), and their defaults as written.
    defaults: dict[str, str] = field(default_factory=dict)


def _leaves(
    data: Mapping[str, Any], cls: type[BaseModel] | None, prefix: str = ""
) -> Iterator[tuple[str, Any]]:
    """The dotted keys of ``data`` down to its leaves; a mapping is descended into when the
    options type it as a group of keys, or when nothing types it (untyped groups)."""
    for key, value in data.items():
        if key == "defaults" and not prefix:
            continue
        path = f"{prefix}{key}"
        typed = cls is not None and key in cls.model_fields
        sub = _subgroup(cls, key)
        if isinstance(value, Mapping) and value and (sub is not None or not typed):
            yield from _leaves(value, sub, f"{path}.")
        else:
            yield path, value


def _show_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_show_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show_value(v) for v in value) + "]"
    return str(value)


def _written(doc: YamlFile, path: str, value: Any) -> str:
    key = doc.lines.get(path)
    if key is not None and key.text and key.text not in (">-", ">", "|"):
        return key.text
    return _show_value(value)


def _merged_data(group: str, name: str) -> tuple[dict[str, Any], list[YamlFile]]:
    """The keys of a file with its bases applied (bases first), and the files involved."""
    doc = read_yaml(group, name)
    data: dict[str, Any] = {}
    docs: list[YamlFile] = []
    for base in _bases(doc):
        base_data, base_docs = _merged_data(group, base)
        data = _merge(data, base_data)
        docs += base_docs
    return _merge(data, doc.data), [*docs, doc]


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
        )
    return out


def _meaning(path: str, docs: list[YamlFile], cls: type[BaseModel] | None) -> str:
    for doc in reversed(docs):  # the file itself first, then its bases
        key = doc.lines.get(path)
        if key is not None and key.comment:
            return key.comment
    typed = _typed_field(cls, path)
    if typed is not None:
        return _field_comments(typed[0]).get(typed[1], "")
    return ""


def _describe(path: str, value: Any, cls: type[BaseModel] | None, untyped: str) -> tuple[str, str]:
    typed = _typed_field(cls, path)
    if typed is not None:
        annotation = _field_annotation(*typed)
        return type_name(annotation), _valid_text(annotation)
    kinds = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping"}
    kind = next((v for k, v in kinds.items() if isinstance(value, k)), "any")
    if isinstance(value, str) and value.startswith("${"):
        kind = "any"
    return kind, untyped


def file_rows(
    group: str, name: str, cls: type[BaseModel] | None, untyped: str = "", typed_only: bool = True
) -> dict[str, Row]:
    """The documented keys of one file of ``group`` (bases applied), typed by ``cls``; with
    ``typed_only``, also the keys the options know that the file leaves out, where the options
    say what they mean (``#:``)."""
    data, docs = _merged_data(group, name)
    rows: dict[str, Row] = {}
    for path, value in _leaves(data, cls):
        owner = next((d for d in reversed(docs) if path in d.lines), docs[-1])
        kind, valid = _describe(path, value, cls, untyped)
        rows[path] = Row(path, kind, valid, _written(owner, path, value), _meaning(path, docs, cls))
    if typed_only:
        rows.update(_typed_only_rows(cls, rows, untyped))
    return rows


def _typed_only_rows(
    cls: type[BaseModel] | None, rows: Mapping[str, Row], untyped: str
) -> dict[str, Row]:
    """Rows for the keys ``cls`` accepts that no file sets, where the options say what they
    mean (an optional key such as ``experiment_arm``); their default is the options' own."""
    out: dict[str, Row] = {}
    for path in _typed_keys(cls):
        if path in rows or any(path.startswith(f"{r}.") for r in rows):
            continue
        meaning = _meaning(path, [], cls)
        if not meaning:
            continue
        typed = _typed_field(cls, path)
        assert typed is not None
        info = typed[0].model_fields[typed[1]]
        default = (
            "" if info.is_required() else _show_value(info.get_default(call_default_factory=True))
        )
        kind, valid = _describe(path, None, cls, untyped)
        shown = "unset" if default in ("", "null") else f"{default} (unset)"
        out[path] = Row(path, kind, valid, shown, meaning)
    return out


def _typed_keys(cls: type[BaseModel] | None, prefix: str = "") -> Iterator[str]:
    if cls is None:
        return
    for key in cls.model_fields:
        sub = _subgroup(cls, key)
        if sub is not None and sub.model_fields:
            yield from _typed_keys(sub, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


# ----------------------------------------------------------------------------- the groups
@dataclass
class Section:
    """One group of the page: its options (file name -> description) and documented keys."""

    group: str
    style: str
    options: dict[str, YamlFile] = field(default_factory=dict)
    #: merged: one table; per_option: one table per option; global: none.
    rows: dict[str, Row] = field(default_factory=dict)
    per_option: dict[str, dict[str, Row]] = field(default_factory=dict)
    #: Global files: the keys they set (dotted, from the config's root).
    sets: dict[str, list[str]] = field(default_factory=dict)


def _option_cls(group: str, name: str) -> type[BaseModel] | None:
    if group in ("dataset", "method"):
        data, _ = _merged_data(group, name)
        return options_for(group, data.get("name", name))
    return options_for(group, name)


UNTYPED = {
    "model": "checked by the model's constructor",
    "hydra/launcher": "the launcher plugin's",
}


def top_section() -> Section:
    """The top level of configs/config.yaml (the group keys are documented in their sections)."""
    section = Section("", "merged", {"config": read_yaml("", "config")})
    rows = file_rows("", "config", options_for(""), "Hydra's")
    section.rows = {k: r for k, r in rows.items() if k.split(".")[0] not in GROUP_KEYS}
    return section


def group_section(group: str, style: str) -> Section:
    section = Section(group, style)
    for name in group_options(group):
        doc = read_yaml(group, name)
        section.options[name] = doc
        if style == "global":
            section.sets[name] = _global_keys(doc)
            continue
        cls = _option_cls(group, name)
        rows = file_rows(group, name, cls, UNTYPED.get(group, ""), style == "per_option")
        if style == "per_option":
            section.per_option[name] = rows
            continue
        for path, row in rows.items():
            merged = section.rows.setdefault(path, Row(path, row.type, row.valid))
            merged.meaning = merged.meaning or row.meaning
            merged.defaults[name] = row.default
    if style == "merged":
        for path, row in _typed_only_rows(options_for(group), section.rows, "").items():
            row.defaults = {name: row.default for name in section.options}
            section.rows[path] = row
    if group == "weights":  # the weights.* keys: typed, set by every file of the group
        docs = list(section.options.values())
        for path in _typed_keys(options_for("weights")):
            full = f"weights.{path}"
            row = Row(full)
            kind, row.valid = _describe(path, None, options_for("weights"), "")
            row.type = kind
            row.meaning = next(
                (d.lines[full].comment for d in docs if full in d.lines and d.lines[full].comment),
                "",
            ) or _meaning(path, [], options_for("weights"))
            for name, doc in section.options.items():
                value = doc.data.get("weights", {}).get(path)
                if full in doc.lines or value is not None:
                    row.defaults[name] = _written(doc, full, value)
            section.rows[full] = row
    return section


def _global_keys(doc: YamlFile) -> list[str]:
    """The dotted keys a global file sets (leaves, as the typed options define them)."""
    out = []
    for top, value in doc.data.items():
        if top == "defaults":
            continue
        if not isinstance(value, Mapping) or not value:
            out.append(top)
            continue
        if top == "hydra":
            out += [f"hydra.{k}" for k, _ in _leaves(value, None) if not k.startswith("sweeper.")]
            if "sweeper" in value:
                out.append("hydra.sweeper.params")
            continue
        cls = _cls_for_global(doc, top)
        out += [f"{top}.{k}" for k, _ in _leaves(value, cls)]
    return out


def _cls_for_global(doc: YamlFile, top: str) -> type[BaseModel] | None:
    if top in ("dataset", "method"):
        chosen = _selected(doc, top) or ("magnitude" if top == "method" else "shapes")
        return _option_cls(top, chosen)
    if top in ("train", "finetune", "logger", "weights", "model"):
        return options_for(top)
    return None


def sections() -> list[Section]:
    return [top_section()] + [group_section(g, s) for g, s in GROUPS]


# ----------------------------------------------------------------------------- checks
def undocumented(all_sections: list[Section] | None = None) -> list[str]:
    """Every key of configs/ (and of the typed options) that has no one-line meaning."""
    out = []
    for section in all_sections or sections():
        prefix = f"{section.group}: " if section.group else "config.yaml: "
        for row in section.rows.values():
            if not row.meaning:
                out.append(f"{prefix}{row.key}")
        for name, rows in section.per_option.items():
            out += [f"{section.group}/{name}: {r.key}" for r in rows.values() if not r.meaning]
    return out


def unknown_overrides(all_sections: list[Section] | None = None) -> list[str]:
    """Keys that the global files (experiments, budgets, weights) set but no group documents."""
    all_sections = all_sections or sections()
    known: dict[str, set[str]] = {"": set(all_sections[0].rows)}
    for section in all_sections[1:]:
        top = section.group.split("/")[0]
        keys = set(section.rows)
        for rows in section.per_option.values():
            keys |= set(rows)
        known.setdefault(top, set()).update(keys)
    out = []
    for section in all_sections:
        for name, keys in section.sets.items():
            for key in keys:
                if not _known(key, known):
                    out.append(f"{section.group}/{name}: {key}")
    return out


def _known(key: str, known: Mapping[str, set[str]]) -> bool:
    if key == "hydra.sweeper.params" or key in known[""]:
        return True
    head, _, rest = key.partition(".")
    if head == "hydra" and rest.startswith("launcher."):
        head, rest = "hydra", rest.removeprefix("launcher.")
        return _prefixed(rest, known.get("hydra", set()))
    if head == "weights":
        return key in known.get("weights", set())
    return _prefixed(rest, known.get(head, set()))


def _prefixed(key: str, keys: set[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:n]) in keys for n in range(1, len(parts) + 1))


# ----------------------------------------------------------------------------- the page
def _md(text: str) -> str:
    """Prose from a comment, safe in Markdown: ``<root>`` is not a tag, ``*_last.pt`` and
    ``_target_`` are not emphasis."""
    text = text.replace("<", "&lt;").replace("*", "\\*")
    return re.sub(r"(?<![\w\\])_", r"\\_", text)


def _cell(text: str) -> str:
    """Prose in a table cell."""
    return _md(text).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """A value as code in a table cell."""
    return "`" + text.replace("|", "\\|") + "`" if text else ""


def _table(rows: list[Row], with_default: bool = True) -> list[str]:
    head = "| key | type | valid | default | meaning |"
    out = [head, "|---|---|---|---|---|"]
    for row in rows:
        out.append(
            f"| `{row.key}` | {_cell(row.type)} | {_cell(row.valid)} | "
            f"{row.default if not with_default else _code(row.default)} | {_cell(row.meaning)} |"
        )
    return out


def _merged_default(row: Row, options: list[str]) -> str:
    """One default, or the defaults per option (``value (option, option)``)."""
    shown: dict[str, list[str]] = {}
    for name, value in row.defaults.items():
        display = "<option>" if row.key == "name" and value == name else value
        shown.setdefault(display, []).append(name)
    if len(shown) == 1 and len(row.defaults) == len(options):
        return _code(next(iter(shown)))
    parts = [f"{_code(value)} ({', '.join(names)})" for value, names in shown.items()]
    return "; ".join(parts)


#: A full stop that ends a sentence: not after an initial ("Y."), "al.", "e.g." or "vs.".
_SENTENCE_END = re.compile(
    r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)(?<!\b[A-Za-z])\.\s+(?=[A-Z(])"
)


def _first_sentence(text: str) -> str:
    """The first sentence of a file's header (its prose, without the example commands)."""
    prose = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("  "):
            if prose:
                break
            continue
        prose.append(line.strip())
    flat = " ".join(prose)
    match = _SENTENCE_END.search(flat)
    return (flat[: match.start() + 1] if match else flat).rstrip(":")


def _header_block(text: str) -> list[str]:
    """A file's header comment as Markdown: prose lines as a paragraph, indented lines (the
    example commands) as a code block."""
    out: list[str] = []
    prose: list[str] = []
    code: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("  ") and line.strip():
            if prose:
                out += [" ".join(prose), ""]
                prose = []
            code.append(line[2:])
            continue
        if code:
            out += ["```text", *code, "```", ""]
            code = []
        if line.strip():
            prose.append(_md(line.strip()))
        elif prose:
            out += [" ".join(prose), ""]
            prose = []
    return out


def _group_default(top: YamlFile, group: str) -> tuple[str, str]:
    for entry in top.defaults:
        head, _, value = entry.partition(":")
        if head.replace("optional", "").strip() == group:
            return value.strip(), top.default_comments.get(entry, "")
    return "", ""


def render(all_sections: list[Section] | None = None) -> str:
    """The Markdown of docs/configuration.md."""
    all_sections = all_sections or sections()
    top = all_sections[0]
    config = top.options["config"]
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m prune_cli.docgen` from the typed options and configs/;"
        " do not edit by hand. -->",
        "",
        "Every key `prune-run` accepts, group by group: its type, what is valid (the range or "
        "choices the one-line errors quote), its default as written in `configs/`, and what it "
        "means. Set a key on the command line as `key=value` (`train.lr=0.05`), pick a file of a "
        "group as `group=name` (`model=resnet56`), and see the composed config of a command with "
        "`prune-run ... --cfg job`. Keys a file does not have are added with `+key=value`. "
        "Every value is checked before any work starts (see "
        "[troubleshooting](troubleshooting.md)).",
        "",
        "The page is generated by `python -m prune_cli.docgen` from the typed options "
        "(`prune_cli/schema.py`, the methods' and datasets' options) and the YAML files and "
        "their comments; `tests/test_docs.py` fails when it is out of date.",
        "",
        "## Top level",
        "",
        "`configs/config.yaml`:",
        "",
        *_header_block(config.header),
        "| group | default | section |",
        "|---|---|---|",
        *[_group_line(s, config) for s in all_sections[1:]],
        "",
        *_table(list(top.rows.values())),
        "",
    ]
    for section in all_sections[1:]:
        out += _render_section(section, config)
    return "\n".join(out).rstrip() + "\n"


def _group_line(section: Section, config: YamlFile) -> str:
    default, comment = _group_default(config, section.group)
    if section.group == "budget":
        default = "`<model>_<dataset>`, when that file exists"
    elif default in ("", "null"):
        default = "none"
    else:
        default = f"`{default}`"
    comment = _first_sentence(comment)
    what = f" ({_cell(comment)})" if comment and section.group != "budget" else ""
    anchor = re.sub(r"[^\w\- ]", "", section.group.lower()).replace(" ", "-")
    return f"| `{section.group}` | {default}{what} | [{section.group}](#{anchor}) |"


def _title(section: Section) -> str:
    return f"{section.group}" if section.group else "Top level"


def _with_merged_default(row: Row, options: list[str]) -> Row:
    return Row(row.key, row.type, row.valid, _merged_default(row, options), row.meaning)


def _render_section(section: Section, config: YamlFile) -> list[str]:
    """One group: where its files are, its options, and its keys."""
    group = section.group
    out = [f"## {_title(section)}", "", _where(section, config), ""]
    extra = section.style == "global"
    out += [
        "| option | what it is |" + (" sets |" if extra else ""),
        "|---|---|" + ("---|" * extra),
    ]
    for name, doc in section.options.items():
        line = f"| `{name}` | {_cell(_first_sentence(doc.header))} |"
        if extra:
            chosen = [e.replace("override ", "") for e in doc.defaults if e != "_self_"]
            line += " " + ", ".join(_code(k) for k in [*chosen, *section.sets[name]]) + " |"
        out.append(line)
    out.append("")
    if section.rows:
        names = list(section.options)
        out += [*_table([_with_merged_default(r, names) for r in section.rows.values()], False), ""]
    for name, rows in section.per_option.items():
        doc = section.options[name]
        bases = _bases(doc)
        out += [f"### `{group}={name}`", "", *_header_block(doc.header)]
        if bases:  # only what the file changes; the rest is documented with its base
            out += [f"As `{group}={bases[0]}`, with:", ""]
            rows = {k: r for k, r in rows.items() if k in doc.lines}
        out += [*_table(list(rows.values())), ""]
    return out


def _where(section: Section, config: YamlFile) -> str:
    """The sentence that says where a group's files are and how one is picked."""
    group = section.group
    if group == "budget":
        return (
            "`configs/budget/<model>_<dataset>.yaml`, applied automatically to the model and "
            "dataset it is named after (the command line still overrides its keys)."
        )
    where = f"`configs/{group}/NAME.yaml`, picked with `{group}=NAME`"
    default, comment = _group_default(config, group)
    if default and default != "null":
        comment = _first_sentence(comment)
        return where + f"; default `{default}`" + (f" ({_md(comment)})." if comment else ".")
    if group in ("weights", "experiment"):
        return where + f"; none by default (`{group}=NAME` adds one)."
    return where + "."


# ----------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    all_sections = sections()
    problems = [f"undocumented key {k}" for k in undocumented(all_sections)]
    problems += [f"unknown key {k}" for k in unknown_overrides(all_sections)]
    for problem in problems:
        print(problem, file=sys.stderr)
    page = args.root / PAGE
    text = render(all_sections)
    if args.check:
        stale = not page.is_file() or page.read_text() != text
        if stale:
            print(f"{PAGE} is stale: run python -m prune_cli.docgen", file=sys.stderr)
        return 1 if stale or problems else 0
    page.write_text(text)
    print(f"wrote {page}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
