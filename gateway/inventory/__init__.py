"""What each backend can run, read from its GET /object_info: node classes, their inputs, the model files.

    files.py        which combo inputs list files, and the folder each belongs to (ComfyUI's /models names)
    model.py        Inventory: one backend's /object_info read into frozen values; junk skipped and counted
    inventories.py  Inventories: one inventory per backend, kept with a TTL, refreshed in the background
    catalog.py      ModelCatalog: each model file and the backends that have it
"""
