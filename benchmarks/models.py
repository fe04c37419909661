"""Export the benchmark models: real architectures with random weights, and the synthetic scale series.

    python benchmarks/models.py [--out benchmarks/models] [--only NAME...] [--exporters legacy dynamo]

Nothing is downloaded: some CNNs are small torch.nn definitions written here, the others come from
torchvision (``weights=None``), timm (``pretrained=False``) and ultralytics (a YOLO built from its
bundled yaml config); the transformers come from transformers' config classes with random init. Every
architecture is exported twice, with PyTorch's legacy TorchScript exporter (dynamo=False, opset 17)
and with the torch.export-based one (dynamo=True, opset 18), because the two produce very
different graphs and a deployment engineer meets both. On request (``--exporters unfolded``) a
third form: the legacy exporter with ``do_constant_folding=False``, which keeps every
BatchNormalization as a node (as a training-mode or QAT export does); TensorRT fuses some of those
BNs better than it fuses the folded convs (docs/passes/fuse-conv-bn.md). Eval mode, batch 1, fp32, static shapes.
An exporter that fails is recorded in the manifest, not hidden.

Files are named ``<model>.<exporter>.onnx`` (synthetic: ``synthetic-<n>.onnx``); the manifest
(name, exporter, nodes, size, seconds, error) is printed and written to ``<out>/manifest.json``
for benchmarks/compare.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

DEFAULT_OUT = Path(__file__).parent / "models"
EXPORTERS = {"legacy": 17, "dynamo": 18, "unfolded": 17}  # exporter -> opset
DEFAULT_EXPORTERS = ("legacy", "dynamo")
SYNTHETIC_SIZES = (1_600, 16_000, 64_000)
MAX_IR_VERSION = 10  # onnxruntime 1.31 refuses newer IR versions; the exporters may write newer ones
SEQ_LEN = 128
TEXT_INPUTS = ("input_ids", "attention_mask")

# --------------------------------------------------------------------------------------------
# torch.nn definitions (imported lazily: `--only synthetic-1600` must not need torch)


def _cnn_zoo() -> dict[str, Callable[[], Any]]:
    import torch
    from torch import nn

    class ConvBN(nn.Sequential):
        """conv (no bias) + batch norm + relu: the unit every CNN below is made of."""

        def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                     padding: int | tuple[int, int] = 0) -> None:
            super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
                             nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU(inplace=True))

    class Head(nn.Sequential):
        def __init__(self, features: int, dropout: float) -> None:
            super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(features, 1000))

    class Concat(nn.Module):
        def __init__(self, *branches: nn.Module) -> None:
            super().__init__()
            self.branches = nn.ModuleList(branches)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([b(x) for b in self.branches], 1)

    # GoogLeNet (Szegedy et al. 2014) as torchvision lays it out: 3x3 in place of the 5x5 branch.
    def google_inception(cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int) -> nn.Module:
        return Concat(ConvBN(cin, c1, 1),
                      nn.Sequential(ConvBN(cin, c3r, 1), ConvBN(c3r, c3, 3, padding=1)),
                      nn.Sequential(ConvBN(cin, c5r, 1), ConvBN(c5r, c5, 3, padding=1)),
                      nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), ConvBN(cin, pool, 1)))

    def googlenet() -> nn.Module:
        pool = lambda k=3: nn.MaxPool2d(k, 2, ceil_mode=True)  # noqa: E731
        return nn.Sequential(
            ConvBN(3, 64, 7, 2, 3), pool(), ConvBN(64, 64, 1), ConvBN(64, 192, 3, padding=1), pool(),
            google_inception(192, 64, 96, 128, 16, 32, 32), google_inception(256, 128, 128, 192, 32, 96, 64),
            pool(),
            google_inception(480, 192, 96, 208, 16, 48, 64), google_inception(512, 160, 112, 224, 24, 64, 64),
            google_inception(512, 128, 128, 256, 24, 64, 64), google_inception(512, 112, 144, 288, 32, 64, 64),
            google_inception(528, 256, 160, 320, 32, 128, 128), pool(2),
            google_inception(832, 256, 160, 320, 32, 128, 128), google_inception(832, 384, 192, 384, 48, 128, 128),
            Head(1024, 0.2))

    # Inception-v3 (Szegedy et al. 2015), without the auxiliary classifier (eval mode drops it anyway).
    def avg_pool_branch(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.AvgPool2d(3, 1, 1), ConvBN(cin, cout, 1))

    def inception_a(cin: int, pool: int) -> nn.Module:
        return Concat(ConvBN(cin, 64, 1),
                      nn.Sequential(ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2)),
                      nn.Sequential(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)),
                      avg_pool_branch(cin, pool))

    def inception_b(cin: int) -> nn.Module:
        return Concat(ConvBN(cin, 384, 3, 2),
                      nn.Sequential(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, 2)),
                      nn.MaxPool2d(3, 2))

    def inception_c(cin: int, c7: int) -> nn.Module:
        def row(a: int, b: int) -> nn.Module:
            return ConvBN(a, b, (1, 7), padding=(0, 3))

        def col(a: int, b: int) -> nn.Module:
            return ConvBN(a, b, (7, 1), padding=(3, 0))

        return Concat(ConvBN(cin, 192, 1),
                      nn.Sequential(ConvBN(cin, c7, 1), row(c7, c7), col(c7, 192)),
                      nn.Sequential(ConvBN(cin, c7, 1), col(c7, c7), row(c7, c7), col(c7, c7), row(c7, 192)),
                      avg_pool_branch(cin, 192))

    def inception_d(cin: int) -> nn.Module:
        return Concat(nn.Sequential(ConvBN(cin, 192, 1), ConvBN(192, 320, 3, 2)),
                      nn.Sequential(ConvBN(cin, 192, 1), ConvBN(192, 192, (1, 7), padding=(0, 3)),
                                    ConvBN(192, 192, (7, 1), padding=(3, 0)), ConvBN(192, 192, 3, 2)),
                      nn.MaxPool2d(3, 2))

    def split_3x3(cin: int) -> nn.Module:
        return Concat(ConvBN(cin, 384, (1, 3), padding=(0, 1)), ConvBN(cin, 384, (3, 1), padding=(1, 0)))

    def inception_e(cin: int) -> nn.Module:
        return Concat(ConvBN(cin, 320, 1),
                      nn.Sequential(ConvBN(cin, 384, 1), split_3x3(384)),
                      nn.Sequential(ConvBN(cin, 448, 1), ConvBN(448, 384, 3, padding=1), split_3x3(384)),
                      avg_pool_branch(cin, 192))

    def inception_v3() -> nn.Module:
        return nn.Sequential(
            ConvBN(3, 32, 3, 2), ConvBN(32, 32, 3), ConvBN(32, 64, 3, padding=1), nn.MaxPool2d(3, 2),
            ConvBN(64, 80, 1), ConvBN(80, 192, 3), nn.MaxPool2d(3, 2),
            inception_a(192, 32), inception_a(256, 64), inception_a(288, 64), inception_b(288),
            inception_c(768, 128), inception_c(768, 160), inception_c(768, 160), inception_c(768, 192),
            inception_d(768), inception_e(1280), inception_e(2048), Head(2048, 0.5))

    # DenseNet-121 (Huang et al. 2017): pre-activation BN after every concat, so BN cannot simply
    # be folded into the preceding conv.
    class DenseLayer(nn.Module):
        def __init__(self, cin: int, growth: int = 32, bn_size: int = 4) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, bn_size * growth, 1, bias=False),
                nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True),
                nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, self.body(x)], 1)

    def densenet121() -> nn.Module:
        layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                   nn.MaxPool2d(3, 2, 1)]
        channels = 64
        for i, n in enumerate((6, 12, 24, 16)):
            for _ in range(n):
                layers.append(DenseLayer(channels))
                channels += 32
            if i < 3:
                layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                           nn.Conv2d(channels, channels // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), Head(channels, 0.0)]
        return nn.Sequential(*layers)

    return {"googlenet": googlenet, "inception_v3": inception_v3, "densenet121": densenet121}


def _transformers_zoo() -> dict[str, Callable[[], Any]]:
    import torch
    import transformers as tf
    from torch import nn

    class Logits(nn.Module):
        """Feed the inputs by name (positional order differs between models) and unwrap the ModelOutput
        so the ONNX graph has one plain tensor output."""

        def __init__(self, model: nn.Module, field: str, names: tuple[str, ...] = ("pixel_values",)) -> None:
            super().__init__()
            self.model, self.field, self.names = model, field, names

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return getattr(self.model(**dict(zip(self.names, args, strict=True))), self.field)

    def resnet50() -> nn.Module:
        return Logits(tf.ResNetForImageClassification(tf.ResNetConfig(num_labels=1000)), "logits")

    def efficientnet_b0() -> nn.Module:
        # The config's defaults are B7; these are B0's coefficients.
        cfg = tf.EfficientNetConfig(width_coefficient=1.0, depth_coefficient=1.0, image_size=224, hidden_dim=1280,
                                    dropout_rate=0.2, num_labels=1000)
        return Logits(tf.EfficientNetForImageClassification(cfg), "logits")

    def vit_small() -> nn.Module:
        cfg = tf.ViTConfig(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1536,
                           image_size=224, patch_size=16, num_labels=1000)
        return Logits(tf.ViTForImageClassification(cfg), "logits")

    def bert() -> nn.Module:
        # BERT-base layer geometry, 2 layers and a smaller vocabulary to keep the file under 100 MB.
        cfg = tf.BertConfig(num_hidden_layers=2, vocab_size=8192)
        return Logits(tf.BertModel(cfg, add_pooling_layer=True), "last_hidden_state", TEXT_INPUTS)

    def gpt2() -> nn.Module:
        cfg = tf.GPT2Config(n_layer=2, vocab_size=8192, bos_token_id=0, eos_token_id=0, use_cache=False)
        return Logits(tf.GPT2LMHeadModel(cfg), "logits", TEXT_INPUTS)

    def distilbert() -> nn.Module:
        cfg = tf.DistilBertConfig(n_layers=2, vocab_size=8192)
        return Logits(tf.DistilBertModel(cfg), "last_hidden_state", TEXT_INPUTS)

    def swin() -> nn.Module:
        # Swin-T's geometry with one block per stage: every window shift and patch merge, a smaller file.
        cfg = tf.SwinConfig(image_size=224, depths=[1, 1, 1, 1], num_labels=1000)
        return Logits(tf.SwinForImageClassification(cfg), "logits")

    return {"resnet50": resnet50, "efficientnet_b0": efficientnet_b0, "vit": vit_small, "bert": bert,
            "gpt2": gpt2, "distilbert": distilbert, "swin": swin}


def _torchvision_zoo() -> dict[str, Callable[[], Any]]:
    import torchvision

    def tv(name: str, **kw: Any) -> Callable[[], Any]:
        return lambda: getattr(torchvision.models, name)(weights=None, **kw)

    plain = ("resnet50", "mobilenet_v3_large", "mobilenet_v2", "efficientnet_b0")
    return {**{f"tv_{n}": tv(n) for n in plain},
            "tv_googlenet": tv("googlenet", aux_logits=False, init_weights=True),
            "tv_inception_v3": tv("inception_v3", aux_logits=False, init_weights=True)}


TIMM_MODELS = ("convnext_atto", "ghostnet_100", "cspdarknet53", "deit_tiny_patch16_224", "resnet26d", "repvgg_a0")


def _timm_zoo() -> dict[str, Callable[[], Any]]:
    import timm

    return {f"timm_{n}": (lambda n=n: timm.create_model(n, pretrained=False)) for n in TIMM_MODELS}


def _ultralytics_zoo() -> dict[str, Callable[[], Any]]:
    import torch
    from torch import nn

    class FirstOutput(nn.Module):
        """The detection head's decoded boxes (eval mode returns them with the raw feature maps)."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.model(x)
            return y[0] if isinstance(y, (tuple, list)) else y

    def yolo11n() -> nn.Module:
        from ultralytics import YOLO

        return FirstOutput(YOLO("yolo11n.yaml").model)  # the bundled config: nothing is downloaded

    return {"yolo11n": yolo11n}


