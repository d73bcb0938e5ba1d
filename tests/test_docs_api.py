"""docs/api.md covers the public API exactly, and every public name has a docstring.

The public names are read from the code at test time: ``tensorcask.__all__``,
the public methods, properties and fields of the public classes, the
``__all__`` of ``tensorcask.loaders.torch``, ``tensorcask.loaders.tensorflow``
and ``tensorcask.interop``. docs/api.md must name each one under its class's
or module's heading, show every function and method signature exactly as
``inspect.signature`` gives it (without annotations), and say which builtin
each error also is.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import inspect
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import tensorcask as tc

ROOT = Path(__file__).resolve().parents[1]
API = (ROOT / "docs" / "api.md").read_text()
LINES = API.splitlines()
HEADING = re.compile(r"^(#{1,6}) ")


def section(name: str, within: str = API) -> str:
    """The text under the first heading that names ``name`` in backquotes (or is
    ``name``), up to the next heading of the same or a higher level."""
    lines = within.splitlines()
    for i, line in enumerate(lines):
        found = HEADING.match(line)
        if found and (f"`{name}`" in line or line[found.end() :] == name):
            level = len(found.group(1))
            end = next(
                (
                    j
                    for j in range(i + 1, len(lines))
                    if (h := HEADING.match(lines[j])) and len(h.group(1)) <= level
                ),
                len(lines),
            )
            return "\n".join(lines[i:end])
    raise AssertionError(f"docs/api.md has no heading naming `{name}`")


def signature(obj: Any, name: str) -> str:
    """``name(params)`` as docs/api.md shows it: no annotations, no ``self``."""
    sig = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    if params and params[0].name == "self":
        params = params[1:]
    bare = sig.replace(parameters=params, return_annotation=inspect.Signature.empty)
    return f"`{name}{bare}`"


def public_members(cls: type) -> Iterator[tuple[str, Any]]:
    """Public attributes a class defines or inherits from tensorcask classes (not from
    object, torch or typing), as ``(name, raw class attribute)``."""
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if owner is not None and owner.__module__.startswith("tensorcask"):
            yield name, vars(owner)[name]


def has_docstring(obj: Any, name: str) -> bool:
    doc = inspect.getdoc(obj) if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    # a dataclass without a docstring gets "Name(field, ...)": that is not one
    return bool(doc and doc.strip() and not doc.startswith(f"{name}("))


def check_class(cls: type, text: str) -> list[str]:
    """What docs/api.md lacks of ``cls``, in its section of ``text``; and docstrings."""
    problems = []
    if not has_docstring(cls, cls.__name__):
        problems.append(f"{cls.__name__} has no docstring")
    try:
        body = section(cls.__name__, text)
    except AssertionError as exc:
        return [*problems, str(exc)]
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    for name in sorted(fields):
        if f"`{name}`" not in body:
            problems.append(f"field {cls.__name__}.{name} is not in its section")
    for name, raw in public_members(cls):
        where = f"{cls.__name__}.{name}"
        if name in fields:
            continue
        if isinstance(raw, property):
            if not has_docstring(raw, name):
                problems.append(f"property {where} has no docstring")
            if f"`{name}`" not in body:
                problems.append(f"property {where} is not in its section")
        elif isinstance(raw, classmethod | staticmethod) or inspect.isfunction(raw):
            function = raw.__func__ if isinstance(raw, classmethod | staticmethod) else raw
            if not has_docstring(function, name):
                problems.append(f"method {where} has no docstring")
            shown = signature(getattr(cls, name), name)
            if shown not in body:
                problems.append(f"method {where}: {shown} is not in its section")
        elif f"`{name}`" not in body:  # a plain class attribute
            problems.append(f"attribute {where} is not in its section")
    return problems


def check_module(module: ModuleType, text: str, names: list[str]) -> list[str]:
    """What ``text`` lacks of the public ``names`` of ``module``."""
    problems = []
    for name in names:
        obj = getattr(module, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            problems += check_error(obj, text)
        elif inspect.isclass(obj):
            problems += check_class(obj, text)
        elif callable(obj):
            if not has_docstring(obj, name):
                problems.append(f"{module.__name__}.{name} has no docstring")
            if signature(obj, name) not in text:
                problems.append(f"{signature(obj, name)} is not in docs/api.md")
        elif f"`{name}`" not in text:  # a constant
            problems.append(f"{module.__name__}.{name} is not in docs/api.md")
    return problems


def builtin_bases(cls: type) -> list[str]:
    """The most derived builtin exceptions ``cls`` also is (``KeyError``, not ``LookupError``)."""
    found = [
        k
        for k in cls.__mro__[1:]
        if k.__module__ == "builtins" and k not in (Exception, BaseException, object)
    ]
    return [k.__name__ for k in found if not any(o is not k and issubclass(o, k) for o in found)]


def error_rows(text: str) -> dict[str, list[str]]:
    """The rows of the tables of errors in ``text``: error name -> its "also a" names."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        named = re.fullmatch(r"`(\w+)`", cells[0]) if line.startswith("|") else None
        if named and named.group(1).endswith("Error") and len(cells) >= 3:
            rows[named.group(1)] = re.findall(r"`(\w+)`", cells[1])
    return rows


