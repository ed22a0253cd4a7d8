"""Works around an OpenVINO CPU-plugin bug: one weight constant read by two layers in different layouts.

CUSP's explicit guided backward through DEX uses each layer's own weights twice: ONNX ``Gemm(x, W, transB=1)``
(torch's ``linear``, OpenVINO's ``MatMul(x, W, transpose_b=True)``) and ``MatMul(g, W)`` for the gradient;
``Conv(x, W)`` and ``ConvTranspose(g, W)``. When both read the same constant, OpenVINO 2026.4's CPU plugin
repacks the weights for one layer and the other reads them in that layout: it computed ``g @ W.T`` instead of
``g @ W`` (and the transposed convolution likewise), and CUSP's output was off by up to 0.06. A separate copy of
the constant for each kind of reader gives the right products (checked on a two-node graph in the tests). The
copies cost the shared weights' size once more in OpenVINO's memory (the paper DEX's fc6 and fc7, ~480 MB; its
convs share nothing, since CUSP's runner keeps its own weights for the backward convs); nothing else changes.
"""

from __future__ import annotations

from typing import Any

# the layers that repack a constant weight for their kernels
_WEIGHT_READERS = {
    "MatMul",
    "Convolution",
    "ConvolutionBackpropData",
    "GroupConvolution",
    "GroupConvolutionBackpropData",
}


def _layout(consumer: Any, port: int) -> tuple[str, int, bool]:
    """(layer type, port, transposed) of a layer input: the layout in which that layer reads its constant."""
    kind = consumer.get_type_name()
    if kind != "MatMul":
        return kind, port, False
    attrs = consumer.get_attributes()
    return kind, port, bool(attrs["transpose_a"] if port == 0 else attrs["transpose_b"])


def untie_weight_constants(model: Any) -> int:
    """Give each layout of a weight constant read by several layers its own copy, in place; returns the copies."""
    from openvino import op

    copies = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Constant":
            continue
        groups: dict[tuple[int, bool], list[Any]] = {}
        for target in node.output(0).get_target_inputs():
            consumer = target.get_node()
            if consumer.get_type_name() in _WEIGHT_READERS:
                groups.setdefault(_layout(consumer, target.get_index()), []).append(target)
        for targets in list(groups.values())[1:]:  # the first layout keeps the original constant
            copy = op.Constant(node.get_data().copy())
            copy.set_friendly_name(f"{node.get_friendly_name()}/untied{copies}")
            for target in targets:
                target.replace_source_output(copy.output(0))
            copies += 1
    return copies