ZOOS: dict[str, Callable[[], dict[str, Callable[[], Any]]]] = {
    "cnn": _cnn_zoo, "transformers": _transformers_zoo, "torchvision": _torchvision_zoo, "timm": _timm_zoo,
    "ultralytics": _ultralytics_zoo}


@dataclass(frozen=True)
class Arch:
    """An architecture to export: where its module comes from and what it is fed."""

    zoo: str  # a key of ZOOS
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape, "float" | "int")


_IMAGE = (("pixel_values", (1, 3, 224, 224), "float"),)
_TEXT = (("input_ids", (1, SEQ_LEN), "int"), ("attention_mask", (1, SEQ_LEN), "int"))
ARCHS: dict[str, Arch] = {
    "resnet50": Arch("transformers", _IMAGE),
    "googlenet": Arch("cnn", _IMAGE),
    "inception_v3": Arch("cnn", (("pixel_values", (1, 3, 299, 299), "float"),)),
    "densenet121": Arch("cnn", _IMAGE),
    "efficientnet_b0": Arch("transformers", _IMAGE),
    "bert": Arch("transformers", _TEXT),
    # With an attention mask, as deployed; without one transformers 5 emits aten::diff (packed-sequence
    # detection), which the legacy exporter cannot export.
    "gpt2": Arch("transformers", _TEXT),
    "vit": Arch("transformers", _IMAGE),
    "distilbert": Arch("transformers", _TEXT),
    "swin": Arch("transformers", _IMAGE),
    **{f"tv_{n}": Arch("torchvision", _IMAGE)
       for n in ("resnet50", "googlenet", "mobilenet_v3_large", "mobilenet_v2", "efficientnet_b0")},
    "tv_inception_v3": Arch("torchvision", (("pixel_values", (1, 3, 299, 299), "float"),)),
    **{f"timm_{n}": Arch("timm", _IMAGE) for n in TIMM_MODELS},
    "yolo11n": Arch("ultralytics", (("pixel_values", (1, 3, 640, 640), "float"),)),
}


