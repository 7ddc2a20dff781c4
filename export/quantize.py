"""Static int8 quantization of an exported model with ``onnxruntime.quantization``.

Calibration runs the float model on real photos (decoded and preprocessed exactly like the
:class:`~export.runtime.Classifier` does) to fix each activation's int8 range. Defaults
were measured, not assumed (see README, "int8"): QDQ format, per-channel int8 weights,
uint8 activations (U8S8), MinMax ranges, after ``quant_pre_process`` (shape inference +
graph optimization), with the first 7 convolutions kept float. Per-tensor weights ruin
MobileNet's depthwise convolutions (accuracy falls to chance); S8S8 is 1.5-2x slower than
U8S8 on x86; percentile/entropy calibration took 7x longer for no gain; ``reduce_range``
is only for AVX2 CPUs *without* VNNI, where U8S8 can saturate. Everything after the final
pooling (head, softmax, OOD scorer) stays float so probabilities and OOD scores keep full
resolution.

The result is checked against the float model on photos left out of calibration, and
refused (:class:`~export.convert.ExportError`) when too many predictions change.

Run alone to try other settings::

    python -m export.quantize --model models/catsdogs.onnx --calibration DIR \\
        --out /tmp/qop.onnx --format qoperator
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from training.cli import add_model, make_parser, out_file, positive, run
from training.images import ImageError, image_files

from .convert import ExportError, PhotosError
from .runtime import Classifier

N_CALIBRATION = 200
MIN_CALIBRATION = 10  # fewer photos cannot place the activation ranges
N_CHECK = 64
MIN_AGREEMENT = 0.9  # top-1 agreement with the float model on held-out photos


@dataclass
class QuantSettings:
    """Knobs of ``quantize_static``; the defaults are what measured fastest without
    losing accuracy on an AVX2/AVX-512 CPU (see module docstring)."""

    format: str = "qdq"  # "qdq" (portable: TensorRT and CUDA read it too) or "qoperator"
    per_channel: bool = True
    reduce_range: bool = False
    activation: str = "uint8"  # "uint8" or "int8"
    weight: str = "int8"  # "int8" or "uint8"
    method: str = "minmax"  # "minmax", "percentile" or "entropy"
    pre_process: bool = True
    float_convs: int = 7  # the first N convolutions (stem, first blocks) stay float32

    def kwargs(self) -> dict:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

        types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
        return dict(
            quant_format=QuantFormat.QDQ if self.format == "qdq" else QuantFormat.QOperator,
            per_channel=self.per_channel,
            reduce_range=self.reduce_range,
            activation_type=types[self.activation],
            weight_type=types[self.weight],
            calibrate_method=methods[self.method],
        )


@dataclass
class QuantReport:
    path: Path
    n_calibration: int
    n_check: int
    agreement: float  # top-1 agreement with the float model on held-out photos
    max_abs_diff: float
    seconds: float
    settings: QuantSettings = field(default_factory=QuantSettings)
    skipped: int = 0  # unreadable calibration files


def load_batch(clf: Classifier, files: list[Path]) -> tuple[np.ndarray, int]:
    """Preprocessed float32 ``[N, 3, S, S]`` for the readable ``files``, and how many were skipped."""
    arrays, skipped = [], 0
    for f in files:
        try:
            arrays.append(clf.preprocess(f))
        except ImageError:
            skipped += 1
    if not arrays:
        raise PhotosError(f"none of the {len(files)} calibration photos could be read as images; "
                          "give a folder of real photos (JPEG, PNG, ...)")
    return np.stack(arrays), skipped


def float_tail(model: onnx.ModelProto) -> list[str]:
    """Nodes from the final global pooling(s) on: the head's Gemm, the softmax and any OOD
    scorer. They stay float: quantized, probabilities would come in steps of 1/255 (0.4 %,
    "0 %" for the runner-up, rows not summing to 1), OOD similarities would move against
    their calibrated threshold, and all of it costs nothing next to the trunk.

    Found by walking back from the graph's outputs and stopping at each pooling node, so a
    graph with two tails (the fine-tuned blocks and the OOD reference blocks) keeps both
    poolings' consumers float, and squeeze-excitation poolings inside a trunk are not reached."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    wanted, seen, tail = [o.name for o in model.graph.output], set(), set()
    while wanted:
        node = producer.get(wanted.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        tail.add(node.name)
        if node.op_type not in ("GlobalAveragePool", "ReduceMean"):
            wanted.extend(node.input)
    return [n.name for n in nodes if n.name in tail]  # in graph order


def _pre_process(src: Path, out: Path) -> Path:
    """onnxruntime's quant_pre_process (shape inference + optimization), falling back to
    ONNX-only shape inference when the symbolic pass cannot handle an op (the OOD scorer's
    TopK trips it), and to the unprocessed model when that fails too."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            quant_pre_process(str(src), str(out), skip_symbolic_shape=skip_symbolic)
            return out
        except Exception:
            continue
    return src


def kept_float(model: onnx.ModelProto, float_convs: int) -> list[str]:
    """Nodes left out of quantization: the first ``float_convs`` convolutions and the
    :func:`float_tail`. Measured on the fine-tuned MobileNetV2: quantizing everything
    changes 1.25 % of 800 predictions (val accuracy 97.0 -> 94.0 %); the stem and first
    blocks carry almost all of that error (3 convs float: 0.6 %, 4: 0.1 %, 7: 0 %), while
    the deeper blocks hold the compute, so keeping 7 float costs ~10 % of the speed-up."""
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"][:float_convs]
    return convs + float_tail(model)


class _Reader:
    """``CalibrationDataReader``: hands the calibrator batches of real photos. All batches
    have the same size (the histogram calibrators stack them), so up to ``batch_size - 1``
    photos may be left out."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = 8):
        batch_size = min(batch_size, len(images))
        n = len(images) - len(images) % batch_size
        self._batches = iter([{input_name: images[i : i + batch_size]} for i in range(0, n, batch_size)])

    def get_next(self):
        return next(self._batches, None)


def quantize_int8(
    fp32_path: str | os.PathLike,
    out: str | os.PathLike,
    calibration: str | os.PathLike,
    *,
    n_calibration: int = N_CALIBRATION,
    n_check: int = N_CHECK,
    settings: QuantSettings | None = None,
    min_agreement: float = MIN_AGREEMENT,
) -> QuantReport:
    """Quantize the exported float model ``fp32_path`` to ``out`` using photos under
    ``calibration`` (a folder, searched recursively; images are drawn evenly across it).

    Up to ``n_calibration`` photos calibrate; up to ``n_check`` *other* photos (when the
    folder has them) measure agreement with the float model. Metadata (labels, ...) is
    carried over with ``precision=int8`` and the settings used.
    """
    from onnxruntime.quantization import quantize_static

    start = time.perf_counter()
    settings = settings or QuantSettings()
    fp32_path, out = Path(fp32_path), Path(out)
    fp32 = Classifier.load(fp32_path, providers=["CPUExecutionProvider"])
    files = image_files(calibration)
    if len(files) < MIN_CALIBRATION:
        raise PhotosError(f"{calibration} has {len(files)} photos; calibration needs at least {MIN_CALIBRATION} "
                          "real photos (ideally 100+)")
    picks = np.linspace(0, len(files) - 1, min(n_calibration, len(files))).round().astype(int)
    chosen = set(picks.tolist())
    cal_files = [files[i] for i in sorted(chosen)]
    rest = [f for i, f in enumerate(files) if i not in chosen] or cal_files
    check_files = [rest[i] for i in np.linspace(0, len(rest) - 1, min(n_check, len(rest))).round().astype(int)]
    cal, skipped = load_batch(fp32, cal_files)
    check, _ = load_batch(fp32, check_files)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.stem}.tmp{os.getpid()}.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        src = _pre_process(fp32_path, Path(tmp) / "pre.onnx") if settings.pre_process else fp32_path
        try:
            try:
                quantize_static(
                    str(src), str(tmp_out), _Reader(fp32.backend.input_name, cal),
                    nodes_to_exclude=kept_float(onnx.load(str(src)), settings.float_convs), **settings.kwargs(),
                )
            except Exception as exc:  # onnxruntime.quantization raises anything from deep inside
                raise ExportError(f"int8 quantization failed ({exc.__class__.__name__}: {str(exc)[:300]})") from exc
            proto = onnx.load(str(tmp_out))
            meta = dict(fp32.metadata)
            meta.update(
                precision="int8",
                quantization=json.dumps({k: v for k, v in vars(settings).items()}),
                calibration_images=str(len(cal)),
            )
            del proto.metadata_props[:]
            for key, value in meta.items():
                proto.metadata_props.add(key=key, value=value)
            onnx.save(proto, str(tmp_out))

            int8 = Classifier.load(tmp_out, providers=["CPUExecutionProvider"])
            p32, p8 = fp32.probabilities(check), int8.probabilities(check)
            agreement = float((p32.argmax(1) == p8.argmax(1)).mean())
            diff = float(np.abs(p32 - p8).max())
            if agreement < min_agreement:
                raise ExportError(
                    f"the int8 model changes {1 - agreement:.0%} of predictions on {len(check)} held-out photos "
                    f"(limit {1 - min_agreement:.0%}); not written. Try more or more typical calibration photos, "
                    "or --method percentile."
                )
            os.replace(tmp_out, out)
        finally:
            tmp_out.unlink(missing_ok=True)
    return QuantReport(out, len(cal), len(check), agreement, diff, time.perf_counter() - start, settings, skipped)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = make_parser("python -m export.quantize", "Static int8 quantization of an exported petlens ONNX model.",
                         add_help=add_help)
    add_model(parser, help="float ONNX model from `python -m export`")
    parser.add_argument("--calibration", required=True, type=Path, help="folder of real photos (searched recursively)")
    parser.add_argument("--out", required=True, type=Path, help="where to write the int8 model")
    parser.add_argument("--n-calibration", type=positive(int), default=N_CALIBRATION, help="photos used for calibration (default: %(default)s)")
    parser.add_argument("--format", choices=["qdq", "qoperator"], default="qdq", help="quantized graph format (default: %(default)s)")
    parser.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor instead of per channel (hurts MobileNets)")
    parser.add_argument("--reduce-range", action="store_true", help="7-bit weights: avoids U8S8 saturation on AVX2 CPUs without VNNI")
    parser.add_argument("--activation", choices=["uint8", "int8"], default="uint8", help="activation type (default: %(default)s)")
    parser.add_argument("--weight", choices=["int8", "uint8"], default="int8", help="weight type (default: %(default)s)")
    parser.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="minmax", help="calibration method (default: %(default)s)")
    parser.add_argument("--float-convs", type=int, default=7,
                        help="keep the first N convolutions float: they carry most of the int8 error and little compute (default: %(default)s)")
    parser.add_argument("--no-pre-process", action="store_true", help="skip onnxruntime's quant_pre_process (shape inference + optimization)")
    return parser


