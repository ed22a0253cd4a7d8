"""The inference graphs -> ONNX (and Triton model repositories), on top of the runtime.

Installed as ``pyagingrt.export``.
"""
