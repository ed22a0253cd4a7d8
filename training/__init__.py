"""Model definitions (the source of truth), losses, data sets and training loops.

Installed as ``pyagingrt.training``. Models, layers and losses never import pyagingrt's runtime. The training
framework (``recipe.py``, ``loop.py``, ``checkpointing.py``, ``recipes/``) is the one exception: it writes
checkpoints through ``pyagingrt.checkpoint`` and maps ages with the runtime adapters' tables
(``pyagingrt.models``), so that what training writes is exactly what ``pyagingrt.load`` reads. The runtime
never imports the framework (only ``agingrt train`` does).
"""