def check_error(cls: type, text: str) -> list[str]:
    """An error has a docstring and a row in a table of errors of ``text`` that names
    every builtin it also is."""
    name = cls.__name__
    problems = [] if has_docstring(cls, name) else [f"{name} has no docstring"]
    rows = error_rows(text)
    if name not in rows:
        return [*problems, f"{name} has no row in a table of errors"]
    for builtin in builtin_bases(cls):
        if builtin not in rows[name]:
            problems.append(f"the row of {name} does not say it is also a {builtin}")
    return problems


def test_every_public_name_of_tensorcask_is_documented() -> None:
    names = [n for n in tc.__all__ if n != "__version__"]
    problems = check_module(tc, API, names)
    assert "`tensorcask.__version__`" in API
    assert not problems, "\n".join(problems)


def test_errors_inherit_what_the_docs_say() -> None:
    """The "also a" column of the table of errors is true, and names every error."""
    documented = error_rows(section("Errors"))
    assert set(documented) == {n for n in tc.__all__ if n.endswith("Error")}
    for name, bases in documented.items():
        cls = getattr(tc, name)
        assert issubclass(cls, tc.CaskError)
        for base in bases:
            assert issubclass(cls, getattr(builtins, base)), f"{name} is not a {base}"


@pytest.mark.parametrize(
    ("module_name", "framework"),
    [("tensorcask.loaders.torch", "torch"), ("tensorcask.loaders.tensorflow", "tensorflow")],
)
def test_loaders_are_documented(module_name: str, framework: str) -> None:
    pytest.importorskip(framework)
    module = importlib.import_module(module_name)
    problems = check_module(module, section(module_name), list(module.__all__))
    if not has_docstring(module, module_name):
        problems.append(f"{module_name} has no module docstring")
    assert not problems, "\n".join(problems)


def test_interop_is_documented() -> None:
    """Whatever ``tensorcask.interop.__all__`` holds when the test runs is documented."""
    try:
        interop = importlib.import_module("tensorcask.interop")
    except ImportError as exc:  # an optional dependency of it is missing
        pytest.skip(f"tensorcask.interop does not import: {exc}")
    names = getattr(interop, "__all__", None)
    assert names, "tensorcask.interop has no __all__: its public names must be curated"
    problems = check_module(interop, section("tensorcask.interop"), list(names))
    assert not problems, "\n".join(problems)


def test_the_guide_and_readme_point_to_the_reference() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in ("docs/guide.md", "docs/api.md", "docs/cli.md"):
        assert page in readme
    assert "docs/api.md" in (ROOT / "docs" / "guide.md").read_text()


def test_the_readme_names_every_command() -> None:
    """Every command ``tensorcask --help`` lists appears in the README as ``tensorcask CMD``."""
    listing = subprocess.run(
        [sys.executable, "-m", "tensorcask", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    block = listing.split("positional arguments:", 1)[1].split("options:", 1)[0]
    commands = re.findall(r"^    ([a-z][a-z-]*)", block, re.MULTILINE)
    assert {"init", "import", "verify-export", "lock", "switch"} <= set(commands)
    readme = (ROOT / "README.md").read_text()
    missing = [c for c in commands if f"tensorcask {c}" not in readme]
    assert not missing, f"README.md does not show: {missing}"
    assert "tensorcask lock release" in readme
