"""The documentation stands on its own and cannot drift from the code.

- Every relative link of every Markdown file resolves (the file, and the ``#anchor`` heading
  where one is given); every ``§`` citation anywhere in the repository (Markdown, code, configs,
  scripts) names a heading that exists; nothing points at documents outside the repository.
- ``docs/configuration.md`` is what ``python -m prune_cli.docgen`` writes, and it documents
  every key of ``configs/``.
- The README's commands compose into valid configs (fast), and its quick start, single run,
  sweep and report run as written on the offline default (``-m slow``).

Citation rules (docs/development.md "Documentation"): a section of a page of this repository is
cited as the path from the repository root, the section sign and the number a heading of that
page starts with (docs/methods.md §8.2); a page cites its own sections by the sign and the number
alone; sections of papers and issues are written ``Section 3.2``. A list that follows a citation
on the same line (docs/methods.md §3, §5, §6) cites the same page.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import unicodedata
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Directories that are not the project's own text (build outputs, environments, run outputs).
SKIP_DIRS = {
    ".git",
    "outputs",
    ".venv",
    ".ci-venv",
    "build",
    "dist",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".whl",
    "multirun",
}
#: Text files whose citations are checked.
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".ini", ".txt"}


def repo_files(suffixes: set[str]) -> list[Path]:
    """The repository's files with these suffixes (plus ``.ci/run``), symlinked trees once."""
    out = []
    for folder, dirs, files in os.walk(ROOT):  # followlinks=False: prune_cli/configs once
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix in suffixes or path.relative_to(ROOT).as_posix() == ".ci/run":
                out.append(path)
    return out