@dataclass
class Entry:
    """One line of the manifest. ``error`` is set (and ``path`` empty) when the export failed."""

    name: str
    exporter: str
    path: str
    nodes: int
    bytes: int
    seconds: float
    error: str = ""


def _example_inputs(arch: Arch) -> tuple[Any, ...]:
    import torch

    gen = torch.Generator().manual_seed(0)
    out = []
    for _, shape, kind in arch.inputs:
        if kind == "float":
            out.append(torch.randn(shape, generator=gen))
        elif _ == "attention_mask":
            out.append(torch.ones(shape, dtype=torch.int64))
        else:
            out.append(torch.randint(0, 1000, shape, generator=gen))
    return tuple(out)


def _module(name: str) -> Any:
    import torch

    torch.manual_seed(0)  # random weights, but the same ones on every run
    module = ZOOS[ARCHS[name].zoo]()[name]().eval()
    for p in module.parameters():  # ultralytics builds its models with gradients on
        p.requires_grad_(False)
    _untie_constant_init(module)
    return module


def _untie_constant_init(module: Any) -> None:
    """Give every tensor an untrained model fills with one value (biases and norm shifts of 0, norm
    scales and BN variances of 1, BN means of 0) distinct values, as training would.

    Left constant, they make the export unlike any trained model's: the exporter shares equal
    tensors through Identity nodes and folds BNs into equal biases, and x+0 / x*1 become no-ops a
    pass may remove; each of these changes what TensorRT builds (fused kernels, stream
    assignment), so an engine comparison on them measures the initialisation, not the tool.
    """
    import torch

    gen = torch.Generator().manual_seed(1)
    tensors = list(module.parameters())
    tensors += [b for n, b in module.named_buffers() if n.rsplit(".", 1)[-1] in ("running_mean", "running_var")]
    for t in tensors:
        if not t.is_floating_point() or t.numel() < 2 or not bool((t == t.flatten()[0]).all()):
            continue
        c = float(t.flatten()[0])
        if c == 0.0:
            t.copy_(0.05 * torch.randn(t.shape, generator=gen))
        else:
            t.copy_(c * (0.5 + torch.rand(t.shape, generator=gen)))


