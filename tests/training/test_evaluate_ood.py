"""`python -m training.evaluate --ood DIR`: the "is it a pet?" verdict scored on photos of
neither class, the same for the checkpoint (torch) and the exported model (onnxruntime)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import SHIFTED_KINDS, shifted_photo


@pytest.fixture(scope="module")
def not_pets(tmp_path_factory):
    root = tmp_path_factory.mktemp("not_pets")
    for kind in SHIFTED_KINDS:
        (root / kind).mkdir()
        for seed in range(8):
            shifted_photo(kind, 100 + seed).save(root / kind / f"{kind}_{seed}.png")
    return root


def _evaluate(model, data, ood):
    proc = subprocess.run([sys.executable, "-m", "training.evaluate", "--model", str(model), "--data", str(data),
                           "--ood", str(ood), "--json", "--workers", "0"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ood_json_separates_shifted_photos_and_onnx_matches_torch(tiny_ood_checkpoint, tiny_ood_onnx, synthetic_data, not_pets):
    pt = _evaluate(tiny_ood_checkpoint, synthetic_data, not_pets)
    onnx = _evaluate(tiny_ood_onnx, synthetic_data, not_pets)
    for result in (pt, onnx):
        ood = result["ood"]
        assert set(ood) >= {"auroc", "false_accept_rate", "true_accept_rate"}
        assert ood["n_ood"] == 8 * len(SHIFTED_KINDS)
        assert ood["auroc"] >= 0.9
        assert ood["true_accept_rate"] >= 0.85  # calibrated to accept ~95% of real (val) pets
        assert ood["false_accept_rate"] <= 0.3
        assert result["accuracy"] >= 0.9  # the verdict is a side branch: accuracy unchanged
    # Same verdicts from both runtimes (the random-trunk tiny model's scores sit close together,
    # so float rounding may reorder a few near-ties: compare rates, not exact rankings).
    for key in ("false_accept_rate", "true_accept_rate"):
        assert onnx["ood"][key] == pytest.approx(pt["ood"][key], abs=0.1)


def test_ood_on_a_model_without_statistics_says_how_to_add_them(tiny_checkpoint, synthetic_data, not_pets):
    proc = subprocess.run([sys.executable, "-m", "training.evaluate", "--model", str(tiny_checkpoint), "--data",
                           str(synthetic_data), "--ood", str(not_pets), "--workers", "0"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2
    assert "training.calibrate" in proc.stderr and "Traceback" not in proc.stderr
