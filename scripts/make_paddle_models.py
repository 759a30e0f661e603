"""Build small PaddlePaddle models in the style of PaddleOCR's mobile models and export them with paddle2onnx.

Every committed model built by ``scripts/make_models.py`` comes from PyTorch;
users also bring Paddle exports (PP-OCR detectors, recognizers and
orientation classifiers converted by paddle2onnx at opset 11 and newer). This
script writes such exports, with hand-written layers in ``paddle.nn`` and
seeded random weights (no PaddleOCR code, file or pretrained weight is used).

Needs PaddlePaddle and paddle2onnx, which the project does not depend on; use
a separate venv::

    python3 -m venv .paddle-venv
    .paddle-venv/bin/pip install paddlepaddle==3.1.1 paddle2onnx==2.1.0 onnx onnxruntime numpy
    .paddle-venv/bin/python scripts/make_paddle_models.py              # into models/
    .paddle-venv/bin/python scripts/make_paddle_models.py --only dbnet --out /tmp/zoo

The committed files were built with paddlepaddle 3.1.1 (CPU), paddle2onnx 2.1.0,
onnx 1.17.0 and onnxruntime 1.32.0 (the script prints the versions it ran with).
The newest paddlepaddle, 3.3.1, does not work with paddle2onnx 2.1.0: every
``nearest_interp`` (``F.upsample``) makes paddle2onnx exit with status 255.

Export path, as in the PaddleOCR deployment docs: ``paddle.jit.save`` with an
``InputSpec`` (the static inference model), then ``paddle2onnx.export`` with
its defaults (``auto_upgrade_opset=True``, ``enable_optimize=True``).

Files written into ``--out`` (default ``models/``):

* ``pplcnet_paddle.onnx``: PP-LCNet-style classifier (text-line orientation
  style, 4 classes): conv stem, depthwise-separable blocks (dw 3x3/5x5 +
  pointwise, BN, HardSwish), two SE blocks (AdaptiveAvgPool2D -> 1x1 conv ->
  ReLU -> 1x1 conv -> Hardsigmoid -> multiply), global pool, 1x1 "last conv"
  + HardSwish + Dropout(mode="downscale_in_infer", i.e. a scale in eval),
  flatten, Linear, softmax. Input ``x [N, 3, 48, 192]``, dynamic N. Opset 11.
* ``dbnet_paddle.onnx`` / ``dbnet_paddle_op14.onnx``: DB-style text
  detector: MobileNetV3-ish backbone (HardSwish/ReLU, SE with
  hardsigmoid(slope=0.2), strided depthwise convs, residuals) with 4 feature
  scales (1/4 .. 1/32), DB-FPN neck (1x1 convs to 32 channels, nearest
  ``F.upsample`` x2 + add, 3x3 convs to 8 channels, upsample to 1/4, concat),
  DB head (3x3 conv + BN + ReLU, Conv2DTranspose 2x2/2 + BN + ReLU,
  Conv2DTranspose 2x2/2 -> 1 channel, sigmoid). Input ``x [N, 3, H, W]``
  with N, H, W dynamic (H, W multiples of 32). Opset 11 and 14.
* ``svtr_paddle.onnx`` / ``svtr_paddle_op17.onnx``: PP-OCRv3-style
  recognizer: conv backbone with (2, 1) strides down to height 1, an
  SVTR-style neck (3x3 + 1x1 conv, flatten -> [N, T, C], two transformer
  blocks with LayerNorm, qkv Linear + reshape/transpose/matmul/softmax
  attention, MLP with GELU / Swish, residual adds, final LayerNorm, reshape
  back to NCHW, 1x1 conv, concat with the shortcut, 3x3 + 1x1 conv), squeeze
  height, transpose to [N, T, C], Linear CTC head over 40 classes, softmax.
  Input ``x [N, 3, 48, W]`` with N, W dynamic (W a multiple of 4). Opset 11
  (LayerNormalization decomposed into ReduceMean/Sub/Pow/Sqrt/Div) and 17.
* ``shufflenet_paddle.onnx``: ``paddle.vision.models.shufflenet_v2_x0_25``
  (random weights, 4 classes, last 1x1 conv narrowed from 512 to 128
  channels to keep the file small): channel shuffle
  (reshape/transpose/reshape), split and concat. Input ``x [N, 3, 64, 64]``,
  N dynamic (paddle.vision's channel_shuffle reads H, W as Python ints, so
  ``jit.save`` refuses dynamic H/W). Opset 11.

Each file is checked with ``onnx.checker.check_model(full_check=True)`` and
run in onnxruntime against paddle's own output on random batches (at two
shapes for the models with dynamic H/W), and must stay below 400 KB.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np

try:
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F
    import paddle2onnx
except ImportError:  # pragma: no cover
    sys.exit("error: this script needs paddlepaddle and paddle2onnx; "
             "pip install paddlepaddle paddle2onnx (in a separate venv)")

import onnx
import onnxruntime as ort

MAX_KB = 400
VERBOSE = False
RTOL, ATOL = 1e-3, 1e-4


# --------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------


class ConvBNAct(nn.Layer):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, act="hardswish"):
        super().__init__()
        pad = (k - 1) // 2
        self.conv = nn.Conv2D(cin, cout, k, stride=stride, padding=pad, groups=groups, bias_attr=False)
        self.bn = nn.BatchNorm2D(cout)
        self.act = {"hardswish": nn.Hardswish(), "relu": nn.ReLU(), None: None}[act]

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class LCNetSE(nn.Layer):
    """PaddleClas PP-LCNet SEModule: pool -> conv -> relu -> conv -> hardsigmoid -> multiply."""

    def __init__(self, c, reduction=4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.conv1 = nn.Conv2D(c, c // reduction, 1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2D(c // reduction, c, 1)
        self.hardsigmoid = nn.Hardsigmoid()

    def forward(self, x):
        s = self.hardsigmoid(self.conv2(self.relu(self.conv1(self.pool(x)))))
        return paddle.multiply(x=x, y=s)


class DepthwiseSeparable(nn.Layer):
    def __init__(self, cin, cout, k, stride, use_se=False):
        super().__init__()
        self.dw = ConvBNAct(cin, cin, k, stride, groups=cin)
        self.se = LCNetSE(cin) if use_se else None
        self.pw = ConvBNAct(cin, cout, 1)

    def forward(self, x):
        x = self.dw(x)
        if self.se is not None:
            x = self.se(x)
        return self.pw(x)


class PPLCNet(nn.Layer):
    # (k, cin, cout, stride, se), PaddleClas NET_CONFIG style, narrow
    CFG = ((3, 8, 16, 1, False), (3, 16, 24, 2, False), (3, 24, 24, 1, False),
           (3, 24, 48, 2, False), (5, 48, 48, 1, False), (5, 48, 64, 2, True),
           (5, 64, 64, 1, True))

    def __init__(self, num_classes=4, last_ch=128):
        super().__init__()
        self.stem = ConvBNAct(3, 8, 3, 2)
        self.blocks = nn.Sequential(*[DepthwiseSeparable(ci, co, k, s, se) for k, ci, co, s, se in self.CFG])
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.last_conv = nn.Conv2D(self.CFG[-1][2], last_ch, 1, bias_attr=False)
        self.hardswish = nn.Hardswish()
        self.dropout = nn.Dropout(p=0.2, mode="downscale_in_infer")
        self.flatten = nn.Flatten(start_axis=1, stop_axis=-1)
        self.fc = nn.Linear(last_ch, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = self.dropout(self.hardswish(self.last_conv(self.avg_pool(x))))
        x = self.fc(self.flatten(x))
        return F.softmax(x, axis=1)


class OCRSE(nn.Layer):
    """PaddleOCR MobileNetV3 SEModule: hardsigmoid(slope=0.2, offset=0.5)."""

    def __init__(self, c, reduction=4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.conv1 = nn.Conv2D(c, c // reduction, 1)
        self.conv2 = nn.Conv2D(c // reduction, c, 1)

    def forward(self, inputs):
        out = F.relu(self.conv1(self.avg_pool(inputs)))
        out = F.hardsigmoid(self.conv2(out), slope=0.2, offset=0.5)
        return inputs * out


class ResidualUnit(nn.Layer):
    def __init__(self, cin, mid, cout, k, stride, use_se, act):
        super().__init__()
        self.if_shortcut = stride == 1 and cin == cout
        self.expand = ConvBNAct(cin, mid, 1, act=act)
        self.bottleneck = ConvBNAct(mid, mid, k, stride, groups=mid, act=act)
        self.se = OCRSE(mid) if use_se else None
        self.linear = ConvBNAct(mid, cout, 1, act=None)

    def forward(self, inputs):
        x = self.bottleneck(self.expand(inputs))
        if self.se is not None:
            x = self.se(x)
        x = self.linear(x)
        return paddle.add(inputs, x) if self.if_shortcut else x


class MobileNetV3Det(nn.Layer):
    """4 output scales (1/4, 1/8, 1/16, 1/32), like PaddleOCR's det MobileNetV3."""

    # k, exp, c, se, act, s
    CFG = (
        ((3, 16, 16, False, "relu", 1), (3, 32, 16, False, "relu", 2)),
        ((5, 32, 24, True, "relu", 2), (5, 48, 24, True, "relu", 1)),
        ((3, 64, 32, False, "hardswish", 2), (3, 64, 32, False, "hardswish", 1),
         (3, 64, 40, True, "hardswish", 1)),
        ((5, 96, 40, True, "hardswish", 2), (5, 80, 40, True, "hardswish", 1)),
    )

    def __init__(self):
        super().__init__()
        self.conv = ConvBNAct(3, 16, 3, 2)
        self.stages = nn.LayerList()
        self.out_channels = []
        cin = 16
        for i, stage in enumerate(self.CFG):
            layers = []
            for k, exp, c, se, act, s in stage:
                layers.append(ResidualUnit(cin, exp, c, k, s, se, act))
                cin = c
            if i == len(self.CFG) - 1:
                layers.append(ConvBNAct(cin, 64, 1))  # conv_last
                cin = 64
            self.stages.append(nn.Sequential(*layers))
            self.out_channels.append(cin)

    def forward(self, x):
        x = self.conv(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class DBFPN(nn.Layer):
    def __init__(self, in_channels, out_channels=32):
        super().__init__()
        self.in_convs = nn.LayerList([nn.Conv2D(c, out_channels, 1, bias_attr=False) for c in in_channels])
        self.p_convs = nn.LayerList(
            [nn.Conv2D(out_channels, out_channels // 4, 3, padding=1, bias_attr=False) for _ in in_channels])

    def forward(self, x):
        c2, c3, c4, c5 = x
        in5 = self.in_convs[3](c5)
        in4 = self.in_convs[2](c4)
        in3 = self.in_convs[1](c3)
        in2 = self.in_convs[0](c2)
        out4 = in4 + F.upsample(in5, scale_factor=2, mode="nearest", align_mode=1)
        out3 = in3 + F.upsample(out4, scale_factor=2, mode="nearest", align_mode=1)
        out2 = in2 + F.upsample(out3, scale_factor=2, mode="nearest", align_mode=1)
        p5 = self.p_convs[3](in5)
        p4 = self.p_convs[2](out4)
        p3 = self.p_convs[1](out3)
        p2 = self.p_convs[0](out2)
        p5 = F.upsample(p5, scale_factor=8, mode="nearest", align_mode=1)
        p4 = F.upsample(p4, scale_factor=4, mode="nearest", align_mode=1)
        p3 = F.upsample(p3, scale_factor=2, mode="nearest", align_mode=1)
        return paddle.concat([p5, p4, p3, p2], axis=1)


class DBHead(nn.Layer):
    def __init__(self, cin):
        super().__init__()
        mid = cin // 4
        self.conv1 = nn.Conv2D(cin, mid, 3, padding=1, bias_attr=False)
        self.conv_bn1 = nn.BatchNorm(mid, act="relu")
        self.conv2 = nn.Conv2DTranspose(mid, mid, 2, stride=2)
        self.conv_bn2 = nn.BatchNorm(mid, act="relu")
        self.conv3 = nn.Conv2DTranspose(mid, 1, 2, stride=2)

    def forward(self, x):
        x = self.conv_bn1(self.conv1(x))
        x = self.conv_bn2(self.conv2(x))
        return F.sigmoid(self.conv3(x))


class DBNet(nn.Layer):
    def __init__(self):
        super().__init__()
        self.backbone = MobileNetV3Det()
        self.neck = DBFPN(self.backbone.out_channels, 32)
        self.head = DBHead(32)

    def forward(self, x):
        return self.head(self.neck(self.backbone(x)))


class Mlp(nn.Layer):
    def __init__(self, dim, hidden, act):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Layer):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.dim = dim

    def forward(self, x):
        qkv = self.qkv(x).reshape((0, -1, 3, self.num_heads, self.head_dim)).transpose((2, 0, 3, 1, 4))
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = F.softmax(q.matmul(k.transpose((0, 1, 3, 2))), axis=-1)
        x = attn.matmul(v).transpose((0, 2, 1, 3)).reshape((0, -1, self.dim))
        return self.proj(x)


class SVTRBlock(nn.Layer):
    def __init__(self, dim, heads, mlp_ratio, act):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, epsilon=1e-5)
        self.mixer = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, epsilon=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SVTRRec(nn.Layer):
    def __init__(self, num_classes=40, dim=32):
        super().__init__()
        # backbone: 48 -> 24 (s2) -> 12 -> 6 -> 3 (s (2,1)) -> 1 (pool (3,2)); width / 4
        self.backbone = nn.Sequential(
            ConvBNAct(3, 16, 3, 2),
            ConvBNAct(16, 16, 3, 1, groups=16), ConvBNAct(16, 32, 1),
            ConvBNAct(32, 32, 3, (2, 1), groups=32), ConvBNAct(32, 48, 1),
            ConvBNAct(48, 48, 3, (2, 1), groups=48), ConvBNAct(48, 64, 1),
            ConvBNAct(64, 64, 5, (2, 1), groups=64), ConvBNAct(64, 64, 1),
            nn.AvgPool2D(kernel_size=(3, 2), stride=(3, 2)),
        )
        cin = 64
        # SVTR neck (EncoderWithSVTR style)
        self.conv1 = ConvBNAct(cin, cin // 8, 3, act="hardswish")
        self.conv2 = ConvBNAct(cin // 8, dim, 1, act="hardswish")
        self.blocks = nn.LayerList([SVTRBlock(dim, 4, 2.0, nn.GELU), SVTRBlock(dim, 4, 2.0, nn.Swish)])
        self.norm = nn.LayerNorm(dim, epsilon=1e-6)
        self.conv3 = ConvBNAct(dim, cin, 1, act="hardswish")
        self.conv4 = ConvBNAct(2 * cin, cin // 8, 3, act="hardswish")
        self.conv1x1 = ConvBNAct(cin // 8, dim, 1, act="hardswish")
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        h = self.backbone(x)
        z = self.conv2(self.conv1(h))
        _, C, H, W = z.shape
        z = z.flatten(2).transpose((0, 2, 1))
        for blk in self.blocks:
            z = blk(z)
        z = self.norm(z)
        z = z.reshape((0, H, W, C)).transpose((0, 3, 1, 2))
        z = self.conv3(z)
        z = paddle.concat((h, z), axis=1)
        z = self.conv1x1(self.conv4(z))
        z = z.squeeze(axis=2).transpose((0, 2, 1))  # Im2Seq: [N, T, C]
        return F.softmax(self.fc(z), axis=2)


def shufflenet(num_classes=4, last_ch=128):
    """paddle.vision's ShuffleNetV2 x0.25 with its 96->512 last conv narrowed to 96->128 (file size)."""
    from paddle.vision.models import shufflenet_v2_x0_25
    from paddle.vision.ops import ConvNormActivation

    model = shufflenet_v2_x0_25(num_classes=num_classes)
    model._last_conv = ConvNormActivation(96, last_ch, kernel_size=1, stride=1, padding=0,
                                          activation_layer=nn.ReLU)
    model._fc = nn.Linear(last_ch, num_classes)
    return model


# --------------------------------------------------------------------------
# zoo
# --------------------------------------------------------------------------


@dataclass
class Arch:
    build: Callable[[], nn.Layer]
    spec: list  # InputSpec shape
    check_shapes: list  # concrete input shapes checked against paddle
    opsets: dict  # file name -> opset


ARCHS = {
    "pplcnet": Arch(PPLCNet, [None, 3, 48, 192], [(2, 3, 48, 192), (1, 3, 48, 192)],
                    {"pplcnet_paddle.onnx": 11}),
    "dbnet": Arch(DBNet, [None, 3, None, None], [(2, 3, 64, 96), (1, 3, 128, 160)],
                  {"dbnet_paddle.onnx": 11, "dbnet_paddle_op14.onnx": 14}),
    "svtr": Arch(SVTRRec, [None, 3, 48, None], [(2, 3, 48, 160), (1, 3, 48, 96)],
                 {"svtr_paddle.onnx": 11, "svtr_paddle_op17.onnx": 17}),
    "shufflenet": Arch(shufflenet, [None, 3, 64, 64], [(2, 3, 64, 64), (1, 3, 64, 64)],
                       {"shufflenet_paddle.onnx": 11}),
}


def randomize_norms(model: nn.Layer, rng: np.random.Generator) -> None:
    """Non-trivial BN running stats / affine parameters and LayerNorm affine parameters."""
    for m in model.sublayers(include_self=True):
        if isinstance(m, (nn.BatchNorm2D, nn.BatchNorm)):
            c = m.weight.shape[0]
            m._mean.set_value((rng.standard_normal(c) * 0.2).astype("float32"))
            m._variance.set_value((rng.random(c) * 1.0 + 0.5).astype("float32"))
            m.weight.set_value((rng.random(c) * 1.0 + 0.5).astype("float32"))
            m.bias.set_value((rng.standard_normal(c) * 0.2).astype("float32"))
        elif isinstance(m, nn.LayerNorm):
            c = m.weight.shape
            m.weight.set_value((rng.random(c) * 1.0 + 0.5).astype("float32"))
            m.bias.set_value((rng.standard_normal(c) * 0.1).astype("float32"))


def calibrate_bn(model: nn.Layer, shape: tuple, rng: np.random.Generator) -> None:
    """Set every BN's running mean/variance to the batch statistics of its input on a random batch.

    With plain random weights and random running stats the signal dies out in
    these narrow, deep nets (the classifier's and recognizer's outputs did not
    depend on the input at all); normalising with the real statistics keeps
    every layer's activations at unit scale, as in a trained model.
    """
    bns = [m for m in model.sublayers(include_self=True) if isinstance(m, (nn.BatchNorm2D, nn.BatchNorm))]
    for m in bns:
        m._momentum = 0.0  # running stats := batch stats
    model.train()
    for m in model.sublayers(include_self=True):
        if isinstance(m, nn.Dropout):
            m.eval()
    with paddle.no_grad():
        model(paddle.to_tensor(rng.standard_normal((8, *shape[1:])).astype("float32")))
    for m in bns:
        m._momentum = 0.9
    model.eval()


def build(name: str, seed: int) -> nn.Layer:
    paddle.seed(seed)
    model = ARCHS[name].build()
    rng = np.random.default_rng(seed + 1)
    randomize_norms(model, rng)
    calibrate_bn(model, ARCHS[name].check_shapes[0], rng)
    model.eval()
    return model


def export(model: nn.Layer, spec: list, path: Path, opset: int) -> str:
    """paddle.jit.save (static inference model) -> paddle2onnx.export. Returns the exporter log."""
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "inference")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            paddle.jit.save(model, prefix, input_spec=[paddle.static.InputSpec(spec, "float32", "x")])
        model_file = next(prefix + ext for ext in (".json", ".pdmodel") if os.path.exists(prefix + ext))
        with contextlib.redirect_stdout(log):
            paddle2onnx.export(model_file, prefix + ".pdiparams", save_file=str(path), opset_version=opset,
                               verbose=VERBOSE)
    return log.getvalue()


def op_histogram(m: onnx.ModelProto) -> str:
    c = collections.Counter(n.op_type for n in m.graph.node)
    return " ".join(f"{k}:{v}" for k, v in c.most_common())


def dims(vi) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def check(path: Path, model: nn.Layer, shapes: list, seed: int) -> dict:
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed + 1234)
    diff = 0.0
    for shape in shapes:
        x = rng.standard_normal(shape).astype("float32")
        with paddle.no_grad():
            ref = model(paddle.to_tensor(x)).numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        assert got.shape == ref.shape, (path.name, shape, got.shape, ref.shape)
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL, err_msg=f"{path.name} at {shape}")
        diff = max(diff, float(np.max(np.abs(got - ref))))
        if shape[0] > 1:  # a test model whose output ignores its input is useless
            spread = float(np.max(np.abs(got[0] - got[1])))
            if spread < 1e-3:
                raise SystemExit(f"error: {path.name}: the output does not depend on the input ({spread:.1e})")
    kb = path.stat().st_size / 1024
    if kb >= MAX_KB:
        raise SystemExit(f"error: {path.name} is {kb:.0f} KB (limit {MAX_KB} KB)")
    return {
        "file": path.name, "kb": kb, "nodes": len(m.graph.node),
        "opset": next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
        "ir": m.ir_version, "diff": diff, "ops": op_histogram(m),
        "inputs": [(i.name, dims(i)) for i in m.graph.input],
        "outputs": [(o.name, dims(o)) for o in m.graph.output],
        "checked": shapes,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("models"), help="output directory (default models/)")
    p.add_argument("--only", action="append", choices=sorted(ARCHS), metavar="NAME",
                   help=f"build only this architecture (repeatable): {', '.join(ARCHS)}")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    p.add_argument("-v", "--verbose", action="store_true", help="show paddle2onnx's log")
    args = p.parse_args(argv)

    global VERBOSE
    VERBOSE = args.verbose
    paddle.set_device("cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.only or list(ARCHS):
        arch = ARCHS[name]
        model = build(name, args.seed)
        for fname, opset in arch.opsets.items():
            path = args.out / fname
            print(f"exporting {fname} (opset {opset}) ...", flush=True)
            log = export(model, arch.spec, path, opset)
            if args.verbose:
                print(log)
            row = check(path, model, arch.check_shapes, args.seed)
            rows.append(row)
            print(f"  {row['kb']:.0f} KB, {row['nodes']} nodes, opset {row['opset']}, "
                  f"max|diff| {row['diff']:.1e} at {row['checked']}")

    print(f"\npaddlepaddle {paddle.__version__}, paddle2onnx {paddle2onnx.__version__}, "
          f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    for r in rows:
        print(f"\n{r['file']}: {r['kb']:.0f} KB, opset {r['opset']}, ir {r['ir']}, {r['nodes']} nodes, "
              f"max|diff| {r['diff']:.1e}")
        print(f"  inputs  {r['inputs']}")
        print(f"  outputs {r['outputs']}")
        print(f"  ops     {r['ops']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
