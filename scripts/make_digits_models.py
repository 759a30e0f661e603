#!/usr/bin/env python
"""Train and export the small digit classifiers used by the demo, tests and benchmarks.

Data: scikit-learn's bundled ``load_digits`` (1797 grayscale 8x8 images, 10
classes; shipped inside the scikit-learn wheel, no download). Split with a fixed
seed, stratified, into train (1197), calibration (300) and test (300). Pixels are
scaled to [0, 1] (divided by 16) and upsampled 8x8 -> 16x16 by *nearest neighbour*
(each pixel becomes a 2x2 block), layout NCHW float32 ``[N, 1, 16, 16]``.

Writes into ``--out`` (default ``models/`` next to this script's parent):

    digits_calib.npz    input float32 [300,1,16,16], labels int64 [300]
    digits_test.npz     input float32 [300,1,16,16], labels int64 [300]
    digits_cnn.onnx     demo CNN, TorchScript exporter, opset 17, dynamic batch
    digits_resnet.onnx  ResNet-style CNN, dynamo exporter, one file, dynamic batch
    digits_mlp.onnx     one-block pre-norm transformer over 16 row tokens,
                        TorchScript exporter, opset 17, dynamic batch

Needs the ``models`` extra (torch==2.13.0 CPU, onnxscript, scikit-learn) plus
onnx and onnxruntime. Deterministic: fixed seeds, one thread, deterministic
algorithms. Regenerate with::

    python scripts/make_digits_models.py --out models
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

SEED = 0
N_CALIB = 300
N_TEST = 300
SIZE = 16  # upsampled side


# --------------------------------------------------------------------------- data


def load_splits(seed: int = SEED):
    """Return dict name -> (x float32 [N,1,16,16], y int64 [N]) for train/calib/test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]  # [1797,1,8,8] in [0,1]
    x = np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)  # nearest 8x8 -> 16x16
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=N_TEST, stratify=y, random_state=seed)
    train, calib = train_test_split(rest, test_size=N_CALIB, stratify=y[rest], random_state=seed + 1)
    return {name: (x[np.sort(i)], y[np.sort(i)]) for name, i in
            (("train", train), ("calib", calib), ("test", test))}


def random_shift(xb, gen, max_shift: int = 2):
    """Shift each image by an integer offset in [-max_shift, max_shift]^2 with zero fill."""
    import torch
    import torch.nn.functional as F

    n = xb.shape[0]
    p = max_shift
    padded = F.pad(xb, (p, p, p, p))
    offs = torch.randint(0, 2 * p + 1, (n, 2), generator=gen)
    out = torch.empty_like(xb)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy:dy + SIZE, dx:dx + SIZE]
    return out


# --------------------------------------------------------------------------- models