def _one_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # the dynamo exporter colours its messages
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def _cap_ir_version(path: Path) -> None:
    """Lower the IR version stamp the exporter wrote when onnxruntime would refuse the file."""
    model = onnx.load(path, load_external_data=False)
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        onnx.save(model, path)


def export(name: str, exporter: str, out: Path) -> Entry:
    """Export one architecture with one exporter; failures come back as an Entry with ``error``."""
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # after importing torch, which sets it up

    path = out / f"{name}.{exporter}.onnx"
    arch = ARCHS[name]
    start = time.perf_counter()
    try:
        module, args = _module(name), _example_inputs(arch)
        names = [n for n, _, _ in arch.inputs]
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter in ("legacy", "unfolded"):
                torch.onnx.export(module, args, path, dynamo=False, opset_version=EXPORTERS[exporter],
                                  input_names=names, output_names=["output"],
                                  do_constant_folding=exporter == "legacy")
            else:
                torch.onnx.export(module, args, path, dynamo=True, opset_version=EXPORTERS[exporter],
                                  input_names=names, output_names=["output"], external_data=False)
        _cap_ir_version(path)
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001  (any exporter failure is a result to record)
        path.unlink(missing_ok=True)
        return Entry(name, exporter, "", 0, 0, time.perf_counter() - start, _one_line(e))
    return _entry(name, exporter, path, time.perf_counter() - start)