MARKDOWN = repo_files({".md"})
TEXT = repo_files(TEXT_SUFFIXES)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ----------------------------------------------------------------------------- Markdown
_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """Markdown without fenced code blocks and code spans (their brackets are not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation and symbols dropped (letters,
    digits, ``_``, ``-`` and spaces kept), spaces to hyphens; code spans keep their text."""
    text = re.sub(r"`([^`]*)`", r"\1", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    kept = [
        ch
        for ch in text
        if ch in "_- " or unicodedata.category(ch)[0] in "LNM"  # letters, numbers, marks
    ]
    return "".join(kept).replace(" ", "-")


@cache
def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (duplicates numbered as GitHub does)."""
    seen: dict[str, int] = {}
    out = set()
    for match in _HEADING.finditer(_FENCE.sub("", path.read_text())):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[str]:
    text = prose(path.read_text())
    return [m.group(1) for m in _LINK.finditer(text)] + _REF_LINK.findall(text)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """The links of ``path`` that do not resolve to a file (and heading) under ``root``."""
    out = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            out.append(f"{target}: no such file")
        elif not dest.resolve().is_relative_to(root):
            out.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{target}: no heading #{anchor} in {dest.relative_to(root).as_posix()}")
    return out


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_every_relative_link_resolves(path: Path) -> None:
    assert not broken_links(path), f"{rel(path)}: {broken_links(path)}"


def test_the_link_checker_finds_broken_links_and_anchors(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text(f"# Other\n\n## {SIGN}2.1 A `code` title: yes\n")
    page.write_text(
        "[ok](other.md#21-a-code-title-yes) [gone](missing.md) [bad](other.md#nope) "
        "`[in code](missing.md)` [web](https://example.com) [self](#page)\n\n# Page\n"
    )
    assert broken_links(page, tmp_path) == [
        "missing.md: no such file",
        "other.md#nope: no heading #nope in other.md",
    ]
    assert broken_links(page, tmp_path / "sub") == [
        "other.md#21-a-code-title-yes: outside the repository",
        "missing.md: no such file",
        "other.md#nope: outside the repository",
        "#page: outside the repository",
    ]


# ----------------------------------------------------------------------------- citations
#: The section sign, spelled as an escape here so that this file's own examples are not citations.
SIGN = "\N{SECTION SIGN}"
_SECTION = SIGN + r"(\d+(?:\.\d+)*)"
_CITED = re.compile(r"(?P<file>[\w./-]+\.md)\s+" + _SECTION)
_BARE = re.compile(_SECTION)
_QUOTED = re.compile(r"(?P<file>[\w./-]+\.md),?\s+\"(?P<title>[^\"\n]+)\"")
#: What may stand between the sections of one citation list (", ", " step 2, ", " and ").
_LIST_GAP = re.compile(r"^[^()\[\]`." + SIGN + r"]{0,40}$")


@cache
def sections(path: Path) -> set[str]:
    """The section numbers that start a heading of ``path`` (``8`` for ``## <sign>8. Title``)."""
    found = set()
    for match in _HEADING.finditer(_FENCE.sub("", path.read_text())):
        number = re.match(_SECTION, match.group(2))
        if number:
            found.add(number.group(1))
    return found


@cache
def headings(path: Path) -> set[str]:
    return {
        re.sub(r"`", "", m.group(2)).strip().lower()
        for m in _HEADING.finditer(_FENCE.sub("", path.read_text()))
    }


def citations(path: Path, text: str | None = None) -> list[tuple[int, str, str]]:
    """``(line, document, section)`` of every section-sign citation in ``path``; ``document``
    is the repository path of the cited page, or "" for a bare one outside Markdown."""
    text = path.read_text() if text is None else text
    markdown = path.suffix == ".md"
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        covered: set[int] = set()
        for match in _CITED.finditer(line):
            doc, end = match.group("file"), match.end()
            out.append((number, doc, match.group(2)))
            covered.add(match.start(2) - 1)
            for more in _BARE.finditer(line, end):
                if not _LIST_GAP.match(line[end : more.start()]):
                    break
                out.append((number, doc, more.group(1)))
                covered.add(more.start())
                end = more.end()
        for match in _BARE.finditer(line):
            if match.start() not in covered:
                out.append((number, rel(path) if markdown else "", match.group(1)))
    return out


def unresolved(path: Path, text: str | None = None) -> list[str]:
    out = []
    for line, doc, section in citations(path, text):
        where = f"{path.name}:{line}"
        if not doc:
            out.append(
                f"{where}: bare {SIGN}{section}: name the page (docs/methods.md "
                f"{SIGN}{section}), or write 'Section N' for a paper's or an issue's section"
            )
            continue
        target = ROOT / doc
        if not target.is_file():
            out.append(f"{where}: {doc} {SIGN}{section}: no such file in the repository")
        elif section not in sections(target):
            out.append(f"{where}: {doc} {SIGN}{section}: no heading starts with {SIGN}{section}")
    for match in _QUOTED.finditer(path.read_text() if text is None else text):
        target = ROOT / match.group("file")
        title = match.group("title").strip().lower()
        if target.is_file() and title not in headings(target):
            out.append(f"{match.group(0)}: no such heading in {match.group('file')}")
        elif not target.is_file() and match.group("file").startswith("docs/"):
            out.append(f"{match.group(0)}: no such file in the repository")
    return out


@pytest.mark.parametrize("path", TEXT, ids=rel)
def test_every_section_citation_resolves(path: Path) -> None:
    problems = unresolved(path)
    assert not problems, "\n".join(problems)


def test_the_citation_checker_tells_pages_papers_and_bare_sections_apart(tmp_path: Path) -> None:
    code = tmp_path / "mod.py"
    text = (
        '"""Design: docs/methods.md S8.2, S3 step 2 and S99 (Li et al. 2017, Section 3.2).\n'
        "The threshold of S2.1; docs/methods.md\nS4; docs/nowhere.md S1.\n"
        '"""\n'
    )
    problems = unresolved(code, text.replace("S", SIGN).replace(f"{SIGN}ection", "Section"))
    found = [problem.split(": ", 1)[1].split(":")[0].replace(SIGN, "S") for problem in problems]
    assert found == ["docs/methods.md S99", "bare S2.1", "docs/nowhere.md S1", "bare S4"]


def test_the_citation_checker_reports_a_missing_quoted_heading(tmp_path: Path) -> None:
    code = tmp_path / "mod.py"
    missing = "docs/metrics.md" + ' "No such heading"'  # not a citation of this file
    text = f'see docs/metrics.md "Stage objects" and {missing}\n'
    assert unresolved(code, text) == [f"{missing}: no such heading in docs/metrics.md"]


def test_a_page_cites_its_own_sections_bare() -> None:
    methods = ROOT / "docs" / "methods.md"
    own = [c for c in citations(methods) if c[1] == "docs/methods.md"]
    assert len(own) > 50  # the methods reference refers to itself throughout
    assert not unresolved(methods)


def test_nothing_points_at_documents_outside_the_repository() -> None:
    outside = "shared" + "/docs"  # spelled apart so that this file does not name it
    named = [rel(p) for p in TEXT if outside in p.read_text()]
    assert not named, f"these name {outside}, which is not in the repository: {named}"


# ----------------------------------------------------------------------------- configuration
def test_the_configuration_reference_is_current() -> None:
    from prune_cli import docgen

    page = ROOT / docgen.PAGE
    assert page.read_text() == docgen.render(), "run: python -m prune_cli.docgen"


def test_every_key_of_configs_has_a_meaning_and_every_override_is_a_documented_key() -> None:
    from prune_cli import docgen

    all_sections = docgen.sections()
    assert docgen.undocumented(all_sections) == []
    assert docgen.unknown_overrides(all_sections) == []


def _leaf_keys(node: object, prefix: str = "") -> list[str]:
    if not isinstance(node, dict) or not node:
        return [prefix.rstrip(".")]
    return [k for key, value in node.items() for k in _leaf_keys(value, f"{prefix}{key}.")]


def test_the_page_lists_every_key_of_every_group_file() -> None:
    """Read with OmegaConf, independently of the generator's own parsing."""
    from omegaconf import OmegaConf

    page = (ROOT / "docs" / "configuration.md").read_text()
    parts = re.split(r"^## ", page, flags=re.M)
    by_group = {part.split("\n", 1)[0].strip(): part for part in parts[1:]}
    checked = 0
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        group = path.parent.relative_to(ROOT / "configs").as_posix()
        if group == ".":
            group = "Top level"
        text = path.read_text()
        if "@package _global_" in text:
            continue
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        assert isinstance(data, dict)
        data.pop("defaults", None)
        if group == "Top level":
            data = {k: v for k, v in data.items() if k not in ("model", "dataset", "method")}
        section = by_group[group]
        for key in _leaf_keys(data):
            checked += 1
            assert f"| `{key}` |" in section, f"{rel(path)}: {key} is not in docs/configuration.md"
    assert checked > 300


def test_the_comment_parser_reads_line_continued_and_block_comments() -> None:
    from prune_cli.docgen import parse_yaml

    doc = parse_yaml(
        "# The header.\n"
        "#   prune-run example=1\n"
        "name: demo          # the name\n"
        "generations: 6      # GA generations (sized so that\n"
        "                    # the search is short)\n"
        "# Shortcut: A or B.\n"
        "shortcut: B\n"
        "\n"
        "plain: 1\n"
        "group:\n"
        "  inner: ${ratio}   # '#' inside ${...} is {not} a comment\n"
        "  url: http://x#y   # a url\n"
    )
    assert doc.header == "The header.\n  prune-run example=1"
    comments = {k: v.comment for k, v in doc.lines.items()}
    assert comments["name"] == "the name"
    assert comments["generations"] == "GA generations (sized so that the search is short)"
    assert comments["shortcut"] == "Shortcut: A or B."
    assert comments["plain"] == ""
    assert comments["group.inner"] == "'#' inside ${...} is {not} a comment"
    assert doc.lines["group.url"].text == "http://x#y"
    assert doc.lines["group.inner"].text == "${ratio}"


def test_the_generator_reports_a_key_without_a_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    from prune_cli import docgen

    real = docgen.read_yaml

    def without_comment(group: str, name: str) -> docgen.YamlFile:
        doc = real(group, name)
        if (group, name) == ("train", "default"):
            doc.lines["label_smoothing"].comment = ""
        return doc

    monkeypatch.setattr(docgen, "read_yaml", without_comment)
    found = docgen.undocumented()
    assert found == ["train: label_smoothing"]
    assert docgen.render() != (ROOT / "docs" / "configuration.md").read_text()


# ----------------------------------------------------------------------------- the README
def readme_commands() -> list[str]:
    """The command lines of the README's bash blocks (comments cut, continuations joined)."""
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


#: The README's commands that this suite runs as written (slow), found by their text.
QUICK_START = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]' && prune-run",
    "pytest",
)


