"""Build a small Keras model and convert it with tf2onnx, as TensorFlow users export theirs.

TensorFlow exports differ from PyTorch's and Paddle's: the graph stays channels-last
(Transposes around every conv run), a shape is read as `Gather(Shape(nchw), [0, 2, 3, 1])`,
and `Flatten` before a `Dense` flattens [N, H, W, C], so a channel is every C-th feature.
TensorFlow and tf2onnx are not project dependencies; use a venv of their own::

    python3 -m venv .tf-venv
    .tf-venv/bin/pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0 onnx onnxruntime numpy
    .tf-venv/bin/python scripts/make_tf_models.py          # models/resnet_tf2onnx.onnx

The committed file was built with tensorflow-cpu 2.21.0 (Keras 3.15.1) and tf2onnx 1.17.0,
opset 13, dynamic batch. Weights are seeded; BatchNorm statistics are those of the layer's
input on smooth random images (random statistics drown the input: the outputs would not
depend on it), and the logits are scaled and centred so that no class wins by its bias.
The file is checked in onnxruntime against Keras.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

try:
    import keras
    import tensorflow as tf
    from keras import layers
except ImportError:  # pragma: no cover
    sys.exit("error: this script needs tensorflow-cpu and tf2onnx (in a separate venv, see its docstring)")

FILE = "resnet_tf2onnx.onnx"
TOL = 1e-4


def conv_bn(x, filters: int, kernel: int = 3, stride: int = 1, relu: bool = True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x) if relu else x


def resnet() -> keras.Model:
    """Three residual stages (16, 32, 64 channels; 1x1 projection shortcuts where the shape
    changes), MaxPool to 4x4, Flatten (channels-last), Dense 32 + ReLU, Dense 10."""
    image = keras.Input((32, 32, 3), name="image")
    x = conv_bn(image, 16)
    for filters, stride in [(16, 1), (32, 2), (64, 2)]:
        h = conv_bn(conv_bn(x, filters, stride=stride), filters, relu=False)
        shortcut = x if stride == 1 and x.shape[-1] == filters else conv_bn(x, filters, 1, stride, relu=False)
        x = layers.ReLU()(layers.Add()([h, shortcut]))
    x = layers.Flatten()(layers.MaxPooling2D(2)(x))
    x = layers.Dense(32, activation="relu")(x)
    return keras.Model(image, layers.Dense(10)(x), name="resnet")


def smooth_images(n: int, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 1, (n, 4, 4, 3)).astype("float32")
    return tf.image.resize(noise, (32, 32), method="bicubic").numpy().astype("float32")


def calibrate(model: keras.Model, x: np.ndarray, seed: int = 0) -> None:
    """BatchNorm statistics from the data each one sees; logits with a spread of about 2, centred."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            seen = keras.Model(model.inputs, layer.input).predict(x, verbose=0)
            axes = tuple(range(seen.ndim - 1))
            gamma, beta = rng.uniform(0.5, 1.5, seen.shape[-1]), rng.normal(0, 0.1, seen.shape[-1])
            layer.set_weights([gamma.astype("float32"), beta.astype("float32"), seen.mean(axes).astype("float32"),
                               (seen.var(axes) + 1e-3).astype("float32")])
    last = model.layers[-1]
    features = keras.Model(model.inputs, last.input).predict(x, verbose=0)
    kernel, _ = last.get_weights()
    kernel = kernel * (2.0 / ((features @ kernel).std(0).mean() + 1e-6))
    last.set_weights([kernel.astype("float32"), (-(features @ kernel).mean(0)).astype("float32")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models"), help="output directory (default models/)")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    model = resnet()
    calibrate(model, smooth_images(32, seed=7))
    path = args.out / FILE
    with tempfile.TemporaryDirectory() as scratch:
        model.export(scratch, verbose=False)
        subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", scratch, "--opset", "13",
                        "--output", str(path)], check=True, capture_output=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = smooth_images(4, seed=2)
    diff = float(np.abs(session.run(None, {"image": x})[0] - model.predict(x, verbose=0)).max())
    print(f"{path}: {path.stat().st_size / 1024:.0f} KB, tensorflow {tf.__version__}, keras {keras.__version__}, "
          f"max|diff| {diff:.2e} against Keras at batch 4")
    if diff >= TOL:
        raise SystemExit(f"error: {FILE}: onnxruntime differs from Keras by {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
