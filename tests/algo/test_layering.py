"""`megatron_codistill.algo` is the bottom layer: it may import torch (not torch.distributed), the
standard library and itself, nothing else of the package and nothing of Megatron."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import megatron_codistill.algo as algo

ALGO_DIR = Path(algo.__file__).parent


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package megatron_codistill.algo
                base = ["megatron_codistill", "algo"][: 2 - (node.level - 1)]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module or "")
                names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_algo_imports_only_torch_stdlib_and_itself():
    files = sorted(ALGO_DIR.glob("*.py"))
    assert len(files) >= 8
    bad = []
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            if name.startswith(("torch.distributed", "megatron.")) or top == "megatron":
                bad.append((path.name, name))
            elif top == "megatron_codistill" and not name.startswith("megatron_codistill.algo"):
                bad.append((path.name, name))
            elif (
                top not in {"torch", "megatron_codistill", "__future__"}
                and top not in sys.stdlib_module_names
            ):
                bad.append((path.name, name))
    assert not bad, f"forbidden imports in megatron_codistill/algo: {bad}"


def test_layering_check_catches_forbidden_imports(tmp_path):
    """The walker sees every import form (so the check above can fail)."""
    src = tmp_path / "x.py"
    src.write_text(
        "import torch.distributed as dist\nfrom megatron.core import mpu\n"
        "from megatron_codistill.parallel import groups\nfrom ..trainer import loop\n"
    )
    names = _imports(src)
    assert "torch.distributed" in names and "megatron.core" in names
    assert "megatron_codistill.parallel" in names and "megatron_codistill.trainer" in names