def _entry(name: str, exporter: str, path: Path, seconds: float) -> Entry:
    model = onnx.load(path, load_external_data=False)
    return Entry(name, exporter, str(path), len(model.graph.node), path.stat().st_size, seconds)


# --------------------------------------------------------------------------------------------
# synthetic scale series


def synthetic(n_nodes: int) -> onnx.ModelProto:
    """The project's conv-bn-relu + 1x1 branches + concat generator (optgraph.passes.testing.networks)."""
    from optgraph.passes.testing.networks import synthetic as make

    return make(n_nodes)


def export_synthetic(n_nodes: int, out: Path) -> Entry:
    path = out / f"synthetic-{n_nodes}.onnx"
    start = time.perf_counter()
    try:
        onnx.save(synthetic(n_nodes), path)
    except Exception as e:  # noqa: BLE001
        return Entry(f"synthetic-{n_nodes}", "synthetic", "", 0, 0, time.perf_counter() - start, _one_line(e))
    return _entry(f"synthetic-{n_nodes}", "synthetic", path, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------


def all_names() -> list[str]:
    return [*ARCHS, *(f"synthetic-{n}" for n in SYNTHETIC_SIZES)]


def build(names: list[str], exporters: list[str], out: Path, *, log: Callable[[str], None] = print) -> list[Entry]:
    """Export ``names`` into ``out`` and merge the results into ``out/manifest.json``."""
    out.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []
    for name in names:
        if name.startswith("synthetic-"):
            entries.append(export_synthetic(int(name.split("-", 1)[1]), out))
        else:
            entries.extend(export(name, exporter, out) for exporter in exporters)
        for e in entries[-len(exporters):] if not name.startswith("synthetic-") else entries[-1:]:
            log(_format(e))
    manifest = out / "manifest.json"
    old = {(e["name"], e["exporter"]): e for e in json.loads(manifest.read_text())} if manifest.exists() else {}
    old.update({(e.name, e.exporter): asdict(e) for e in entries})
    manifest.write_text(json.dumps(sorted(old.values(), key=lambda e: (e["name"], e["exporter"])), indent=1))
    return entries


def read_manifest(out: Path = DEFAULT_OUT) -> list[Entry]:
    """The exported models (failed exports included, with their error)."""
    return [Entry(**e) for e in json.loads((out / "manifest.json").read_text())]


def _format(e: Entry) -> str:
    if e.error:
        return f"{e.name:18} {e.exporter:9} FAILED after {e.seconds:5.1f}s  {e.error}"
    return f"{e.name:18} {e.exporter:9} {e.nodes:7d} nodes {e.bytes / 1e6:8.1f} MB {e.seconds:6.1f}s  {e.path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the .onnx files")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=all_names(), help="export only these")
    parser.add_argument("--exporters", nargs="+", choices=list(EXPORTERS), default=list(DEFAULT_EXPORTERS))
    args = parser.parse_args(argv)
    entries = build(args.only or all_names(), args.exporters, args.out)
    failed = [e for e in entries if e.error]
    print(f"{len(entries) - len(failed)} exported, {len(failed)} failed; manifest: {args.out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
