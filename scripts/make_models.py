"""Build the zoo of small test models and export each with both PyTorch ONNX exporters.

Needs torch (CPU build) and onnxscript: ``pip install -e .[models]``.
Nothing else in the project needs torch; the committed ``models/*.onnx`` are
what the tests use.

For every architecture NAME this writes, into ``--out`` (default ``models/``):

* ``NAME_torchscript.onnx``: ``torch.onnx.export(dynamo=False, opset_version=17)``
  with ``dynamic_axes`` on the batch dimension (constant folding on, so
  BatchNormalization after Conv is folded into the Conv);
* ``NAME_dynamo.onnx``: ``torch.onnx.export(dynamo=True)`` with a dynamic
  batch ``Dim`` and the weights embedded in the file (no ``.onnx.data``);
* for ``resnet`` also ``resnet_torchscript_bn.onnx``, exported with
  ``do_constant_folding=False`` so that the BatchNormalization nodes are
  kept unfolded.

Each file is checked with ``onnx.checker.check_model(full_check=True)``, run in
onnxruntime on a random batch of 2 and compared with torch's output.

Usage::

    python scripts/make_models.py                 # all models into models/
    python scripts/make_models.py --only resnet --only yolov8 --out /tmp/zoo
    python scripts/make_models.py --bert          # models/bert_torchscript.onnx (needs transformers)
                                                  # and models/bert_ort_fused.onnx

Weights are seeded (``--seed``, default 0): the same seed gives the same
weights. ``models/README.md`` is rewritten when every architecture is built.
"""

from __future__ import annotations

import argparse
import collections
import io
import logging
import math
import sys
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - only the model builder needs torch
    sys.exit("error: this script needs torch; install it with  pip install -e .[models]")

import onnx
import onnxruntime as ort

TOL = 1e-4


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running stats and affine parameters."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.0 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) * 1.0 + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            c = m.weight.shape
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=gen) * 1.0 + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


def make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


# --------------------------------------------------------------------------
# 1. ResNet
# --------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2), BasicBlock(32, 32))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


# --------------------------------------------------------------------------
# 2. MobileNetV3
# --------------------------------------------------------------------------


