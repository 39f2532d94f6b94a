"""ComfyUI's node order (execution_order) and the node cache keys (node_cache), without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.kerniegen.execution_order import DependencyCycle, ExecutionList, is_link
from gateway.kerniegen.node_cache import compute_signatures
from gateway.kerniegen.nodes import is_output_node
from tests.kerniegen.workflows import save_image, slow_chain, txt2img


def run_order(prompt: dict[str, Any], outputs: list[str], cached: frozenset[str] = frozenset()) -> list[str]:
    order = ExecutionList(prompt, lambda node: node in cached, lambda node: is_output_node(prompt[node]["class_type"]))
    for output in outputs:
        order.add_node(output)
    ran = []
    while not order.is_empty():
        node = order.next_node()
        ran.append(node)
        order.complete(node)
    return ran


def test_txt2img_runs_in_comfyuis_order() -> None:
    assert run_order(txt2img(), ["9"]) == ["4", "5", "7", "6", "3", "8", "9"]


def test_chain_runs_in_link_order_whatever_the_key_order() -> None:
    assert run_order(slow_chain(scales=3), ["9"]) == ["1", "10", "11", "12", "9"]


def test_outputs_run_as_soon_as_they_can() -> None:
    prompt = {**save_image(prefix="a"), "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "b"}}}
    assert run_order(prompt, ["4", "2"]) == ["1", "2", "3", "4"]


def test_cached_inputs_are_not_scheduled() -> None:
    assert run_order(txt2img(), ["9"], cached=frozenset({"8"})) == ["9"]


def test_a_cycle_is_reported() -> None:
    prompt = {"1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}
    with pytest.raises(DependencyCycle):
        run_order(prompt, ["3"])


@pytest.mark.parametrize(("value", "expected"), [(["1", 0], True), (["1", 0.0], True), (["1"], False), ([1, 0], False),
                                                 (["1", True], False), ("1", False), (["1", 0, 1], False)])
def test_is_link(value: object, expected: bool) -> None:
    assert is_link(value) is expected


def test_signatures_follow_upstream_changes(tmp_path: Path) -> None:
    first = compute_signatures(txt2img(seed=1), tmp_path)
    second = compute_signatures(txt2img(seed=2), tmp_path)
    assert first == compute_signatures(txt2img(seed=1), tmp_path)  # the same prompt: the same keys
    assert [node for node in first if first[node] != second[node]] == ["3", "8", "9"]


def test_signatures_of_file_inputs_and_websocket_outputs(tmp_path: Path) -> None:
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
              "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}}
    (tmp_path / "a.png").write_bytes(b"one")
    before = compute_signatures(prompt, tmp_path)
    assert before["2"] != compute_signatures(prompt, tmp_path)["2"]  # SaveImageWebsocket always runs
    (tmp_path / "a.png").write_bytes(b"other")
    assert before["1"] != compute_signatures(prompt, tmp_path)["1"]  # a changed file is a changed input


def test_signatures_survive_cycles_and_long_chains(tmp_path: Path) -> None:
    cycle = {"1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
             "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}}
    assert set(compute_signatures(cycle, tmp_path)) == {"1", "2"}
    assert len(compute_signatures(slow_chain(scales=3000), tmp_path)) == 3002
