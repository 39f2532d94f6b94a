"""The output root of symlinks (gateway/outputs.py), on a real temporary directory tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.outputs.refs import prefix_history, split_view_subfolder
from gateway.outputs.root import OutputRoot, OutputRootError


@pytest.fixture
def backend_dirs(tmp_path: Path) -> dict[str, Path]:
    dirs = {"comfyui": tmp_path / "comfyui-out", "kerniegen": tmp_path / "state" / "kerniegen" / "output"}
    for path in dirs.values():
        path.mkdir(parents=True)
    return dirs


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


def test_sync_creates_root_and_links(root: Path, backend_dirs: dict[str, Path]) -> None:
    changes = OutputRoot(root, backend_dirs).sync()
    assert changes == [
        f"created output root {root}",
        f"linked {root / 'comfyui'} -> {backend_dirs['comfyui']}",
        f"linked {root / 'kerniegen'} -> {backend_dirs['kerniegen']}",
    ]
    for name, target in backend_dirs.items():
        assert (root / name).is_symlink()
        assert Path(os.readlink(root / name)) == target


def test_sync_twice_changes_nothing(root: Path, backend_dirs: dict[str, Path]) -> None:
    OutputRoot(root, backend_dirs).sync()
    assert OutputRoot(root, backend_dirs).sync() == []


def test_sync_repairs_a_wrong_link(root: Path, backend_dirs: dict[str, Path], tmp_path: Path) -> None:
    root.mkdir()
    (root / "comfyui").symlink_to(tmp_path / "elsewhere")
    changes = OutputRoot(root, backend_dirs).sync()
    assert f"repaired {root / 'comfyui'}: {tmp_path / 'elsewhere'} -> {backend_dirs['comfyui']}" in changes
    assert Path(os.readlink(root / "comfyui")) == backend_dirs["comfyui"]
    assert sorted(p.name for p in root.iterdir()) == ["comfyui", "kerniegen"]  # no temporary link left


def test_sync_repairs_a_relative_link(root: Path, backend_dirs: dict[str, Path]) -> None:
    root.mkdir()
    (root / "kerniegen").symlink_to("../comfyui-out")  # resolves somewhere, but not to kerniegen's dir
    OutputRoot(root, backend_dirs).sync()
    assert Path(os.readlink(root / "kerniegen")) == backend_dirs["kerniegen"]


def test_sync_links_a_target_that_does_not_exist_yet(root: Path, tmp_path: Path) -> None:
    later = tmp_path / "not-yet"
    OutputRoot(root, {"comfyui": later}).sync()
    later.mkdir()
    (later / "a.png").write_bytes(b"png")
    assert (root / "comfyui" / "a.png").read_bytes() == b"png"


def test_relative_output_dir_is_made_absolute(root: Path, backend_dirs: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    OutputRoot(root, {"comfyui": Path("comfyui-out")}).sync()
    assert Path(os.readlink(root / "comfyui")) == backend_dirs["comfyui"]


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_sync_refuses_a_real_entry_and_touches_nothing(root: Path, backend_dirs: dict[str, Path], kind: str) -> None:
    root.mkdir()
    entry = root / "comfyui"
    if kind == "directory":
        entry.mkdir()
        (entry / "precious.png").write_bytes(b"keep")
    else:
        entry.write_bytes(b"keep")
    with pytest.raises(OutputRootError, match=f"{entry} is a real {kind}"):
        OutputRoot(root, backend_dirs).sync()
    assert not entry.is_symlink()
    assert (entry / "precious.png" if kind == "directory" else entry).read_bytes() == b"keep"


def test_sync_refuses_a_root_that_is_a_file(root: Path, backend_dirs: dict[str, Path]) -> None:
    root.write_bytes(b"x")
    with pytest.raises(OutputRootError, match="not a directory"):
        OutputRoot(root, backend_dirs).sync()


def test_sync_leaves_entries_of_other_backends_alone(root: Path, backend_dirs: dict[str, Path], tmp_path: Path) -> None:
    root.mkdir()
    (root / "retired").symlink_to(tmp_path)
    (root / "notes.txt").write_text("mine")
    OutputRoot(root, backend_dirs).sync()
    assert (root / "retired").is_symlink() and (root / "notes.txt").read_text() == "mine"


def test_backend_without_output_dir_gets_no_link(root: Path, backend_dirs: dict[str, Path]) -> None:
    outputs = OutputRoot(root, {"comfyui": backend_dirs["comfyui"]})
    outputs.sync()
    assert not (root / "kerniegen").exists()
    with pytest.raises(ValueError, match="has no output_dir"):
        outputs.path_for("kerniegen", "", "a.png")


@pytest.mark.parametrize(
    ("subfolder", "filename", "relative"),
    [("", "a.png", "comfyui/a.png"), ("gwref", "a.png", "comfyui/gwref/a.png"),
     ("a/b", "c d.png", "comfyui/a/b/c d.png"), ("gwref/", "a.png", "comfyui/gwref/a.png"),
     ("a//b", "x.png", "comfyui/a/b/x.png"), ("a..b", "x..y.png", "comfyui/a..b/x..y.png")],
    ids=["empty-subfolder", "subfolder", "nested-and-space", "trailing-slash", "inner-empty-segment", "dots-in-names"],
)
def test_path_for(root: Path, backend_dirs: dict[str, Path], subfolder: str, filename: str, relative: str) -> None:
    assert OutputRoot(root, backend_dirs).path_for("comfyui", subfolder, filename) == root / relative


@pytest.mark.parametrize(
    ("subfolder", "filename"),
    [("..", "a.png"), ("a/../..", "a.png"), ("/etc", "passwd"), ("", ".."), ("", "../a.png"), ("", "a/b.png"),
     ("", ""), ("a\\..", "a.png"), ("", "a\x00.png"), ("C:", "a.png")],
    ids=["dotdot", "dotdot-deep", "absolute", "filename-dotdot", "filename-dir-escape", "filename-with-slash",
         "empty-filename", "backslash", "nul", "drive"],
)
def test_path_for_refuses(root: Path, backend_dirs: dict[str, Path], subfolder: str, filename: str) -> None:
    with pytest.raises(ValueError):
        OutputRoot(root, backend_dirs).path_for("comfyui", subfolder, filename)


@pytest.mark.parametrize("original_subfolder", ["", "gwref", "a/b"], ids=["empty", "one", "nested"])
def test_rewritten_ref_is_a_file_under_the_root(root: Path, backend_dirs: dict[str, Path],
                                               original_subfolder: str) -> None:
    """CLIENTS.md #9: `OUTPUT_DIR/subfolder/filename` of a rewritten ref finds the backend's file."""
    written = backend_dirs["kerniegen"].joinpath(*original_subfolder.split("/"), "out_00001_.png")
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_bytes(b"\x89PNG bytes")
    outputs = OutputRoot(root, backend_dirs)
    outputs.sync()

    ref = {"filename": "out_00001_.png", "subfolder": original_subfolder, "type": "output"}
    prefix_history({"p": {"outputs": {"9": {"images": [ref]}}}}, "kerniegen")
    assert (root / ref["subfolder"] / ref["filename"]).read_bytes() == b"\x89PNG bytes"

    backend, own_subfolder = split_view_subfolder(ref["subfolder"], backend_dirs)
    assert backend == "kerniegen"
    assert outputs.path_for(backend, own_subfolder, ref["filename"]).read_bytes() == b"\x89PNG bytes"