class SqueezeExcitationHS(nn.Module):
    """torchvision's MobileNetV3 SE: GAP -> 1x1 -> ReLU -> 1x1 -> Hardsigmoid -> mul."""

    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.scale_act = nn.Hardsigmoid()

    def forward(self, x):
        s = self.scale_act(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return s * x


class InvertedResidual(nn.Module):
    def __init__(self, cin, k, exp, cout, use_se, act, stride):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers += [*conv_bn(cin, exp, 1), act()]
        # depthwise, channel multiplier 1 (groups == in == out)
        layers += [*conv_bn(exp, exp, k, stride, groups=exp), act()]
        if use_se:
            layers.append(SqueezeExcitationHS(exp, make_divisible(exp // 4)))
        layers += conv_bn(exp, cout, 1)
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res else y


class MobileNetV3(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        HS, RE = nn.Hardswish, nn.ReLU
        self.features = nn.Sequential(
            nn.Sequential(*conv_bn(3, 16, 3, 2), HS()),                 # 16x16
            InvertedResidual(16, 3, 16, 16, True, RE, 2),              # 8x8, no expand, dw s2
            InvertedResidual(16, 3, 48, 24, False, RE, 1),             # expand, no SE
            InvertedResidual(24, 3, 72, 24, True, HS, 1),              # residual + SE
            InvertedResidual(24, 5, 72, 32, True, HS, 2),              # 4x4, 5x5 dw s2
            nn.Sequential(*conv_bn(32, 96, 1), HS()),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(96, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, num_classes)
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        x = torch.flatten(x, 1)
        return self.classifier(x)


# --------------------------------------------------------------------------
# 3. EfficientNet
# --------------------------------------------------------------------------


class SqueezeExcitationSig(nn.Module):
    """torchvision's EfficientNet SE: GAP -> 1x1 -> SiLU -> 1x1 -> Sigmoid -> mul."""

    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.silu(self.fc1(self.avgpool(x)))))
        return x * s


class MBConv(nn.Module):
    def __init__(self, cin, cout, expand, k, stride):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        exp = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*conv_bn(cin, exp, 1), nn.SiLU()]
        layers += [*conv_bn(exp, exp, k, stride, groups=exp), nn.SiLU()]
        layers.append(SqueezeExcitationSig(exp, max(1, cin // 4)))
        layers += conv_bn(exp, cout, 1)
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res else y  # stochastic depth is identity in eval


class EfficientNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(*conv_bn(3, 16, 3, 2), nn.SiLU()),  # 16x16
            MBConv(16, 8, 1, 3, 1),
            MBConv(8, 12, 6, 3, 2),                           # 8x8
            MBConv(12, 12, 6, 5, 1),                          # residual
            nn.Sequential(*conv_bn(12, 64, 1), nn.SiLU()),    # head 1x1
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        x = torch.flatten(x, 1)
        return self.classifier(x)


# --------------------------------------------------------------------------
# 4. DenseNet
# --------------------------------------------------------------------------


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 2):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        out = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(out)))


class DenseBlock(nn.Module):
    def __init__(self, n: int, cin: int, growth: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

    def forward(self, x):
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.pool(self.conv(self.relu(self.norm(x))))


class DenseNet(nn.Module):
    def __init__(self, num_classes: int = 10, growth: int = 8):
        super().__init__()
        c = 16
        self.conv0 = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        self.block1 = DenseBlock(3, c, growth)
        c += 3 * growth  # 40
        self.trans1 = Transition(c, c // 2)
        c //= 2  # 20
        self.block2 = DenseBlock(3, c, growth)
        c += 3 * growth  # 44
        self.norm5 = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.block2(self.trans1(self.block1(self.conv0(x))))
        x = F.relu(self.norm5(x))
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


# --------------------------------------------------------------------------
# 5. YOLOv8
# --------------------------------------------------------------------------


class Conv(nn.Module):
    """ultralytics Conv: Conv2d(bias=False) -> BN -> SiLU."""

    def __init__(self, cin, cout, k=1, s=1, g=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, cin, cout, n=1, shortcut=False):
        super().__init__()
        self.c = cout // 2
        self.cv1 = Conv(cin, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin, cout, k=5):
        super().__init__()
        c_ = cin // 2
        self.cv1 = Conv(cin, c_, 1)
        self.cv2 = Conv(c_ * 4, cout, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """Two-scale decoupled head: box branch (4) and class branch (nc) concatenated."""

    def __init__(self, nc: int, ch: tuple[int, ...]):
        super().__init__()
        self.nc = nc
        self.no = 4 + nc
        c2, c3 = 12, 12
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4, 1)) for c in ch
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch
        )

    def forward(self, xs):
        outs = [torch.cat((self.cv2[i](x), self.cv3[i](x)), 1) for i, x in enumerate(xs)]
        n = outs[0].shape[0]
        flat = torch.cat([o.view(n, self.no, -1) for o in outs], 2)  # [N, 4+nc, anchors]
        box, cls = flat.split((4, self.nc), 1)
        return torch.cat((box, cls.sigmoid()), 1)


class YOLOv8(nn.Module):
    def __init__(self, nc: int = 6):
        super().__init__()
        self.b0 = Conv(3, 8, 3, 2)  # 32x32
        self.b1 = Conv(8, 16, 3, 2)  # 16x16
        self.b2 = C2f(16, 16, 1, True)
        self.b3 = Conv(16, 24, 3, 2)  # 8x8  (P4)
        self.b4 = C2f(24, 24, 1, True)
        self.b5 = Conv(24, 32, 3, 2)  # 4x4  (P5)
        self.b6 = C2f(32, 32, 1, True)
        self.b7 = SPPF(32, 32)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n1 = C2f(32 + 24, 24, 1, False)  # 8x8: up(P5) ++ P4
        self.n2 = Conv(24, 24, 3, 2)  # 4x4
        self.n3 = C2f(24 + 32, 32, 1, False)  # down(N4) ++ P5
        self.detect = Detect(nc, (24, 32))

    def forward(self, x):
        x = self.b2(self.b1(self.b0(x)))
        p4 = self.b4(self.b3(x))
        p5 = self.b7(self.b6(self.b5(p4)))
        n4 = self.n1(torch.cat([self.up(p5), p4], 1))
        n5 = self.n3(torch.cat([self.n2(n4), p5], 1))
        return self.detect([n4, n5])


# --------------------------------------------------------------------------
# 6. Transformer encoder
# --------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.h = heads
        self.d = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        # A key bias cannot change the attention (it adds the same value to
        # every logit of a query); some models drop it (Whisper), here it is
        # zero. The identical zero tensors of several blocks are what makes the
        # TorchScript exporter de-duplicate initializers behind Identity nodes.
        nn.init.zeros_(self.k.bias)

    def forward(self, x):
        b, t, c = x.shape
        q = self.q(x).view(b, t, self.h, self.d).transpose(1, 2)  # [B, H, T, D]
        k = self.k(x).view(b, t, self.h, self.d).transpose(1, 2)
        v = self.v(x).view(b, t, self.h, self.d).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d))
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        return self.proj(y)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class Transformer(nn.Module):
    def __init__(self, in_features=32, dim=32, heads=4, hidden=128, depth=2, num_classes=10):
        super().__init__()
        self.embed = nn.Linear(in_features, dim)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.norm(self.blocks(self.embed(x)))
        return self.head(x.mean(dim=1))


class FusedAttention(nn.Module):
    """timm's ViT attention: one qkv Linear viewed as [B, N, 3, H, D], permuted and unbound,
    then `scaled_dot_product_attention` (the exporters write its scale as a Mul on q and k)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.h = heads
        self.d = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = FusedAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch embedding (4x4 Conv on 16x16 -> 16 tokens), position embedding, 2 blocks, mean, Linear."""

    def __init__(self, dim=32, heads=4, hidden=64, depth=2, num_classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


# --------------------------------------------------------------------------
# 7. CRNN text-line reader
# --------------------------------------------------------------------------


class CRNN(nn.Module):
    """A captcha / text-line reader: conv backbone down to height 2, the height folded into the
    features, a 2-layer bidirectional LSTM over the width, a per-step Linear (CTC classes)."""

    def __init__(self, hidden: int = 24, num_classes: int = 12):
        super().__init__()
        self.backbone = nn.Sequential(
            *conv_bn(1, 16), nn.ReLU(), nn.MaxPool2d(2),
            *conv_bn(16, 24), nn.ReLU(), nn.MaxPool2d(2),
            *conv_bn(24, 32), nn.ReLU(), nn.MaxPool2d((2, 1)),
        )
        self.rnn = nn.LSTM(32 * 2, hidden, num_layers=2, bidirectional=True)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, x):
        f = self.backbone(x)  # [N, 32, 2, W/4]
        n, c, h, w = f.shape
        y, _ = self.rnn(f.reshape(n, c * h, w).permute(2, 0, 1))  # [T, N, 2 * hidden]
        return self.head(y).permute(1, 0, 2)  # [N, T, classes]


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # with batch 1
    description: str
    patterns: str


ARCHS: dict[str, Arch] = {
    a.name: a
    for a in [
        Arch(
            "resnet", ResNet, (1, 3, 32, 32),
            "ResNet: 2+2 basic blocks (16, 32 ch), strided block with 1x1 conv shortcut, GAP, flatten, Linear",
            "residual Add groups, 1x1 shortcut conv joining the group, GAP -> flatten -> Linear",
        ),
        Arch(
            "mobilenetv3", MobileNetV3, (1, 3, 32, 32),
            "MobileNetV3: inverted residuals (expand, dw 3x3/5x5, SE with Hardsigmoid, project), Hardswish",
            "depthwise conv (group=C) incl. stride 2 without expand, SE Mul, residual, "
            "Linear -> Hardswish -> Dropout -> Linear",
        ),
        Arch(
            "efficientnet", EfficientNet, (1, 3, 32, 32),
            "EfficientNet: MBConv (expand 1 and 6), SiLU, SE with Sigmoid, residual, 1x1 head conv, GAP, Linear",
            "SiLU (Sigmoid + Mul, also inside SE), SE Mul, depthwise 3x3/5x5, residual",
        ),
        Arch(
            "densenet", DenseNet, (1, 3, 32, 32),
            "DenseNet: 2 dense blocks x 3 layers (growth 8), BN-ReLU-Conv, transition 1x1 + AvgPool",
            "chained Concat on axis 1, BN on a concatenation (not foldable into a conv), AvgPool",
        ),
        Arch(
            "yolov8", YOLOv8, (1, 3, 64, 64),
            "YOLOv8-style: Conv-BN-SiLU, C2f (chunk/cat), SPPF, FPN+PAN neck with Upsample, 2-scale head",
            "Split on channels, Concat of split halves, MaxPool chain, Resize, "
            "Reshape [N, 4+nc, -1] + Concat of scales, Split of the output",
        ),
        Arch(
            "transformer", Transformer, (1, 16, 32),
            "Transformer: Linear embed, 2 pre-norm encoder blocks (4-head hand-written attention, "
            "MLP 32->128->32 GELU), LayerNorm, mean over tokens, Linear",
            "MatMul on 3-D inputs, head Reshape/Transpose, Softmax, LayerNorm, GELU, ReduceMean",
        ),
        Arch(
            "vit", ViT, (1, 3, 16, 16),
            "ViT (timm-style): 4x4 patch Conv, position embedding, 2 pre-norm blocks with a fused qkv "
            "Linear (4 heads) and scaled_dot_product_attention, MLP 32->64->32, LayerNorm, mean, Linear",
            "qkv Reshape [B, N, 3, H, D] + Transpose + Gather per part, q and k scaled by Mul, Softmax",
        ),
        Arch(
            "crnn", CRNN, (1, 1, 16, 32),
            "CRNN text reader: 3 Conv-BN-ReLU-MaxPool (16, 24, 32 ch) to height 2, height folded into "
            "64 features, 2-layer bidirectional LSTM (hidden 24), per-step Linear (12 classes)",
            "`LSTM` reading the backbone's channels through W, `Reshape` [N, C*H, W] + `Transpose` to "
            "[T, N, F], a second `LSTM` on the first's output",
        ),
    ]
}


def build(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = ARCHS[name].build()
    gen = torch.Generator().manual_seed(seed + 1)
    randomize_bn(model, gen)
    return model.eval()


# --------------------------------------------------------------------------
# export and check
# --------------------------------------------------------------------------


def output_names(model: nn.Module, x: torch.Tensor) -> list[str]:
    with torch.no_grad():
        out = model(x)
    n = len(out) if isinstance(out, (tuple, list)) else 1
    return ["output"] if n == 1 else [f"output{i}" for i in range(n)]


def export_torchscript(model, x, path: Path, outs: list[str], keep_bn: bool = False) -> None:
    # Conv+BN fusion is part of constant folding: without it the
    # BatchNormalization nodes stay (training_mode=0).
    kwargs = {"do_constant_folding": False} if keep_bn else {}
    dyn = {"input": {0: "batch"}}
    dyn.update({o: {0: "batch"} for o in outs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=outs, dynamic_axes=dyn, **kwargs,
        )


def export_dynamo(model, x, path: Path, outs: list[str]) -> str:
    """Export with the dynamo exporter; returns "dynamic" or "static" batch."""

    def export(dynamic_shapes):
        # the exporter prints its progress on stdout and warns a lot
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                model, (x,), dynamo=True, input_names=["input"], output_names=outs,
                dynamic_shapes=dynamic_shapes, external_data=False,
            )

    try:
        prog = export(({0: torch.export.Dim("batch", min=1, max=64)},))
        mode = "dynamic"
    except Exception as e:  # noqa: BLE001 - fall back to a static batch
        print(f"  dynamo export with a dynamic batch failed ({type(e).__name__}: {e}); static batch 1")
        prog = export(None)
        mode = "static"
    proto = prog.model_proto
    if mode == "dynamic" and not proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param:
        mode = "static"  # the exporter specialized the batch without saying so (nn.LSTM does)
    # Drop the per-node Python stack traces (absolute paths and line numbers of
    # this script and of torch): they would make the files change with every
    # edit of this script. The other metadata_props stay, as in real exports.
    for node in proto.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    # Embed every tensor in the one file, whatever the exporter decided.
    onnx.save_model(proto, str(path), save_as_external_data=False)
    data = Path(str(path) + ".data")
    if data.exists():
        data.unlink()
    return mode


def op_histogram(model: onnx.ModelProto, top: int | None = None) -> str:
    c = collections.Counter(n.op_type for n in model.graph.node)
    items = c.most_common(top)
    s = " ".join(f"{k}:{v}" for k, v in items)
    if top is not None and len(c) > top:
        s += " ..."
    return s


def check(path: Path, model: nn.Module, shape: tuple[int, ...], batch: int, seed: int) -> dict:
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    gen = torch.Generator().manual_seed(seed + 1234)
    x = torch.randn((batch, *shape[1:]), generator=gen)
    with torch.no_grad():
        ref = model(x)
    refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    diff = max(float(np.max(np.abs(g - r.numpy()))) for g, r in zip(got, refs))
    return {
        "file": path.name,
        "kb": path.stat().st_size / 1024,
        "nodes": len(m.graph.node),
        "opset": next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
        "ops": op_histogram(m),
        "diff": diff,
        "batch": batch,
        "in_shape": [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim],
        "out_shape": [
            [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output
        ],
    }


def make(name: str, out: Path, seed: int) -> list[dict]:
    arch = ARCHS[name]
    model = build(name, seed)
    x = torch.randn(arch.input_shape, generator=torch.Generator().manual_seed(seed))
    outs = output_names(model, x)
    rows = []

    jobs: list[tuple[str, Callable[[Path], str]]] = [
        (f"{name}_torchscript.onnx", lambda p: (export_torchscript(model, x, p, outs), "dynamic")[1]),
        (f"{name}_dynamo.onnx", lambda p: export_dynamo(model, x, p, outs)),
    ]
    if name == "resnet":
        jobs.append(
            (f"{name}_torchscript_bn.onnx",
             lambda p: (export_torchscript(model, x, p, outs, keep_bn=True), "dynamic")[1])
        )
    for fname, fn in jobs:
        path = out / fname
        print(f"exporting {fname} ...", flush=True)
        mode = fn(path)
        batch = 2 if mode == "dynamic" else arch.input_shape[0]
        row = check(path, model, arch.input_shape, batch, seed)
        row.update(arch=name, exporter=fname[len(name) + 1:-5], mode=mode)
        status = "ok" if row["diff"] < TOL else "FAIL"
        print(f"  {row['kb']:.1f} KB, {row['nodes']} nodes, opset {row['opset']}, "
              f"batch {batch} max|diff| {row['diff']:.2e} {status}")
        if row["diff"] >= TOL:
            raise SystemExit(f"error: {fname}: onnxruntime differs from torch by {row['diff']:.3g}")
        rows.append(row)
    return rows


BERT_FILE = "bert_torchscript.onnx"


def make_bert(out: Path, seed: int, *, hidden: int = 32, layers: int = 2, heads: int = 2,
              intermediate: int = 128, vocab: int = 100, file: str = BERT_FILE) -> dict:
    """A BERT encoder (HF `transformers` `BertModel`, random weights from a config, no hub
    download) exported by the TorchScript exporter with symbolic batch and sequence.

    By default the tiny committed one: hidden 32, 2 layers, 2 heads, FFN 128, vocabulary 100;
    the size parameters build larger ones (scripts/bench_latency_target.py). Eager attention,
    the classic graph: every `view(b, t, heads, head_dim)` is a Reshape whose target is a Concat
    of `Gather(Shape(x))` reads and constants, and the position ids are a Slice whose end is
    read through Shape, so static shape inference leaves the encoder's shapes unknown.
    Needs `transformers` (``pip install --no-deps transformers regex``, with
    huggingface_hub, safetensors and tokenizers).
    """
    # transformers imports torchvision when it is installed; one built for another torch
    # fails to import, and the encoder needs none of it.
    sys.modules.setdefault("torchvision", None)
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=128, type_vocab_size=2)
    config._attn_implementation = "eager"
    bert = BertModel(config, add_pooling_layer=False).eval()

    class Encoder(nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    model = Encoder(bert).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]

    def inputs(batch, sequence, gen):
        ids = torch.randint(0, vocab, (batch, sequence), generator=gen)
        mask = torch.ones(batch, sequence, dtype=torch.long)
        mask[:, sequence - sequence // 4:] = 0  # padded tail
        types = torch.randint(0, 2, (batch, sequence), generator=gen)
        return ids, mask, types

    path = out / file
    print(f"exporting {file} ...", flush=True)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names + ["last_hidden_state"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs(2, 16, torch.Generator().manual_seed(seed)), str(path), dynamo=False,
                          opset_version=17, input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=dynamic)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = 0.0
    for batch, sequence in ((2, 16), (1, 7), (3, 33)):
        feeds = inputs(batch, sequence, torch.Generator().manual_seed(seed + sequence))
        with torch.no_grad():
            expected = model(*feeds).numpy()
        got = session.run(None, dict(zip(names, (t.numpy() for t in feeds))))[0]
        diff = max(diff, float(np.max(np.abs(got - expected))))
    print(f"  {path.stat().st_size / 1024:.1f} KB, {len(proto.graph.node)} nodes, max|diff| {diff:.2e} "
          f"over batch/sequence 2/16, 1/7, 3/33")
    if diff >= TOL:
        raise SystemExit(f"error: {file}: onnxruntime differs from torch by {diff:.3g}")
    return {"file": file, "kb": path.stat().st_size / 1024, "nodes": len(proto.graph.node), "diff": diff}


FUSED_BERT_FILE = "bert_ort_fused.onnx"


def make_fused_bert(out: Path, heads: int = 2, hidden: int = 32) -> dict:
    """`BERT_FILE` as onnxruntime's transformer optimizer rewrites it (the "optimized" files HF
    repos ship): com.microsoft Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization.
    Checked against the unfused file at three batch/sequence sizes."""
    import logging

    from onnxruntime.transformers import optimizer

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    source, path = out / BERT_FILE, out / FUSED_BERT_FILE
    print(f"fusing {BERT_FILE} -> {FUSED_BERT_FILE} ...", flush=True)
    fused = optimizer.optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden,
                                     opt_level=1).model
    ops = collections.Counter(node.op_type for node in fused.graph.node if node.domain == "com.microsoft")
    if not {"Attention", "SkipLayerNormalization", "BiasGelu", "EmbedLayerNormalization"} <= set(ops):
        raise SystemExit(f"error: onnxruntime's optimizer fused only {dict(ops)}")
    onnx.save(fused, str(path))
    reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng, diff = np.random.default_rng(0), 0.0
    for batch, sequence in ((2, 16), (1, 7), (3, 33)):
        feeds = {"input_ids": rng.integers(0, 100, (batch, sequence)),
                 "attention_mask": np.ones((batch, sequence), dtype=np.int64),
                 "token_type_ids": np.zeros((batch, sequence), dtype=np.int64)}
        diff = max(diff, float(np.max(np.abs(session.run(None, feeds)[0] - reference.run(None, feeds)[0]))))
    print(f"  {path.stat().st_size / 1024:.1f} KB, fused ops {dict(ops)}, max|diff| {diff:.2e} against {BERT_FILE}")
    if diff >= TOL:
        raise SystemExit(f"error: {FUSED_BERT_FILE}: differs from {BERT_FILE} by {diff:.3g}")
    return {"file": FUSED_BERT_FILE, "kb": path.stat().st_size / 1024, "diff": diff}


def print_table(rows: list[dict]) -> None:
    w = max(len(r["file"]) for r in rows)
    print()
    print(f"{'file':<{w}}  {'KB':>7}  {'nodes':>5}  {'max|diff|':>9}  op types")
    for r in rows:
        print(f"{r['file']:<{w}}  {r['kb']:7.1f}  {r['nodes']:5d}  {r['diff']:9.2e}  {r['ops']}")
    total = sum(r["kb"] for r in rows)
    print(f"{'total':<{w}}  {total:7.1f}")


README_HEAD = """\
# Test models

Built by `scripts/make_models.py` (`pip install -e .[models]`, then
`python scripts/make_models.py`); seeded, so the same seed gives the same
weights. Every file passes `onnx.checker.check_model(full_check=True)` and
matches torch in onnxruntime on a random batch of 2 (max abs diff below).
All BatchNorm layers have random running stats and affine parameters. This
table covers the files written by `make_models.py`; other files in this folder
come from other scripts in `scripts/`.

* `*_torchscript.onnx`: `torch.onnx.export(dynamo=False, opset_version=17)`,
  `dynamic_axes` on the batch; constant folding on, so Conv->BN is folded.
* `*_dynamo.onnx`: `torch.onnx.export(dynamo=True)` with
  `dynamic_shapes=({0: Dim("batch", min=1, max=64)},)` (default opset),
  weights embedded (no `.onnx.data`); Conv+BN is folded by the optimizer too.
* `resnet_torchscript_bn.onnx`: as the torchscript export but with
  `do_constant_folding=False`, so the BatchNormalization nodes stay
  (`training_mode=0`); Conv+BN fusion is part of constant folding.

| file | architecture | exporter | opset | input | output | batch | size | max abs diff | patterns |
|---|---|---|---|---|---|---|---|---|---|
"""


README_NOTES = """\
## What the exporters produce (torch 2.13, onnxscript 0.7)

TorchScript (`dynamo=False`, opset 17):

* Conv+BN folded into the Conv (weights renamed `onnx::Conv_N`; unfolded ones
  keep `module.weight`). A BN that does not follow a Conv (DenseNet's
  BN-ReLU-Conv on a Concat) stays a `BatchNormalization` node.
* `torch.flatten(x, 1)` -> `Flatten(axis=1)`; GAP -> `GlobalAveragePool`.
* 2-D Linear -> `Gemm(x, W[out,in], b, transB=1)`; 3-D Linear ->
  `MatMul(x, onnx::MatMul_N [in,out])` + `Add(bias, mm)` (bias first).
* Shape arithmetic is computed at run time from `Shape -> Gather` with
  `Constant` nodes: `chunk(2, 1)` is `Shape -> Gather([1]) -> Add(1) -> Div(2)
  -> Mul(1)/Mul(2) -> Slice(axes=[1])` x2 (split point = ceil(C/2) at run time);
  `view(b, t, h, d)` is `Reshape` with `Concat(Unsqueeze(Gather(Shape)),
  Unsqueeze(Gather(Shape)), Constant[4], Constant[8])`; `reshape(b, t, c)`
  takes `c` from `Shape` of the block input.
* Scalars and shapes are `Constant` nodes; weights are initializers.
  Identical initializers are de-duplicated: the second user reads
  `Identity(first) -> second_name` (transformer `k.bias`).
* SiLU -> `Sigmoid` + `Mul`; GELU -> `Div(sqrt 2) -> Erf -> Add(1) -> Mul(x)
  -> Mul(0.5)`; `HardSwish`, `HardSigmoid(alpha=1/6)`, `LayerNormalization`
  are single ops. Dropout disappears.
* Upsample -> `Resize(x, "", scales=Constant[1,1,2,2], mode=nearest,
  coordinate_transformation_mode=asymmetric, nearest_mode=floor)`.
* No `value_info`; symbolic output dims may be invented
  (`Concatoutput_dim_2`).

Dynamo (`dynamo=True`, opset 20):

* Conv+BN folded by the onnxscript optimizer (`FuseBatchNormIntoConv`); the
  fused weight keeps the *original* name (`conv1.weight`, values changed) and
  the new bias is `conv1.weight_bias`; zero conv biases are dropped.
  BN not after a Conv stays (no `training_mode` attribute).
* `torch.flatten(x, 1)` -> `Reshape(x, [-1, C])` with a constant initializer
  holding the channel count, `allowzero=1`; GAP -> `ReduceMean(axes=[-1, -2]
  initializer, keepdims=1)`.
* 2-D Linear -> `Gemm(transB=1)` with `fc.weight`; 3-D Linear ->
  `MatMul(x, val_N [in,out])` (pre-transposed, anonymous name) +
  `Add(mm, module.bias)`.
* Shapes are constant initializers (batch as -1): `view(b, t, h, d)` ->
  `Reshape([-1, 16, 4, 8])`, `reshape(b, t, c)` -> `Reshape([-1, 16, 32])`;
  detector `view(n, no, -1)` -> `Reshape([-1, 10, 64])`. `chunk(2, 1)` ->
  `Split(axis=1, num_outputs=2)` (no sizes input); `split((4, nc), 1)` ->
  `Split(x, [4, 6])`.
* Constant initializers are shared between unrelated users (one `[-1,16,4,8]`
  for all q/k/v reshapes of both blocks, one `[-1,-2]` axes for all
  ReduceMean), and identical weights too (both `k.bias` Adds read
  `blocks.0.attn.k.bias`). No `Constant` or `Identity` nodes.
* SiLU -> `Sigmoid` + `Mul`; `Gelu(approximate=none)`, `HardSwish`,
  `HardSigmoid(alpha=1/6, beta=0.5)` single ops.
* Upsample -> `Resize(x, "", scales=[1,1,2,2] initializer)`.
* Full `value_info` for intermediate tensors (stale after pruning) and
  per-node `metadata_props` (`namespace`, `pkg.torch.onnx.class_hierarchy`,
  `pkg.torch.onnx.fx_node`, `pkg.torch.onnx.name_scopes`,
  `pkg.onnxscript.rewriter.rule_name`); the script drops only
  `pkg.torch.onnx.stack_trace`, which holds local paths.
## `bert_torchscript.onnx` (`python scripts/make_models.py --bert`)

A tiny BERT encoder (`transformers` `BertModel` from a config, random seeded
weights: hidden 32, 2 layers, 2 heads, FFN 128, vocabulary 100, eager
attention), TorchScript exporter, opset 17, inputs `input_ids`,
`attention_mask`, `token_type_ids` `[batch, sequence]` int64, output
`last_hidden_state [batch, sequence, 32]`; checked against torch at
batch/sequence 2/16, 1/7 and 3/33. Static shape inference loses every shape
after the position ids (`Slice` of the position buffer whose end is read
through `Shape`); every `view(b, t, heads, head_dim)` is a `Reshape` whose
target is `Concat(Unsqueeze(Gather(Shape)), Unsqueeze(Gather(Shape)),
Constant[-1], Constant[16])`. It is not part of the table above (the full build
does not rebuild it).
"""


# What is special in each file (see the notes below the table).
FILE_NOTES = {
    "resnet_torchscript": "BN folded; `Flatten` -> `Gemm`",
    "resnet_dynamo": "BN folded (weight keeps its name); `ReduceMean` GAP; `Reshape [-1, 32]` -> `Gemm`",
    "resnet_torchscript_bn": "10 `BatchNormalization` nodes after the Convs",
    "mobilenetv3_torchscript": "`HardSwish`, `HardSigmoid`; `GlobalAveragePool` in SE",
    "mobilenetv3_dynamo": "one `ReduceMean` axes initializer shared by 4 nodes; `Reshape [-1, 96]`",
    "efficientnet_torchscript": "`GlobalAveragePool` in SE; `Flatten`",
    "efficientnet_dynamo": "shared `ReduceMean` axes; `Reshape [-1, 64]`",
    "densenet_torchscript": "8 `BatchNormalization` on Concat outputs kept; the one after conv1 folded",
    "densenet_dynamo": "as torchscript; `Reshape [-1, 44]`",
    "yolov8_torchscript": "chunk = `Shape/Gather/Add/Div/Mul` + 2 `Slice`; head `Reshape` shape from "
                          "`Shape`+`Concat`; 39 `Constant` nodes",
    "yolov8_dynamo": "chunk = `Split(num_outputs=2)`; `Reshape [-1, 10, 64]` / `[-1, 10, 16]`",
    "transformer_torchscript": "`MatMul` + `Add(bias, mm)`; head `Reshape` shapes from `Shape/Gather/Concat` "
                               "with `Constant [4]`, `[8]`; GELU as `Erf` chain; `Identity` for a "
                               "de-duplicated `k.bias`",
    "transformer_dynamo": "`MatMul` + `Add`; one `Reshape [-1, 16, 4, 8]` initializer shared by 6 nodes; "
                          "`Gelu`; `k.bias` shared",
    "vit_torchscript": "flatten as `Reshape` to `Concat(Slice(Shape), [-1])`; SDPA scale from `Shape(q)`",
    "vit_dynamo": "unbind = `Slice` + `Squeeze`; kᵀ through `Reshape [-1, N, D]` and back to "
                  "`Concat(Slice(Shape(k)), ...)`",
    "crnn_torchscript": "`Reshape` target from `Shape`/`Gather`/`Concat`; `LSTM` initial states from "
                        "`ConstantOfShape` of the batch",
    "crnn_dynamo": "batch specialized to 1 by the exporter (nn.LSTM's zero states); `Reshape [1, 64, 8]`",
}


PADDLE_SECTION = "## PaddlePaddle exports"


def write_readme(out: Path, rows: list[dict]) -> None:
    lines = [README_HEAD]
    for r in rows:
        a = ARCHS[r["arch"]]
        fmt = lambda s: "[" + ", ".join(str(d) for d in s) + "]"  # noqa: E731
        outs = " ".join(fmt(s) for s in r["out_shape"])
        lines.append(
            f"| `{r['file']}` | {a.description} | {r['exporter']} | {r['opset']} | "
            f"{fmt(r['in_shape'])} | {outs} | {r['mode']} | {r['kb']:.0f} KB | {r['diff']:.1e} | "
            f"{a.patterns}; {FILE_NOTES.get(r['file'][:-5], '')} |\n"
        )
    lines.append(f"\nTotal: {sum(r['kb'] for r in rows):.0f} KB.\n")
    lines.append("\n" + README_NOTES)
    readme = out / "README.md"
    # The Paddle exports' section belongs to make_paddle_models.py: keep it.
    previous = readme.read_text() if readme.exists() else ""
    if PADDLE_SECTION in previous:
        lines.append("\n" + previous[previous.index(PADDLE_SECTION):])
    readme.write_text("".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("models"), help="output directory (default models/)")
    p.add_argument("--only", action="append", choices=sorted(ARCHS), metavar="NAME",
                   help=f"build only this architecture (repeatable): {', '.join(ARCHS)}")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    p.add_argument("--bert", action="store_true",
                   help=f"build only {BERT_FILE}, a tiny BERT encoder (needs transformers), and "
                        f"{FUSED_BERT_FILE}, the same fused by onnxruntime's optimizer")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    # the dynamo exporter logs a warning per missing torchvision op
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.bert:
        make_bert(args.out, args.seed)
        make_fused_bert(args.out)
        return 0
    names = args.only or list(ARCHS)
    rows = []
    for name in names:
        rows += make(name, args.out, args.seed)
    print_table(rows)
    if not args.only:
        write_readme(args.out, rows)
        print(f"\nwrote {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