def build_models():
    import torch
    from torch import nn

    def conv_bn_relu(cin, cout, stride=1):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    class ResBlock(nn.Module):
        """Basic block: conv-bn-relu-conv-bn + shortcut, relu. Projection shortcut if shape changes."""

        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                           nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            sc = x if self.short is None else self.short(x)
            return self.relu(out + sc)

    class DigitsCNN(nn.Module):
        """Demo model, deliberately over-wide: 32 -> 64 (+residual block) -> 128 -> GAP -> 10."""

        def __init__(self):
            super().__init__()
            self.stem = conv_bn_relu(1, 32)            # 16x16
            self.down1 = conv_bn_relu(32, 64, 2)       # 8x8
            self.block = ResBlock(64, 64)              # 8x8, identity shortcut
            self.down2 = conv_bn_relu(64, 128, 2)      # 4x4
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            x = self.down2(self.block(self.down1(self.stem(x))))
            return self.fc(torch.flatten(self.pool(x), 1))

    class DigitsResNet(nn.Module):
        """Two stages, three basic blocks: [48, 48] at 16x16, [96 stride 2, projection] at 8x8."""

        def __init__(self):
            super().__init__()
            self.stem = conv_bn_relu(1, 48)
            self.stage1 = nn.Sequential(ResBlock(48, 48), ResBlock(48, 48))
            self.stage2 = nn.Sequential(ResBlock(48, 96, stride=2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(96, 10)

        def forward(self, x):
            x = self.stage2(self.stage1(self.stem(x)))
            return self.fc(torch.flatten(self.pool(x), 1))

    class Attention(nn.Module):
        """Multi-head self-attention with separate q/k/v/out projections (no fused in_proj)."""

        def __init__(self, dim=64, heads=4):
            super().__init__()
            self.heads = heads
            self.hd = dim // heads
            self.q = nn.Linear(dim, dim)
            self.k = nn.Linear(dim, dim)
            self.v = nn.Linear(dim, dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            n, t, c = x.shape

            def split(z):
                return z.reshape(n, t, self.heads, self.hd).transpose(1, 2)  # [N,H,T,hd]
            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            att = torch.softmax(q @ k.transpose(-2, -1) * (self.hd ** -0.5), dim=-1)
            out = (att @ v).transpose(1, 2).reshape(n, t, c)
            return self.proj(out)

    class DigitsMLP(nn.Module):
        """16 row tokens of 16 pixels -> Linear 64 (+pos emb) -> pre-norm encoder block -> mean -> 10."""

        def __init__(self, dim=64, hidden=256, tokens=SIZE):
            super().__init__()
            self.embed = nn.Linear(SIZE, dim)
            self.pos = nn.Parameter(torch.zeros(tokens, dim))
            self.norm1 = nn.LayerNorm(dim)
            self.attn = Attention(dim, 4)
            self.norm2 = nn.LayerNorm(dim)
            self.fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, dim)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, 10)
            nn.init.normal_(self.pos, std=0.02)

        def forward(self, x):
            x = x.reshape(x.shape[0], SIZE, SIZE)  # [N,1,16,16] -> [N,16 tokens,16 pixels]
            x = self.embed(x) + self.pos
            x = x + self.attn(self.norm1(x))
            x = x + self.fc2(self.act(self.fc1(self.norm2(x))))
            x = self.norm(x).mean(dim=1)
            return self.head(x)

    return DigitsCNN, DigitsResNet, DigitsMLP


# --------------------------------------------------------------------------- training


def train(model, data, *, epochs, lr, wd, shift, seed, label_smoothing=0.0, batch=64):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr = torch.from_numpy(data["train"][0])
    ytr = torch.from_numpy(data["train"][1])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd) if wd else \
        torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(ytr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.perf_counter()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        tot = 0.0
        for s in range(0, len(ytr), batch):
            i = perm[s:s + batch]
            xb, yb = xtr[i], ytr[i]
            if shift:
                xb = random_shift(xb, gen, shift)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(i)
        if ep == epochs - 1 or (ep + 1) % 10 == 0:
            print(f"    epoch {ep + 1:3d}/{epochs} loss {tot / len(ytr):.4f} "
                  f"calib acc {torch_accuracy(model, *data['calib']):.4f} "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)
    model.eval()
    return time.perf_counter() - t0


def torch_logits(model, x):
    import torch

    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def torch_accuracy(model, x, y):
    return float((torch_logits(model, x).argmax(1) == y).mean())


# --------------------------------------------------------------------------- export / check


def export_torchscript(model, path: Path):
    import torch

    x = torch.zeros(1, 1, SIZE, SIZE)
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def export_dynamo(model, path: Path):
    """Dynamo exporter; weights embedded in the single .onnx file; dynamic batch."""
    import onnx
    import torch
    from torch.export import Dim

    x = torch.zeros(2, 1, SIZE, SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / path.name
        prog = torch.onnx.export(model, (x,), str(tmp_path), dynamo=True,
                                 input_names=["input"], output_names=["logits"],
                                 dynamic_shapes={"x": {0: Dim("batch", min=1, max=4096)}},
                                 external_data=False)
        del prog
        m = onnx.load(str(tmp_path), load_external_data=True)
    # rename the symbolic batch dim to the same name the TorchScript exports use
    for vi in list(m.graph.input) + list(m.graph.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        if d0.dim_param:
            d0.dim_param = "batch"
    # clear producer doc noise is not needed; save as one self-contained file
    onnx.save_model(m, str(path), save_as_external_data=False)
    data_file = Path(str(path) + ".data")
    if data_file.exists():
        data_file.unlink()


def check_onnx(path: Path, model, x, y):
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == ["input"], [i.name for i in m.graph.input]
    assert [o.name for o in m.graph.output] == ["logits"], [o.name for o in m.graph.output]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    lo = np.concatenate([sess.run(["logits"], {"input": x[i:i + 64]})[0]
                         for i in range(0, len(x), 64)])
    lo1 = sess.run(["logits"], {"input": x[:1]})[0]  # batch 1 works too
    lt = torch_logits(model, x)
    acc_ort = float((lo.argmax(1) == y).mean())
    acc_torch = float((lt.argmax(1) == y).mean())
    maxdiff = float(np.abs(lo - lt).max())
    assert acc_ort == acc_torch, (acc_ort, acc_torch)
    assert maxdiff < 1e-3, maxdiff
    assert np.abs(lo1 - lt[:1]).max() < 1e-3
    n_init = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    ops = sorted({n.op_type for n in m.graph.node})
    return dict(acc_ort=acc_ort, acc_torch=acc_torch, maxdiff=maxdiff,
                onnx_params=n_init, ops=ops, size=path.stat().st_size,
                opset=[(o.domain or "ai.onnx", o.version) for o in m.opset_import])


# --------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    ap.add_argument("--only", nargs="*", choices=["cnn", "resnet", "mlp"], default=None,
                    help="train only these models (data files are always written)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    np.random.seed(SEED)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    data = load_splits(SEED)
    for name in ("calib", "test"):
        x, y = data[name]
        np.savez_compressed(out / f"digits_{name}.npz", input=x, labels=y)
    print("splits:", {k: len(v[1]) for k, v in data.items()},
          "test class counts:", np.bincount(data["test"][1]).tolist(), flush=True)

    DigitsCNN, DigitsResNet, DigitsMLP = build_models()
    specs = {
        # name: (class, exporter, train kwargs, min test accuracy)
        "cnn": (DigitsCNN, export_torchscript,
                dict(epochs=30, lr=3e-3, wd=0.0, shift=2, seed=1), 0.97),
        "resnet": (DigitsResNet, export_dynamo,
                   dict(epochs=15, lr=3e-3, wd=0.0, shift=2, seed=2), 0.97),
        "mlp": (DigitsMLP, export_torchscript,
                dict(epochs=80, lr=2e-3, wd=0.05, shift=1, seed=3, label_smoothing=0.05), 0.95),
    }
    rows = []
    xt, yt = data["test"]
    for name, (cls, exporter, kw, min_acc) in specs.items():
        if args.only and name not in args.only:
            continue
        print(f"== digits_{name}", flush=True)
        torch.manual_seed(kw["seed"])
        model = cls()
        n_params = sum(p.numel() for p in model.parameters())
        secs = train(model, data, **kw)
        path = out / f"digits_{name}.onnx"
        exporter(model, path)
        r = check_onnx(path, model, xt, yt)
        print(f"    trained in {secs:.1f}s; test acc torch {r['acc_torch']:.4f} "
              f"onnxruntime {r['acc_ort']:.4f} (max |logit diff| {r['maxdiff']:.2e})")
        print(f"    opset {r['opset']} ops {r['ops']}", flush=True)
        if r["acc_ort"] < min_acc:
            raise SystemExit(f"digits_{name}: test accuracy {r['acc_ort']:.4f} < {min_acc}")
        if r["size"] >= 1 << 20:
            raise SystemExit(f"digits_{name}: {r['size']} bytes >= 1 MB")
        rows.append((path.name, r["size"] / 1024, n_params, r["onnx_params"], r["acc_ort"], secs))

    print()
    print(f"{'file':<20} {'size KB':>8} {'params':>8} {'onnx init':>9} {'test acc (ort)':>14} {'train s':>8}")
    for f, kb, p, pi, acc, secs in rows:
        print(f"{f:<20} {kb:8.1f} {p:8d} {pi:9d} {acc:14.4f} {secs:8.1f}")
    total = sum((out / f).stat().st_size for f, *_ in rows)
    print(f"{'total':<20} {total / 1024:8.1f}")
    if total >= 3 << 20:
        raise SystemExit("model set >= 3 MB")


if __name__ == "__main__":
    main()