def test_the_quick_start_is_the_two_commands_ci_runs() -> None:
    commands = readme_commands()
    assert commands[:2] == list(QUICK_START)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[dev]'" in ci and re.search(r"^pytest\b", ci, re.M)


def _as_overrides(command: str) -> list[str] | None:
    """A README ``prune-run`` line as the overrides of one job (the first value of each sweep
    list), or None for a line that is not a prune-run job to compose."""
    words = shlex.split(command)
    if words[0] != "prune-run" or any(w.startswith("resume=") for w in words):
        return None
    out = []
    for word in words[1:]:
        if word in ("-m", "--multirun", "--cfg", "job") or word.startswith(("hydra", "-")):
            continue
        key, sep, value = word.partition("=")
        if sep and "," in value and not value.startswith("[") and key.lstrip("+") != "logger":
            value = value.split(",")[0]
        out.append(f"{key}{sep}{value}")
    return out


JOBS = [c for c in readme_commands() if _as_overrides(c) is not None]


@pytest.mark.parametrize("command", JOBS)
def test_every_readme_command_composes_into_a_valid_config(command: str, tmp_path: Path) -> None:
    """Each README ``prune-run`` line passes the CLI's own checks and the schema (no data read,
    nothing trained)."""
    from hydra import compose, initialize_config_dir

    from prune_cli import cli
    from prune_cli.schema import validate_config

    args = cli.group_selection(cli.several_loggers(_as_overrides(command) or []))
    cli.check_overrides(args)
    cli.check_mandatory(args)
    cli.check_model_options(args)
    with initialize_config_dir(config_dir=str(cli.CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", [*args, f"cache.dir={tmp_path}"])
    validate_config(cfg)


def test_the_readme_shows_a_single_run_a_sweep_and_a_report() -> None:
    commands = readme_commands()
    assert "prune-run" in commands
    assert any(c.startswith("prune-run -m ") for c in commands)
    assert any(c.startswith("prune-report ") for c in commands)
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_the_readme_links_every_docs_page() -> None:
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in links(ROOT / "README.md")
        if target.startswith("docs/")
    }
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set()


def _entry_point(command: str) -> list[str]:
    """A README command line with its console script replaced by the module it runs
    (pyproject's ``[project.scripts]``), so the checkout under test is what runs."""
    scripts = {"prune-run": "prune_cli.cli", "prune-report": "prune_cli.report"}
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name, module in scripts.items():
        assert f'{name} = "{module}:' in pyproject
    words = shlex.split(command)
    return [sys.executable, "-m", scripts[words[0]], *words[1:]]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    }


