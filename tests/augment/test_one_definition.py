"""Helpers of the augment ops are defined once (three copies of a box clip had grown apart from
one comment), and the original's default augment path is one constant."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import numpy as np

from uhd_core.augment.boxes import clip01

REPO = Path(__file__).resolve().parents[2]


def test_no_function_is_defined_in_two_augment_modules():
    where = defaultdict(list)
    for path in sorted((REPO / "uhd_core" / "augment").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef):
                where[node.name].append(path.name)
    twice = {name: files for name, files in where.items() if len(files) > 1}
    assert not twice, f"defined in several augment modules (share one): {twice}"


def test_the_default_augment_path_is_written_once():
    assigned = []
    for path in sorted((REPO / "uhd_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant) \
                    and node.value.value == "uhd/aug.yaml":
                assigned.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert len(assigned) == 1, assigned


def test_clip01_clips_in_place():
    boxes = np.array([[-0.5, 0.2, 1.5, 0.9]], np.float32)
    out = clip01(boxes)
    assert out is boxes and boxes.tolist() == [[0.0, 0.20000000298023224, 1.0, 0.8999999761581421]]
