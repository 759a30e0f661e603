"""How much of each exported model onnx-slim can prune: transformers models as users export them.

Each architecture is built from a tiny config with random weights (the structure is what counts
here, not the accuracy: see bench_real.py for that) and exported by both PyTorch exporters
(TorchScript with dynamic axes, dynamo with dynamic shapes). For every file:

- the share of MACs in layers a prunable group shrinks (`inspect`'s figure), and the biggest
  frozen groups with the reason;
- `prune --ratio 0.3 --criterion l1`: the MACs kept, and the pruned model checked at two batch
  (and sequence) sizes: it loads, runs, keeps the output names and shapes;
- `prune --ratio 0`: the largest difference from the original's outputs (must be float noise).

    pip install -e '.[models]' huggingface_hub && pip install --no-deps transformers regex
    python scripts/bench_coverage.py [--only bert llama_gqa] [--out reports/bench_coverage]

Exports are cached in .cache/coverage/. One job at a time: the numbers are structural, not timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_report  # noqa: E402

from onnx_slim.channels.analysis import analyze  # noqa: E402
from onnx_slim.pipeline.prune import prune  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "coverage"
VOCAB, TEXT_LENGTH, IMAGE, SAMPLES = 1000, 16, 32, 4000
TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=VOCAB)
DECODER = dict(TEXT, max_position_embeddings=256, use_cache=False)
FIXED_LENGTH = {"funnel"}  # its exports only run at the traced sequence length
VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              image_size=IMAGE, patch_size=8)


def _architectures():
    """name -> (builder of the torch module, input kind)."""
    # transformers imports torchvision when it is installed; one built for another torch fails to
    # import, and these models need none of it.
    sys.modules.setdefault("torchvision", None)
    import transformers as T

    return {
        "bert": (lambda: T.BertModel(T.BertConfig(max_position_embeddings=128, **TEXT)), "text"),
        "distilbert": (lambda: T.DistilBertModel(T.DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4,
                                                                    hidden_dim=128)), "text"),
        "deberta_v2": (lambda: T.DebertaV2Model(T.DebertaV2Config(relative_attention=True, pos_att_type=["p2c", "c2p"],
                                                                  position_buckets=32, **TEXT)), "text"),
        "funnel": (lambda: T.FunnelModel(T.FunnelConfig(block_sizes=[1, 1], num_decoder_layers=1, d_model=64, n_head=4,
                                                        d_head=16, d_inner=128, vocab_size=VOCAB)), "text"),
        "gpt2": (lambda: T.GPT2Model(T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, use_cache=False,
                                                  vocab_size=VOCAB)), "text"),
        "llama_gqa": (lambda: T.LlamaModel(T.LlamaConfig(num_key_value_heads=2, **DECODER)), "text"),
        "qwen2_gqa": (lambda: T.Qwen2Model(T.Qwen2Config(num_key_value_heads=2, **DECODER)), "text"),
        "phi": (lambda: T.PhiModel(T.PhiConfig(partial_rotary_factor=0.5, **DECODER)), "text"),
        "vit": (lambda: T.ViTModel(T.ViTConfig(**VISION)), "image"),
        "swinv2": (lambda: T.Swinv2Model(T.Swinv2Config(image_size=IMAGE, patch_size=2, embed_dim=16, depths=[1, 1],
                                                        num_heads=[2, 4], window_size=4)), "image"),
        "segformer": (lambda: T.SegformerModel(T.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
            patch_sizes=[7, 3], strides=[4, 2])), "image"),
        "hubert": (lambda: T.HubertModel(T.HubertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(32,) * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)), "audio"),
    }


def _example(kind: str, batch: int, length: int):
    """Inputs by name as numpy arrays: token ids and a mask, an image, or raw audio."""
    rng = np.random.default_rng(batch * 1000 + length)
    if kind == "text":
        return {"input_ids": rng.integers(3, VOCAB, (batch, length)).astype(np.int64),
                "attention_mask": np.ones((batch, length), np.int64)}
    if kind == "image":
        return {"pixel_values": rng.standard_normal((batch, 3, IMAGE, IMAGE)).astype(np.float32)}
    return {"input_values": rng.standard_normal((batch, length)).astype(np.float32)}


def export(name: str, exporter: str) -> Path:
    """The cached export of `name` by `exporter` ("ts" or "dyn")."""
    path = CACHE / f"{name}__{exporter}.onnx"
    if path.exists():
        return path
    import torch

    build, kind = _architectures()[name]
    torch.manual_seed(0)
    module = build().eval()
    module.config._attn_implementation = "eager"

    feeds = _example(kind, 2, TEXT_LENGTH if kind == "text" else SAMPLES)
    args = tuple(torch.from_numpy(value) for value in feeds.values())
    names = list(feeds)

    class FirstOutput(torch.nn.Module):  # explicit parameters: torch.export matches dynamic shapes to them
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, first, second=None):
            given = dict(zip(names, (first, second)))
            return self.inner(**{name: value for name, value in given.items() if value is not None},
                              return_dict=False)[0]

    wrapped = FirstOutput(module)
    axes = {name: {0: "batch", 1: "sequence"} if kind != "image" else {0: "batch"} for name in names}
    CACHE.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        if exporter == "ts":
            torch.onnx.export(wrapped, args, str(scratch), input_names=names, output_names=["output"],
                              dynamic_axes={**axes, "output": {0: "batch"}}, opset_version=17, dynamo=False)
        else:
            dims = {label: torch.export.Dim.AUTO for label in ("batch", "sequence")}
            shapes = tuple({axis: dims[label] for axis, label in axes[name].items()} for name in names)
            program = torch.onnx.export(wrapped, args, input_names=names, output_names=["output"],
                                        dynamic_shapes=shapes, opset_version=18, dynamo=True, external_data=False)
            program.save(str(scratch), external_data=False)
    scratch.replace(path)
    return path


def _outputs(model, feeds) -> list[np.ndarray]:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def measure(path: Path, kind: str, fixed_length: bool) -> dict:
    """inspect's prunable share, the biggest frozen groups, ratio 0.3 and ratio 0 checked at two sizes
    (only those the original itself runs at: some exports fix the traced length or batch)."""
    shapes = {"input_values": [1, SAMPLES]} if kind == "audio" else None
    if fixed_length:
        shapes = {"input_ids": [1, TEXT_LENGTH], "attention_mask": [1, TEXT_LENGTH]}
    analysis = analyze(path, input_shapes=shapes)
    share = {group.id: analysis.group_macs(group) / max(analysis.cost.macs, 1) for group in analysis.groups}
    frozen = sorted((group for group in analysis.groups if not group.prunable), key=lambda g: -share[g.id])
    row = {"prunable_macs_fraction": round(analysis.prunable_macs_fraction(), 4),
           "frozen": [f"{share[group.id]:.2f}: {group.frozen[0]}" if group.frozen else f"{share[group.id]:.2f}: "
                      f"{group.channels} channel" for group in frozen[:3]]}
    sizes = [(1, TEXT_LENGTH), (3, TEXT_LENGTH if fixed_length else 37)] if kind == "text" else \
        [(1, SAMPLES), (3, SAMPLES // 2)]
    checks, expected = [], []
    for batch, length in sizes:
        feeds = _example(kind, batch, length)
        try:
            expected.append(_outputs(path, feeds))
            checks.append(feeds)
        except Exception:  # noqa: BLE001 - the original does not run there: nothing to compare
            row.setdefault("original_fails_at", []).append([batch, length])
    pruned, report = prune(path, ratio=0.3, criterion="l1", input_shapes=shapes)
    row["macs_kept_at_0.3"] = round(report.macs_after / report.macs_before, 4)
    row["shapes_kept"] = all(a.shape == b.shape for feeds, want in zip(checks, expected)
                             for a, b in zip(_outputs(pruned, feeds), want))
    exact, _ = prune(path, ratio=0.0, input_shapes=shapes)
    row["ratio_0_max_diff"] = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
                                  for feeds, want in zip(checks, expected) for a, b in zip(_outputs(exact, feeds), want))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="architectures to run (default: all)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench_coverage"))
    args = parser.parse_args()
    architectures = _architectures()
    rows = {}
    for name in args.only or architectures:
        for exporter in ("ts", "dyn"):
            key = f"{name} ({'TorchScript' if exporter == 'ts' else 'dynamo'})"
            try:
                rows[key] = measure(export(name, exporter), architectures[name][1], name in FIXED_LENGTH)
            except Exception as exc:  # an export or a run that fails is a row, not the end of the benchmark
                rows[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                traceback.print_exc()
            print(key, rows[key], flush=True)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    lines = ["# Coverage: what onnx-slim prunes in models as users export them", "",
             f"`python scripts/bench_coverage.py` (transformers models from tiny configs, random weights; both "
             f"PyTorch exporters, dynamic batch and sequence). Prunable = share of the MACs in layers a prunable "
             f"group shrinks (`inspect`); kept at 0.3 = MACs fraction after `prune --ratio 0.3 --criterion l1`, "
             f"whose output was run at two batch/sequence sizes (shapes kept: yes/no); ratio 0 = largest "
             f"difference from the original's outputs after `prune --ratio 0`, relative to their largest value. "
             f"The configs are tiny (hidden size 64, 2 layers, 32 px images): a patch embedding weighs far more "
             f"here than in a full-size model. Frozen groups behind LayerNorm prune with `--prune-layernorm`.", "",
             "| export | prunable | kept at 0.3 | shapes kept | ratio 0 | biggest frozen groups (MACs share: why) |",
             "|---|---|---|---|---|---|"]
    for key, row in rows.items():
        if "error" in row:
            lines.append(f"| {key} | error: {row['error']} | | | | |")
            continue
        frozen = "<br>".join(text.replace("|", "/") for text in row["frozen"])
        lines.append(f"| {key} | {row['prunable_macs_fraction']:.1%} | {row['macs_kept_at_0.3']:.3f} | "
                     f"{'yes' if row['shapes_kept'] else 'NO'} | {row['ratio_0_max_diff']:.1e} | {frozen} |")
    write_report(args.out + ".md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