@pytest.mark.slow
def test_the_readme_single_run_sweep_and_report_run_as_written(tmp_path: Path) -> None:
    """``prune-run``, the sweep and ``prune-report`` exactly as the README writes them, in an
    empty directory, on the offline default."""
    commands = readme_commands()
    sweep = next(c for c in commands if c.startswith("prune-run -m method="))
    report = next(c for c in commands if c.startswith("prune-report "))
    for command in ("prune-run", sweep, report):
        done = subprocess.run(
            _entry_point(command), cwd=tmp_path, env=_env(), capture_output=True, text=True
        )
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    (single,) = (tmp_path / "outputs" / "runs").glob("*/*/metrics.json")
    assert json.loads(single.read_text())["status"] == "completed"
    jobs = list((tmp_path / "outputs" / "multirun").glob("*/*/*/metrics.json"))
    values = [w.split("=", 1)[1].split(",") for w in shlex.split(sweep) if "=" in w]
    expected = 1
    for options in values:
        expected *= len(options)
    assert len(jobs) == expected
    with open(tmp_path / "outputs" / "multirun" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == expected and {r["status"] for r in rows} == {"completed"}


def _installed_dependencies(folder: Path) -> Path:
    """A folder of links to what the running environment has installed, without prune-cli
    itself (its editable-install hook would import the checkout the tests run from)."""
    folder.mkdir()
    for packages in site.getsitepackages():
        for entry in Path(packages).iterdir():
            name = entry.name
            if name.startswith(("__editable__", "prune_cli")) or name.endswith(".pth"):
                continue
            if not (folder / name).exists():
                (folder / name).symlink_to(entry)
    return folder


@pytest.mark.slow
def test_the_quick_start_runs_as_written_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """The first Quick start command, word for word, in a copy of the repository. Offline, pip
    takes the dependencies already installed where the tests run (PYTHONPATH) and builds
    without fetching a build backend (PIP_NO_BUILD_ISOLATION, PIP_NO_INDEX): the environment
    is offline, the command is the README's."""
    copy = tmp_path / "prune-cli"
    shutil.copytree(
        ROOT, copy, ignore=shutil.ignore_patterns(*SKIP_DIRS, "*.egg-info"), symlinks=True
    )
    env = {
        **_env(),
        "PYTHONPATH": str(_installed_dependencies(tmp_path / "deps")),
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # pip's inverted spelling of --no-build-isolation
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        ["bash", "-c", QUICK_START[0]], cwd=copy, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (metrics,) = (copy / "outputs" / "runs").glob("*/*/metrics.json")
    assert json.loads(metrics.read_text())["status"] == "completed"
    assert (copy / ".venv" / "bin" / "prune-run").is_file()
    # the copy's code ran, not the checkout's
    code = "import prune_cli; print(prune_cli.__file__)"
    where = subprocess.run(
        [str(copy / ".venv" / "bin" / "python"), "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip() == str(copy / "prune_cli" / "__init__.py"), where.stderr
