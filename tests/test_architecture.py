"""The package's layers: every import points down (or within its own stage)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "onnx_slim"

# Bottom to top. A module may import its own stage and any stage listed before it.
LAYERS = [
    {"errors", "formatting"},
    {"ir"},
    {"ops"},
    {"normalize"},
    {"channels"},
    {"data"},
    {"criteria"},
    {"plan"},
    {"apply"},
    {"deploy"},
    {"pipeline"},
    {"cli", "cli_options", "interrupts", "__init__", "__main__"},
]
RANK = {stage: rank for rank, stages in enumerate(LAYERS) for stage in stages}


def _stage(module: str) -> str:
    """`onnx_slim.plan.planner` -> `plan`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "onnx_slim":
                names.update(f"onnx_slim.{alias.name}" for alias in node.names)
            elif node.module.startswith("onnx_slim."):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("onnx_slim."))
    return names


def test_every_stage_is_ranked():
    stages = {path.stem if path.parent == PACKAGE else path.relative_to(PACKAGE).parts[0]
              for path in PACKAGE.rglob("*.py")}
    assert stages <= set(RANK), f"unranked stages: {sorted(stages - set(RANK))}"


def test_imports_point_down():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        importer = relative.stem if len(relative.parts) == 1 else relative.parts[0]
        for imported in _imports(path):
            if imported == "onnx_slim.__version__":
                continue
            if RANK[_stage(imported)] > RANK[importer]:
                upward.append(f"{relative} imports {imported}")
    assert not upward, "\n".join(sorted(upward))


def test_no_relative_imports():
    """Absolute imports name the stage, which is what the layer check reads."""
    relative = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert not relative, relative
