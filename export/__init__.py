"""PyTorch -> ONNX exporters and official-checkpoint converters. Installed as ``pyagingrt.export``."""
