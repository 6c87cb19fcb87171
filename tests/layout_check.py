"""Plain functions behind tests/test_layout.py: a static import graph of the project, read with ``ast``.

Nothing here imports the project: every import statement of a file is read from its source, wherever
it sits (module level, inside functions, under ``if TYPE_CHECKING``, in ``try``), and resolved to a
file of the repository. Paths are repository-relative POSIX strings (``"unet/train/loop.py"``).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
import textwrap
from collections import deque
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path, PurePosixPath

PACKAGES = ("flows", "tasks", "unet")
# closure files a stage's deps need not list: params cover config.py, the other two only wrap
ALLOWED_UNLISTED = frozenset({"unet/config.py", "flows/common.py", "tasks/reports.py"})
BANNED_IN_UNET = ("prefect", "mlflow", "dvc")


@dataclass(frozen=True)
class Edge:
    """``importer`` loads ``target`` at ``lineno``; ``explicit`` is False for a parent package's
    ``__init__.py`` that Python runs only because a submodule of it was imported."""

    importer: str
    target: str
    lineno: int
    explicit: bool


# -- modules and files -------------------------------------------------------------------------

def module_name(path: str) -> str:
    parts = list(PurePosixPath(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(root: Path, module: str) -> str | None:
    """The repository file of a dotted module name, ``pkg/mod.py`` or ``pkg/mod/__init__.py``."""
    base = module.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def _absolute(path: str, level: int, module: str | None) -> str:
    """The absolute module of ``from <level dots><module> import ...`` written in ``path``."""
    if level == 0:
        return module or ""
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    package = package[: len(package) - (level - 1)]
    return ".".join([*package, module] if module else package)


def imported_modules(tree: ast.AST, path: str = "") -> list[tuple[str, int, list[str]]]:
    """Every import statement anywhere in ``tree``: (module, lineno, names after ``from ... import``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((_absolute(path, node.level, node.module), node.lineno,
                          [alias.name for alias in node.names if alias.name != "*"]))
    return sorted(found, key=lambda item: item[1])


def file_edges(root: Path, path: str, packages=PACKAGES) -> list[Edge]:
    """The project files ``path`` loads: those its imports name, and their parent packages."""
    stat = (root / path).stat()
    return list(_file_edges(root, path, tuple(packages), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=4096)  # keyed on the file's stat: the planted-fault tests parse the real tree many times
def _file_edges(root: Path, path: str, packages: tuple, mtime_ns: int, size: int) -> tuple[Edge, ...]:
    edges = []
    for module, lineno, names in imported_modules(ast.parse((root / path).read_text()), path):
        if module.split(".")[0] not in packages:
            continue
        submodules = [file for file in (module_file(root, f"{module}.{name}") for name in names) if file]
        # ``from pkg import sub`` names pkg/sub.py; pkg itself only for a name that is no submodule
        named = submodules if names and len(submodules) == len(names) else [module_file(root, module), *submodules]
        parents = _parents(module) + ([module] if named == submodules else [])
        edges += [Edge(path, file, lineno, explicit=True) for file in named if file]
        edges += [Edge(path, file, lineno, explicit=False) for file in map(partial(module_file, root), parents) if file]
    return tuple(edges)


def closure(root: Path, start: list[str], packages=PACKAGES, stop=lambda file: False) -> dict[str, Edge | None]:
    """Every project file the ``start`` files load, transitively, breadth first (shortest chains).

    Maps each file to the edge that first reached it, an explicit one where there is any (a parent
    package's ``__init__.py`` may be reached both ways), and the start files to None. Files for
    which ``stop(file)`` is true are reached but not read.
    """
    reached: dict[str, Edge | None] = dict.fromkeys(start)
    queue = deque(start)
    while queue:
        file = queue.popleft()
        if file not in start and stop(file):
            continue
        edges = file_edges(root, file, packages)
        if file in start:                   # running pkg/mod.py as a module loads pkg/__init__.py
            edges += [Edge(file, init, 0, explicit=False)
                      for init in map(partial(module_file, root), _parents(module_name(file))) if init]
        for edge in edges:
            if edge.target not in reached:
                reached[edge.target] = edge
                queue.append(edge.target)
            elif edge.explicit and (old := reached[edge.target]) is not None and not old.explicit:
                reached[edge.target] = edge
    return reached


def chain(reached: dict[str, Edge | None], file: str) -> list[str]:
    """The import chain from a start file to ``file``, through ``closure``'s first edges."""
    links = [file]
    while (edge := reached.get(links[-1])) is not None and edge.importer not in links:
        links.append(edge.importer)
    return links[::-1]


def package_files(root: Path, package: str) -> list[str]:
    """Every module file of a package and its subpackages (folders with an ``__init__.py``)."""
    top = root / package
    if not (top / "__init__.py").is_file():
        return []
    files = []
    for file in sorted(top.rglob("*.py")):
        folders = file.relative_to(root).parents
        if all((root / folder / "__init__.py").is_file() for folder in list(folders)[:-1]):
            files.append(file.relative_to(root).as_posix())
    return files


def under(file: str, folder: str) -> bool:
    """``file`` is ``folder`` or lies below it (a folder ``.`` holds everything)."""
    folder = folder.rstrip("/").removeprefix("./")
    return folder in ("", ".") or file == folder or file.startswith(folder + "/")


# -- rule A: a DVC stage's deps cover the code its command runs --------------------------------

def resolve_template(path: str, params: dict | None) -> str | None:
    """``${a.b}`` in a dvc.yaml path replaced from params.yaml; None where it cannot be."""
    def value(match: re.Match) -> str:
        node = params
        for key in match.group(1).strip().split("."):
            if not isinstance(node, dict) or key not in node:
                raise KeyError(match.group(1))
            node = node[key]
        return str(node)

    try:
        return re.sub(r"\$\{([^}]*)\}", value, path)
    except KeyError:
        return None


def normalise(path: str) -> str:
    return PurePosixPath(path.strip()).as_posix().removeprefix("./").rstrip("/")


def stage_deps(stage: dict, params: dict | None = None) -> list[str]:
    """A stage's dep paths, templates resolved against ``params`` (dropped where they cannot be)."""
    deps = []
    for dep in stage.get("deps") or []:
        path = next(iter(dep)) if isinstance(dep, dict) else str(dep)
        if "${" in path:
            path = resolve_template(path, params)
        if path is not None:
            deps.append(normalise(path))
    return deps


def command_modules(cmd) -> list[str]:
    """The modules a stage's command runs: ``flows.train`` from ``python -m flows.train``;
    ``flows.__main__`` and ``flows.train`` from ``python -m flows train`` (the runner imports the
    stage's module by name, which no import statement shows); the module of ``python flows/train.py``."""
    for line in [cmd] if isinstance(cmd, str) else list(cmd or []):
        words = shlex.split(line)
        for n, word in enumerate(words):
            if word == "-m" and n + 1 < len(words):
                if words[n + 1] in PACKAGES and n + 2 < len(words) and not words[n + 2].startswith("-"):
                    return [f"{words[n + 1]}.__main__", f"{words[n + 1]}.{words[n + 2]}"]
                return [words[n + 1]]
            if word.endswith(".py") and "/" in word:
                return [module_name(normalise(word))]
    return []


def command_files(root: Path, cmd) -> list[str] | None:
    """The repository files of ``command_modules``; None when one of them is not in the repository."""
    files = [module_file(root, module) for module in command_modules(cmd)]
    return files if files and all(files) else None


@dataclass(frozen=True)
class Missing:
    stage: str
    file: str
    imported_by: str

    def __str__(self) -> str:
        return f"{self.file}  (imported by {self.imported_by})"


def missing_code_deps(dvc: dict, root: Path, params: dict | None = None,
                      allowed=ALLOWED_UNLISTED, packages=PACKAGES) -> dict[str, list[Missing]]:
    """Per stage, the project files its command imports (transitively) that no dep covers.

    A dep covers a file when it is that file or a folder above it. Package ``__init__.py`` files
    and ``allowed`` may be missing. Stages with nothing missing are left out.
    """
    report = {}
    for name, stage in (dvc.get("stages") or {}).items():
        start = command_files(root, stage.get("cmd"))
        if start is None:
            report[name] = [Missing(name, f"<no project module in cmd {stage.get('cmd')!r}>", "dvc.yaml")]
            continue
        deps = stage_deps(stage, params)
        reached = closure(root, start, packages)
        missing = [Missing(name, file, edge.importer if edge else "the stage's cmd")
                   for file, edge in sorted(reached.items())
                   if not file.endswith("__init__.py") and file not in allowed
                   and not any(under(file, dep) for dep in deps)]
        if missing:
            report[name] = missing
    return report


def stale_code_deps(dvc: dict, root: Path, params: dict | None = None, packages=PACKAGES) -> dict[str, list[str]]:
    """Per stage, deps inside the project packages that name no file or folder of the repository."""
    report = {}
    for name, stage in (dvc.get("stages") or {}).items():
        stale = [dep for dep in stage_deps(stage, params)
                 if dep.split("/")[0] in packages and not (root / dep).exists()]
        if stale:
            report[name] = stale
    return report


def broad_code_deps(dvc: dict, root: Path, params: dict | None = None, packages=PACKAGES) -> dict[str, list[str]]:
    """Per stage, ``folder: file, ...`` for each folder dep that covers Python files its command never
    imports (package ``__init__.py`` files aside): an edit there would rerun the stage for nothing."""
    report = {}
    for name, stage in (dvc.get("stages") or {}).items():
        files = command_files(root, stage.get("cmd"))
        if not files:
            continue
        reached = closure(root, files, packages)
        for dep in stage_deps(stage, params):
            if dep.split("/")[0] not in packages or not (root / dep).is_dir():
                continue
            idle = sorted(str(path.relative_to(root)) for path in (root / dep).rglob("*.py")
                          if path.name != "__init__.py" and str(path.relative_to(root)) not in reached)
            if idle:
                report.setdefault(name, []).append(f"{dep}: {', '.join(idle)}")
    return report


# -- rule B: layering --------------------------------------------------------------------------

def banned_imports(root: Path, files: list[str], banned=BANNED_IN_UNET) -> list[str]:
    """``file:line: import <module>`` for each import statement of a banned package in ``files``."""
    hits = []
    for file in files:
        for module, lineno, _ in imported_modules(ast.parse((root / file).read_text()), file):
            if module.split(".")[0] in banned:
                hits.append(f"{file}:{lineno}: imports {module}")
    return hits


_PROBE = textwrap.dedent("""
    import importlib, json, sys, traceback
    banned, modules = json.loads(sys.argv[1])
    def loaded():
        return {m for m in sys.modules if m.split(".")[0] in banned}
    report = {"pulled": {}, "errors": {}}
    for name in modules:
        before = loaded()
        try:
            importlib.import_module(name)
        except BaseException:
            report["errors"][name] = traceback.format_exc(limit=-3)
        if new := sorted(loaded() - before):
            report["pulled"][name] = new
    print(json.dumps(report))
""")


def import_probe(root: Path, modules: list[str], banned=BANNED_IN_UNET, timeout: float = 120) -> dict:
    """Import ``modules`` one at a time in a fresh interpreter in ``root``.

    Returns ``{"pulled": {module: [banned modules it loaded first]}, "errors": {module: traceback}}``:
    a banned package (or a submodule of it) is charged to the module whose import first loaded it.
    """
    result = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([list(banned), modules])], cwd=root,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"the import probe failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def cross_imports(root: Path, start: list[str], forbidden: list[str],
                  packages=("unet",), unfollowed: frozenset[str] = frozenset()) -> list[tuple[Edge, list[str]]]:
    """Where the closure of ``start`` crosses into a ``forbidden`` folder: each explicit import of a
    file there by a file outside, with the chain from a start file to that importer.

    The closure is not followed past forbidden files, so each crossing is reported where it happens.
    A parent ``__init__.py`` loaded only on the way to a submodule is not listed: the submodule is.
    ``unfollowed`` files are reached but their imports are not (code a stage copies, not runs).
    """
    def bad(file: str) -> bool:
        return any(under(file, folder) for folder in forbidden)

    reached = closure(root, start, packages, stop=lambda file: bad(file) or file in unfollowed)
    crossings = {edge for file in reached if not bad(file) and file not in unfollowed
                 for edge in file_edges(root, file, packages) if edge.explicit and bad(edge.target)}
    return [(edge, chain(reached, edge.importer))
            for edge in sorted(crossings, key=lambda e: (e.importer, e.lineno, e.target))]


def long_functions(root: Path, files: list[str], limit: int) -> list[str]:
    """``file:function:lines`` for each def (methods and nested ones too) longer than ``limit``."""
    found = []

    def visit(file: str, node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                lines = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and lines > limit:
                    found.append(f"{file}:{name}:{lines}")
                visit(file, child, name + ".")
            else:
                visit(file, child, prefix)

    for file in files:
        visit(file, ast.parse((root / file).read_text()), "")
    return sorted(found)


def long_files(root: Path, files: list[str], limit: int) -> list[str]:
    """``file:lines`` for each file longer than ``limit`` lines."""
    counts = {file: len((root / file).read_text().splitlines()) for file in files}
    return [f"{file}:{n}" for file, n in sorted(counts.items()) if n > limit]