def settings_from_args(args: argparse.Namespace) -> QuantSettings:
    return QuantSettings(
        format=args.format, per_channel=not args.per_tensor, reduce_range=args.reduce_range,
        activation=args.activation, weight=args.weight, method=args.method, pre_process=not args.no_pre_process,
        float_convs=args.float_convs,
    )


def describe(report: QuantReport) -> str:
    return (
        f"wrote {report.path} (int8, {report.settings.format}): calibrated on {report.n_calibration} photos"
        f"{f' ({report.skipped} unreadable skipped)' if report.skipped else ''}; agrees with float on "
        f"{report.agreement:.1%} of {report.n_check} held-out photos (max prob diff {report.max_abs_diff:.3f}); "
        f"{report.seconds:.0f}s"
    )


def main(args: argparse.Namespace) -> int:
    out_file(args.out, suffixes=(".onnx",), example=f"{Path(args.model).stem}-int8.onnx")  # before quantizing
    report = quantize_int8(args.model, args.out, args.calibration, n_calibration=args.n_calibration,
                           settings=settings_from_args(args))
    print(describe(report))
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``python -m export.quantize``: a user's mistake is one line on stderr and exit 2; a
    quantized model that disagrees with the float one is one line and exit 1."""
    return run(get_args_parser(), main, argv, failures=(ExportError,))


if __name__ == "__main__":
    sys.exit(cli())
