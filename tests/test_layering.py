"""The package's structure: one exception base, no import cycles, layers that import downwards."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import server
import speechssl
from speechssl.errors import SpeechSSLError

ROOT = Path(__file__).resolve().parents[1]
# Signals between the server's batcher and its routes, and the HTTP answer itself: never raised to a caller.
NOT_LIBRARY_ERRORS = {"server.batcher.QueueFull", "server.batcher.DeadlineExceeded",
                      "server.batcher.ShuttingDown", "server.errors.ApiError",
                      "server.routes.live.LiveError"}  # LiveError: a WebSocket close with its code


def all_modules() -> list[str]:
    names = []
    for package in (speechssl, server):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            names.append(info.name)
    return sorted(names)


def test_every_project_exception_is_a_speechssl_error():
    found = []
    for name in all_modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException):
                found.append(cls)
                if f"{name}.{cls.__qualname__}" not in NOT_LIBRARY_ERRORS:
                    assert issubclass(cls, SpeechSSLError), f"{name}.{cls.__qualname__} is not a SpeechSSLError"
    assert len(found) >= 12  # the scan saw the package


def test_cli_reports_any_speechssl_error_in_one_line(monkeypatch, capsys):
    from speechssl import cli

    class Odd(SpeechSSLError):
        pass

    def fail(args):
        raise Odd("a reason in words")

    monkeypatch.setattr(cli, "run", fail)
    assert cli.main(["make-lm", "--out", "x.arpa"]) == 2
    assert capsys.readouterr().err.strip() == "speechssl: error: a reason in words"


def test_import_speechssl_loads_no_training_code():
    code = ("import sys, speechssl, speechssl.api; "
            "print(sorted(m for m in sys.modules if m.startswith(('speechssl.train', 'speechssl.recipe'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def module_imports(lazy: bool = False) -> dict[str, set[str]]:
    """Each module's imports of project modules made when it loads (module level, not under
    TYPE_CHECKING), read from its source; ``lazy`` adds those inside functions."""
    names = set(all_modules())
    graph: dict[str, set[str]] = {}
    for name in names:
        spec = importlib.util.find_spec(name)
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        package = name if spec.submodule_search_locations else name.rpartition(".")[0]
        found = set()
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not lazy:
                    break
                if isinstance(sub, ast.Import):
                    found.update(alias.name for alias in sub.names)
                elif isinstance(sub, ast.ImportFrom):
                    base = sub.module or ""
                    if sub.level:
                        base = ".".join(package.split(".")[: len(package.split(".")) - sub.level + 1] + ([base] if base else []))
                    found.add(base)
                    found.update(f"{base}.{alias.name}" for alias in sub.names)
        graph[name] = {m for m in found if m in names and m != name}
    return graph


def test_no_import_cycles():
    graph = module_imports()
    assert {"speechssl.checkpoint", "speechssl.models.wav2vec2"} <= graph["speechssl.api"]  # the scan reads imports
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


# docs/architecture.md's layers, bottom first: a module may import from its own layer and below.
LAYERS = [
    ("speechssl.errors",),
    ("speechssl.audio", "speechssl.config", "speechssl.config_files", "speechssl.checkpoint", "speechssl.transcript",
     "speechssl.metrics", "speechssl.device"),
    ("speechssl.models", "speechssl.data", "speechssl.decode", "speechssl.vad", "speechssl.diarize",
     "speechssl.live"),
    ("speechssl.api", "speechssl", "speechssl.client"),
    ("speechssl.evaluation", "speechssl.verification", "speechssl.train", "speechssl.interop"),
    ("speechssl.recipe",),
    ("speechssl.cli", "speechssl.commands", "server"),
]


def layer_of(name: str) -> int:
    matches = [(len(prefix), level) for level, group in enumerate(LAYERS) for prefix in group
               if name == prefix or (name.startswith(prefix + ".") and prefix != "speechssl")]  # the package: itself
    assert matches, f"{name} is in no layer of LAYERS (and of docs/architecture.md)"
    return max(matches)[1]


def test_layers_import_downwards():
    """Lazy imports count too: a function-level import of a higher layer is still a dependency."""
    upward = [f"{name} -> {dep}" for name, deps in module_imports(lazy=True).items() for dep in sorted(deps)
              if layer_of(dep) > layer_of(name)]
    assert not upward, "imports of a higher layer: " + ", ".join(sorted(upward))


def test_every_command_has_a_handler():
    import argparse

    from speechssl.cli import COMMANDS, build_parser

    def paths(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return [prefix.strip()]
        return [p for name, sub in subs[0].choices.items() for p in paths(sub, f"{prefix} {name}")]

    assert sorted(paths(build_parser())) == sorted(COMMANDS)
