"""The model catalog across backends: for each folder, each file name and the backends that have it; and one
backend's files. Made from a snapshot of the kept inventories (Inventories.snapshot()), so it never waits on
a backend; a backend with no inventory kept is listed as unknown, not as having nothing."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.inventory.files import FOLDERS, INPUT_FOLDER, MODEL_FOLDERS
from gateway.inventory.model import Inventory


class ModelCatalog:
    def __init__(self, inventories: Mapping[str, Inventory | None]) -> None:
        """`inventories`: backend name → its inventory, or None when none is known."""
        self._inventories = dict(inventories)

    @property
    def known(self) -> list[str]:
        """The backends whose inventory the catalog holds, sorted."""
        return sorted(name for name, inventory in self._inventories.items() if inventory is not None)

    @property
    def unknown(self) -> list[str]:
        """The backends with no inventory known: what they have is not in the catalog."""
        return sorted(name for name, inventory in self._inventories.items() if inventory is None)

    def folders(self) -> dict[str, dict[str, list[str]]]:
        """Model folder → file name → the sorted backends that have it (GET /gateway/models); folders in
        ComfyUI's order, files sorted. Uploads (the input folder) are no models, and are left out."""
        found: dict[str, dict[str, list[str]]] = {}
        for name in self.known:
            inventory = self._inventories[name]
            assert inventory is not None
            for folder, files in inventory.files.items():
                if folder == INPUT_FOLDER:
                    continue
                in_folder = found.setdefault(folder, {})
                for file in files:
                    in_folder.setdefault(file, []).append(name)  # names come sorted: the lists stay sorted
        return {folder: dict(sorted(found[folder].items())) for folder in MODEL_FOLDERS if folder in found}

    def backend_files(self, name: str, *, include_input: bool = False) -> dict[str, list[str]] | None:
        """One backend's model folder → sorted file names (GET /gateway/backends/{name}/models); None when its
        inventory is unknown (or it is no backend)."""
        inventory = self._inventories.get(name)
        return None if inventory is None else inventory.files_by_folder(include_input=include_input)

    def where_available(self, folder_or_input: str, file: str) -> list[str]:
        """The sorted backends that have `file`: in a folder ("checkpoints", "loras", "input"), or among the
        options of an input of that name ("ckpt_name", "vae_name": built-in choices such as "pixel_space"
        count there, as a backend that lists one accepts it)."""
        by_folder = folder_or_input in FOLDERS
        return [
            name
            for name in self.known
            if (inventory := self._inventories[name]) is not None
            and (inventory.has_file(folder_or_input, file) if by_folder else inventory.offers(folder_or_input, file))
        ]

    def describe(self) -> dict[str, object]:
        """GET /gateway/models' body."""
        return {"folders": self.folders(), "backends": self.known, "unknown_backends": self.unknown}
