"""KernieGen's one web-UI extension, served as a custom node's would be (/extensions/kerniegen/...):
it fills the gaps between ComfyUI frontend 1.27's assumptions and KernieGen's smaller node set.
Kept as text here, not as a .js file, so it ships in every build of the package."""

from __future__ import annotations

from aiohttp import web

EXTENSION_URL = "/extensions/kerniegen/kerniegen_ui.js"

# Why each part exists:
# * The UI maps model folders to ten loader classes and, when any is missing from /object_info,
#   fails to build every ckpt_name/lora_name/vae_name widget (its model-to-node store reads
#   `undefined.name`), so CheckpointLoaderSimple would not even appear. KernieGen has four of them;
#   the others get a hidden placeholder (deprecated, so the node library and search leave them
#   out; queueing one gets KernieGen's own "invalid_prompt" answer).
# * The UI's default graph names "v1-5-pruned-emaonly-fp16.safetensors". When a graph still names
#   that file and KernieGen does not have it, the loader switches to KernieGen's first checkpoint,
#   so the default workflow runs as it comes. Any other missing model is left for the user to see.
EXTENSION_SOURCE = r"""// KernieGen: fits ComfyUI's web UI to KernieGen's node set (served by KernieGen, not by ComfyUI).
import { app } from "../../scripts/app.js";

const LOADERS_THE_UI_ASSUMES = [
  "CheckpointLoaderSimple", "ImageOnlyCheckpointLoader", "LoraLoader", "LoraLoaderModelOnly",
  "VAELoader", "ControlNetLoader", "UNETLoader", "UpscaleModelLoader", "StyleModelLoader",
  "GLIGENLoader",
];
const FRONTEND_DEFAULT_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors";

function placeholder(name) {
  return {
    name,
    display_name: `${name} (not on KernieGen)`,
    description: "KernieGen does not implement this node; it exists so the UI's model menus work.",
    category: "loaders",
    python_module: "kerniegen.placeholder",
    deprecated: true,
    output_node: false,
    input: { required: {} },
    input_order: { required: [] },
    output: [],
    output_is_list: [],
    output_name: [],
  };
}

app.registerExtension({
  name: "KernieGen.UiFit",
  async addCustomNodeDefs(defs) {
    for (const name of LOADERS_THE_UI_ASSUMES) {
      if (!(name in defs)) defs[name] = placeholder(name);
    }
  },
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
