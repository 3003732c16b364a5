"""The one YAML reader of UHD: ``yaml.safe_load`` semantics, with a budget on alias expansion.

PyYAML shares an aliased node between its uses, so ``a: &a [x, x, ...]; b: &b [*a, *a, ...]``
loads in microseconds into a small DAG, but anything that walks or prints the result (validation,
an error message quoting the value) sees it fully expanded: 411 bytes became a 2 GB error line.
The composed node graph is measured *as expanded* before any Python object is built, and documents
over ``MAX_YAML_NODES`` are refused.
"""

from __future__ import annotations

from typing import Any

import yaml

#: Expanded nodes a config may have. UHD's largest built-in YAML has a few hundred; 100k leaves room
#: for any hand-written preset or aug config while refusing alias bombs before any work.
MAX_YAML_NODES = 100_000


class YamlRefused(ValueError):
    """The text is not YAML UHD will read; the message is one bounded line without the origin."""


def expanded_node_count(root: yaml.Node, budget: int = MAX_YAML_NODES) -> int:
    """Nodes of ``root`` with every alias expanded, counted without recursion (stops past ``budget``).

    Each distinct node's expanded size is computed once (memoized by identity), so the count is
    linear in the composed graph even when its expansion is exponential.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            total = 1 + sum(sizes[id(c)] for c in children)
            sizes[id(node)] = min(total, budget + 1)
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str, max_nodes: int = MAX_YAML_NODES) -> Any:
    """``yaml.safe_load(text)``, refusing (``YamlRefused``) alias bombs, too-deep nesting and bad syntax."""
    try:  # the reader checks the characters as soon as it is built
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise YamlRefused(f"invalid YAML ({_first_line(exc)})") from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise YamlRefused(f"invalid YAML ({_first_line(exc)})") from None
        except RecursionError:  # PyYAML composes nested collections recursively: '[[[[...' overflows it
            raise YamlRefused("invalid YAML (nested too deeply)") from None
        if node is None:
            return None
        if expanded_node_count(node, max_nodes) > max_nodes:
            raise YamlRefused(f"refused: more than {max_nodes:,} YAML nodes once aliases are expanded "
                              "(an alias bomb?); write the values out")
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise YamlRefused(f"invalid YAML ({_first_line(exc)})") from None
        except RecursionError:
            raise YamlRefused("invalid YAML (nested too deeply)") from None
    finally:
        loader.dispose()


def _first_line(exc: BaseException) -> str:
    from uhd_core.errors import bounded

    text = str(exc).strip()
    return bounded(text.splitlines()[0] if text else type(exc).__name__)
