"""KernieGen's one web-UI extension, served as a custom node's would be (/extensions/kerniegen/...):
it fits the UI's default graph to KernieGen's checkpoints.
Kept as text here, not as a .js file, so it ships in every build of the package."""

from __future__ import annotations

from aiohttp import web

EXTENSION_URL = "/extensions/kerniegen/kerniegen_ui.js"

# The UI's default graph names "v1-5-pruned-emaonly-fp16.safetensors". When a graph still names that
# file and KernieGen does not have it, the loader switches to KernieGen's first checkpoint, so the
# default workflow runs as it comes. Any other missing model is left for the user to see.
# (The ten loader classes the UI builds its model menus from are all real KernieGen nodes, so no
# stand-ins are needed for them.)
EXTENSION_SOURCE = r"""// KernieGen: fits ComfyUI's web UI to KernieGen's models (served by KernieGen, not by ComfyUI).
import { app } from "../../scripts/app.js";

const FRONTEND_DEFAULT_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors";

app.registerExtension({
  name: "KernieGen.UiFit",
  loadedGraphNode(node) {
    if (node.comfyClass !== "CheckpointLoaderSimple") return;
    const widget = node.widgets?.find((w) => w.name === "ckpt_name");
    const available = widget?.options?.values;
    if (widget && widget.value === FRONTEND_DEFAULT_CHECKPOINT && Array.isArray(available)
        && available.length > 0 && !available.includes(widget.value)) {
      widget.value = available[0];
    }
  },
});
"""


async def get_extension_script(request: web.Request) -> web.Response:
    return web.Response(text=EXTENSION_SOURCE, content_type="text/javascript")
