"""Where KernieGen says its model folders are. Its models are names only (see inventory.py), so
these directories need not exist; they give /internal/folder_paths and /experiment/models the
absolute paths ComfyUI reports for its own folders."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.inventory import MODEL_FOLDERS


def model_folder_paths(config: KernieGenConfig) -> dict[str, list[str]]:
    """Folder name -> [absolute path], in ComfyUI's folder order (DATA_DIR/models/<folder>)."""
    models = Path(os.path.abspath(Path(config.data_dir).expanduser() / "models"))
    return {folder: [str(models / folder)] for folder in MODEL_FOLDERS}
