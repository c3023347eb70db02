"""Every package the code imports is declared in pyproject.toml: a missing declaration works on a
machine that happens to have the package and breaks on a fresh install."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("flows", "tasks", "deployments", "modelyard", "infra/bench")
OWN_PACKAGES = {"flows", "tasks", "deployments", "modelyard", "tests"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*extras: str) -> set[str]:
    """Distribution names pyproject.toml declares: the dependencies, plus those of ``extras``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {_normal(Requirement(r).name) for r in requirements}


def top_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def undeclared(folders: tuple[str, ...], allowed: set[str]) -> list[str]:
    """One line per import in ``folders`` whose distribution is not in ``allowed``."""
    distributions = packages_distributions()
    problems = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            siblings = {p.stem for p in path.parent.glob("*.py")}  # infra/bench's scripts import each other
            for line, module in top_level_imports(path):
                if module in sys.stdlib_module_names or module in OWN_PACKAGES or module in siblings:
                    continue
                candidates = {_normal(d) for d in distributions.get(module, [])}
                if not candidates & allowed:
                    owner = ", ".join(sorted(candidates)) or "no installed distribution"
                    problems.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({owner})")
    return problems


def test_product_code_imports_only_declared_dependencies():
    assert undeclared(PRODUCT, declared()) == []


def test_tests_import_only_declared_dependencies_and_the_test_extra():
    assert undeclared(("tests",), declared("test")) == []
