"""TFLite to ONNX for the small convolutional models the clinical view uses (MediaPipe's face landmark and
iris landmark models), so that they run on onnxruntime like YuNet and need no TFLite runtime on the device.

Why our own converter: `tflite2onnx` stops on the face landmark model, whose weights are stored as fp16 and
turned into fp32 by DEQUANTIZE operators at load time. These models use eight operators; each is written out
here by hand, in NCHW (onnxruntime's native layout), with the fp16 weights folded to fp32 constants. An
operator outside the eight, or a layout this does not handle, stops the conversion with its name: a model
is converted whole or not at all. Parity with the TFLite original is checked by the caller
(`landmark_models.py`), never assumed.

The output is deterministic: the same .tflite gives a byte-identical .onnx (fixed opset, IR version,
producer and value names; no timestamps).

Tools wing: the product never imports this (it loads the .onnx files).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

OPSET = 13
IR_VERSION = 7
PRODUCER = "edge-mask tflite_onnx"
TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)


class ConversionError(Exception):
    """The model uses something this converter does not write; nothing is produced."""


@dataclass
class _Graph:
    """The ONNX graph being written, and what is known about each TFLite tensor."""

    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    consts: dict[int, npt.NDArray[Any]] = field(default_factory=dict)
    """TFLite tensor index -> constant value (weights, folded fp16 weights, paddings)."""
    names: dict[int, str] = field(default_factory=dict)
    """TFLite tensor index -> ONNX value name, for tensors computed at run time."""
    nchw: set[int] = field(default_factory=set)
    """Run-time 4-D tensors held in NCHW (all of them, except after a RESHAPE)."""
    counter: int = 0

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}_{self.counter}"

    def constant(self, stem: str, value: npt.NDArray[Any]) -> str:
        from onnx import numpy_helper

        name = self.fresh(stem)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], stem: str, **attrs: Any) -> str:
        from onnx import helper

        out = self.fresh(stem)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _tensor_array(model: Any, tensor: Any) -> npt.NDArray[Any] | None:
    """The constant data of a TFLite tensor, or None when it is computed at run time."""
    import tflite

    data = model.Buffers(tensor.Buffer()).DataAsNumpy()
    if isinstance(data, int) or data.size == 0:
        return None
    dtypes = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
              tflite.TensorType.INT32: np.int32, tflite.TensorType.INT64: np.int64}
    dtype = dtypes.get(tensor.Type())
    if dtype is None:
        raise ConversionError(f"constant tensor {tensor.Name().decode()!r} has TFLite type {tensor.Type()}")
    shape = [int(v) for v in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
    array: npt.NDArray[Any] = np.frombuffer(data.tobytes(), dtype).reshape(shape)
    return array


def _options(op: Any, cls: Any) -> Any:
    table = op.BuiltinOptions()
    if table is None:
        raise ConversionError(f"operator without its {cls.__name__}")
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    return opts


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding for one spatial axis: (before, after), the odd pixel after."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def convert(tflite_bytes: bytes, graph_name: str) -> bytes:
    """The ONNX model (serialized) equivalent to a single-subgraph float TFLite model.

    Inputs and outputs keep their TFLite names, shapes and NHWC layout, so a caller feeds both models the
    same arrays and compares the same outputs.
    """
    import onnx
    import tflite
    from onnx import TensorProto, helper

    model = tflite.Model.GetRootAsModel(tflite_bytes, 0)
    if model.SubgraphsLength() != 1:
        raise ConversionError(f"{model.SubgraphsLength()} subgraphs; only single-subgraph models convert")
    sub = model.Subgraphs(0)
    g = _Graph()
    op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

    def tensor(index: int) -> Any:
        return sub.Tensors(index)

    def shape_of(index: int) -> list[int]:
        return [int(v) for v in tensor(index).ShapeAsNumpy()]

    def name_of(index: int) -> str:
        return str(tensor(index).Name().decode())

    for index in range(sub.TensorsLength()):
        data = _tensor_array(model, tensor(index))
        if data is not None:
            g.consts[index] = data

    graph_inputs = []
    for index in (int(i) for i in sub.InputsAsNumpy()):
        shape = shape_of(index)
        graph_inputs.append(helper.make_tensor_value_info(name_of(index), TensorProto.FLOAT, shape))
        if len(shape) == 4:
            g.names[index] = g.node("Transpose", [name_of(index)], "to_nchw", perm=list(TO_NCHW))
            g.nchw.add(index)
        else:
            g.names[index] = name_of(index)

    def runtime(index: int, op: str) -> str:
        if index not in g.names:
            raise ConversionError(f"{op}: input {name_of(index)!r} is neither computed nor constant")
        return g.names[index]

    def activation(value: str, fused: int, op: str) -> str:
        if fused == tflite.ActivationFunctionType.NONE:
            return value
        if fused == tflite.ActivationFunctionType.RELU:
            return g.node("Relu", [value], "relu")
        if fused == tflite.ActivationFunctionType.RELU6:
            low = g.constant("zero", np.array(0.0, np.float32))
            high = g.constant("six", np.array(6.0, np.float32))
            return g.node("Clip", [value, low, high], "relu6")
        raise ConversionError(f"{op}: fused activation {fused} is not supported")

    for number in range(sub.OperatorsLength()):
        op = sub.Operators(number)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        ins = [int(i) for i in op.InputsAsNumpy()]
        out = int(op.OutputsAsNumpy()[0])
        where = f"operator {number} ({kind})"
        if kind == "DEQUANTIZE":
            source = g.consts.get(ins[0])
            if source is None or source.dtype != np.float16:
                raise ConversionError(f"{where}: only constant fp16 weights are dequantized (folded) here")
            g.consts[out] = source.astype(np.float32)
            continue
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            x, weights = runtime(ins[0], where), g.consts.get(ins[1])
            if weights is None or ins[0] not in g.nchw:
                raise ConversionError(f"{where}: weights must be constant and the input 4-D")
            depthwise = kind == "DEPTHWISE_CONV_2D"
            opts = _options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
            _, height, width, channels = shape_of(ins[0])
            if depthwise:  # [1, kh, kw, out] -> [out, 1, kh, kw], one group per input channel
                kernel = np.transpose(weights, (3, 0, 1, 2)).astype(np.float32)
                group = channels
            else:  # [out, kh, kw, in] -> [out, in, kh, kw]
                kernel = np.transpose(weights, (0, 3, 1, 2)).astype(np.float32)
                group = 1
            kh, kw = kernel.shape[2], kernel.shape[3]
            strides = [opts.StrideH(), opts.StrideW()]
            dilations = [opts.DilationHFactor(), opts.DilationWFactor()]
            pads = [0, 0, 0, 0]
            if opts.Padding() == tflite.Padding.SAME:
                top, bottom = _same_pads(height, kh, strides[0], dilations[0])
                left, right = _same_pads(width, kw, strides[1], dilations[1])
                pads = [top, left, bottom, right]
            inputs = [x, g.constant("w", kernel)]
            if len(ins) > 2 and ins[2] >= 0:
                bias = g.consts.get(ins[2])
                if bias is None:
                    raise ConversionError(f"{where}: the bias must be constant")
                inputs.append(g.constant("b", bias.astype(np.float32)))
            value = g.node("Conv", inputs, "conv", kernel_shape=[kh, kw], strides=strides, dilations=dilations,
                           pads=pads, group=group)
            g.names[out] = activation(value, opts.FusedActivationFunction(), where)
            g.nchw.add(out)
            continue
        if kind == "PRELU":
            alpha = g.consts.get(ins[1])
            if alpha is None or ins[0] not in g.nchw:
                raise ConversionError(f"{where}: the slope must be constant and the input 4-D")
            channels = shape_of(ins[0])[3]
            if alpha.size != channels or (alpha.ndim and alpha.shape[-1] != channels):
                raise ConversionError(f"{where}: a slope of shape {alpha.shape} is not one per channel")
            slope = g.constant("slope", alpha.astype(np.float32).reshape(channels, 1, 1))
            g.names[out] = g.node("PRelu", [runtime(ins[0], where), slope], "prelu")
            g.nchw.add(out)
            continue
        if kind == "ADD":
            if not all(i in g.nchw for i in ins):
                raise ConversionError(f"{where}: only the sum of two computed 4-D tensors is supported")
            value = g.node("Add", [runtime(ins[0], where), runtime(ins[1], where)], "add")
            g.names[out] = activation(value, _options(op, tflite.AddOptions).FusedActivationFunction(), where)
            g.nchw.add(out)
            continue
        if kind == "MAX_POOL_2D":
            if ins[0] not in g.nchw:
                raise ConversionError(f"{where}: only a computed 4-D input is supported")
            opts = _options(op, tflite.Pool2DOptions)
            _, height, width, _ = shape_of(ins[0])
            kh, kw, sh, sw = opts.FilterHeight(), opts.FilterWidth(), opts.StrideH(), opts.StrideW()
            pads = [0, 0, 0, 0]
            if opts.Padding() == tflite.Padding.SAME:
                top, bottom = _same_pads(height, kh, sh, 1)
                left, right = _same_pads(width, kw, sw, 1)
                pads = [top, left, bottom, right]
            value = g.node("MaxPool", [runtime(ins[0], where)], "pool", kernel_shape=[kh, kw], strides=[sh, sw],
                           pads=pads)
            g.names[out] = activation(value, opts.FusedActivationFunction(), where)
            g.nchw.add(out)
            continue
        if kind == "PAD":
            paddings = g.consts.get(ins[1])
            if paddings is None or ins[0] not in g.nchw or paddings.shape != (4, 2):
                raise ConversionError(f"{where}: only constant paddings of a 4-D tensor are supported")
            n, h, w, c = (paddings[i] for i in range(4))  # NHWC rows of (before, after)
            widths = np.array([n[0], c[0], h[0], w[0], n[1], c[1], h[1], w[1]], np.int64)
            g.names[out] = g.node("Pad", [runtime(ins[0], where), g.constant("pads", widths)], "pad", mode="constant")
            g.nchw.add(out)
            continue
        if kind == "RESHAPE":
            x = runtime(ins[0], where)
            if ins[0] in g.nchw:  # back to TFLite's element order before flattening
                x = g.node("Transpose", [x], "to_nhwc", perm=list(TO_NHWC))
            target = np.array(shape_of(out), np.int64)
            g.names[out] = g.node("Reshape", [x, g.constant("shape", target)], "reshape")
            continue
        raise ConversionError(f"{where}: not supported by this converter")

    outputs = []
    for index in (int(i) for i in sub.OutputsAsNumpy()):
        value = runtime(index, "graph output")
        if index in g.nchw:
            value = g.node("Transpose", [value], "to_nhwc", perm=list(TO_NHWC))
        g.nodes.append(helper.make_node("Identity", [value], [name_of(index)], name=f"output_{name_of(index)}"))
        outputs.append(helper.make_tensor_value_info(name_of(index), TensorProto.FLOAT, shape_of(index)))
    graph = helper.make_graph(g.nodes, graph_name, graph_inputs, outputs, initializer=g.initializers)
    onnx_model = helper.make_model(graph, producer_name=PRODUCER, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx_model.ir_version = IR_VERSION
    onnx.checker.check_model(onnx_model)
    log.info("converted %s: %d TFLite operators -> %d ONNX nodes", graph_name, sub.OperatorsLength(), len(g.nodes))
    serialized: bytes = onnx_model.SerializeToString(deterministic=True)
    return serialized
