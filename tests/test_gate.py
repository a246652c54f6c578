"""The gate catches the original bug: proof on a copy of the app, not on the app itself.

Version 2 of the original app shipped `json.loads(urls_file)` where `json.load` was
meant (13 minutes down), and also misspelt a route decorator. Each slip is made again
here, in a copy of the app (application.py and the linkstore package, where the file is
read now), and the project's own gate must fail on it: `mypy --strict` with the
project's configuration, and the project's store and route tests run against the copy.
The unmodified copy must pass the same gate, so a failure can only come from the slip.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GATE_TESTS = ["tests/test_store.py", "tests/test_routes.py"]
STORE = "linkstore/jsonfile.py"  # where the links file is read
CHECKED = ["application.py", "linkstore"]
ROUTE_METHODS = {"route", "get", "post", "put", "patch", "delete"}


def store_read_lines(source: str) -> range:
    """Line numbers (1-based) of FileStore._read, the store's read path."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == "FileStore":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "_read":
                    return range(item.lineno, (item.end_lineno or item.lineno) + 1)
    raise AssertionError(f"{STORE} has no FileStore._read")


def json_loads_slip(source: str) -> str:
    """`json.load(` -> `json.loads(` in the store's read path: the original bug."""
    lines = source.splitlines(keepends=True)
    read = store_read_lines(source)
    hits = [n for n in read if "json.load(" in lines[n - 1]]
    assert len(hits) == 1, f"expected one json.load( in FileStore._read, found {hits}"
    lines[hits[0] - 1] = lines[hits[0] - 1].replace("json.load(", "json.loads(")
    return "".join(lines)


def route_decorator_slip(source: str) -> str:
    """`@bp.get(` -> `@bp.gets(` on the redirect route, as `@app.route` -> `@app.routes`."""
    lines = source.splitlines(keepends=True)
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
                    and decorator.func.attr in ROUTE_METHODS and decorator.args
                    and isinstance(decorator.args[0], ast.Constant)
                    and decorator.args[0].value == "/<code>"):
                line = lines[decorator.lineno - 1]
                name = ast.unparse(decorator.func)
                assert f"@{name}(" in line
                lines[decorator.lineno - 1] = line.replace(f"@{name}(", f"@{name}s(", 1)
                return "".join(lines)
    raise AssertionError("no route decorator for /<code> found in application.py")


def make_copy(target: Path, slip: str | None) -> Path:
    """Copy the app, its store, templates/static, config and the gate's tests (and what
    they import); make the slip."""
    target.mkdir(parents=True)
    for name in ("application.py", "visits.py", "visitors.py", "gunicorn.conf.py",
                 "pyproject.toml"):
        shutil.copy2(ROOT / name, target / name)
    for name in ("linkstore", "templates", "static", "ops"):
        shutil.copytree(ROOT / name, target / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", target / "tests",
                    ignore=shutil.ignore_patterns("torture", "fixtures", "__pycache__"))
    if slip == "json.loads":
        store = target / STORE
        store.write_text(json_loads_slip(store.read_text()))
    elif slip == "route":
        app = target / "application.py"
        app.write_text(route_decorator_slip(app.read_text()))
    return target


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("gate")
    return {name: make_copy(base / name, None if name == "clean" else name)
            for name in ("clean", "json.loads", "route")}


def mypy_strict(copy: Path) -> subprocess.CompletedProcess[str]:
    """The copies share a module name and a file size, so each gets its own cache:
    a shared one could answer for the wrong copy."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", "pyproject.toml",
         "--cache-dir", str(copy / ".mypy_cache"), *CHECKED],
        cwd=copy, capture_output=True, text=True, timeout=300, check=False)


def gate_tests(copy: Path) -> subprocess.CompletedProcess[str]:
    """The project's store and route tests, importing the copy's application.py."""
    present = [name for name in GATE_TESTS if (copy / name).exists()]
    assert "tests/test_store.py" in present
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *present],
        cwd=copy, capture_output=True, text=True, timeout=300, check=False)


def test_the_slips_change_exactly_one_line(copies: dict[str, Path]) -> None:
    for slip, where, expected in (("json.loads", STORE, "json.loads(urls_file"),
                                  ("route", "application.py", "s(\"/<code>\")")):
        clean = (copies["clean"] / where).read_text().splitlines()
        changed = (copies[slip] / where).read_text().splitlines()
        diff = [(a, b) for a, b in zip(clean, changed) if a != b]
        assert len(clean) == len(changed) and len(diff) == 1, diff
        assert expected in diff[0][1]


def test_the_unmodified_copy_passes_mypy_strict(copies: dict[str, Path]) -> None:
    result = mypy_strict(copies["clean"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unmodified_copy_passes_the_store_and_route_tests(
        copies: dict[str, Path]) -> None:
    result = gate_tests(copies["clean"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout


def test_json_loads_in_the_store_read_path_fails_mypy_strict(
        copies: dict[str, Path]) -> None:
    result = mypy_strict(copies["json.loads"])
    assert result.returncode == 1
    assert 'Argument 1 to "loads" has incompatible type "TextIOWrapper' in result.stdout
    assert "[arg-type]" in result.stdout


def test_json_loads_in_the_store_read_path_fails_the_store_tests(
        copies: dict[str, Path]) -> None:
    result = gate_tests(copies["json.loads"])
    assert result.returncode == 1, result.stdout[-3000:]
    assert "the JSON object must be str, bytes or bytearray, not TextIOWrapper" in result.stdout
    assert "tests/test_store.py" in result.stdout and " failed" in result.stdout


def test_a_misspelt_route_decorator_fails_mypy_strict(copies: dict[str, Path]) -> None:
    result = mypy_strict(copies["route"])
    assert result.returncode == 1
    assert '"Blueprint" has no attribute' in result.stdout


def test_a_misspelt_route_decorator_fails_the_route_tests(copies: dict[str, Path]) -> None:
    result = gate_tests(copies["route"])
    assert result.returncode != 0
    output = result.stdout + result.stderr  # an import error in conftest goes to stderr
    assert "AttributeError: 'Blueprint' object has no attribute" in output
