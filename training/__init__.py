"""Model definitions (the source of truth), losses, data sets and training loops.

Installed as ``pyagingrt.training``. Nothing here imports pyagingrt's runtime.
"""
