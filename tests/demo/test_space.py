"""Hugging Face Space readiness, offline: the generated requirements mirror pyproject, and
the Space folder boots the way a Space starts it (``python demo/app.py`` from the folder's
root, the project *not* installed) and answers every tab; every package the running demo
imported is covered by requirements.txt plus gradio (which the Space provides)."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from demo.space import FRONT_MATTER, space_requirements, write_space

OUR_PACKAGES = {"training", "export", "service", "demo", "bot"}


def requirement_names(lines: list[str]) -> set[str]:
    return {Requirement(line).name.lower() for line in lines if not line.startswith("-")}


def test_requirements_follow_pyproject_without_gradio():
    gpu, cpu = space_requirements(gpu=True), space_requirements()
    assert {"torch", "torchvision", "numpy", "pillow", "onnxruntime-gpu"} <= requirement_names(gpu)
    assert "gradio" not in requirement_names(gpu) | requirement_names(cpu)  # the Space's sdk_version pins it
    assert cpu[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert "onnxruntime-gpu" not in requirement_names(cpu) and "onnxruntime" in requirement_names(cpu)
    assert requirement_names(cpu) - {"onnxruntime"} == requirement_names(gpu) - {"onnxruntime-gpu", "onnxruntime"}


def test_front_matter_names_an_app_file_that_exists():
    fields = dict(line.split(": ", 1) for line in FRONT_MATTER.strip().strip("-").strip().splitlines())
    assert fields["sdk"] == "gradio" and (Path(__file__).resolve().parents[2] / fields["app_file"]).is_file()
    readme = Path(__file__).resolve().parents[2] / "README.md"
    if readme.is_file() and readme.read_text().startswith("---\n"):  # the README's own front matter
        head = readme.read_text().split("---\n")[1]
        assert "sdk: gradio" in head and "app_file: demo/app.py" in head


def fresh_python(root: Path) -> Path:
    """A venv that sees this environment's packages but not the editable project install:
    a .pth line adds our site-packages, and .pth files in a directory added that way are
    not run, so the project's editable finder is absent, as on a Space."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    target = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    Path(target, "parent-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def closure(names: set[str]) -> set[str]:
    """The distributions ``names`` pull in, following installed metadata."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def imported_top_level(importtime_log: str) -> set[str]:
    """Top-level module names from ``python -X importtime``'s log (lazy imports included)."""
    names = set()
    for line in importtime_log.splitlines():
        if m := re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", line):
            names.add(m.group(1).split(".")[0])
    return names


@pytest.mark.slow
def test_space_folder_boots_like_a_space_and_covers_its_imports(tmp_path, tiny_onnx, tiny_checkpoint, photos, free_port):
    from gradio_client import Client, handle_file

    space = write_space(tmp_path / "space", model=tiny_onnx, checkpoint=tiny_checkpoint, gpu=True)
    assert (space / "models" / "catsdogs.onnx").is_file() and (space / "demo" / "examples").is_dir()
    assert (space / "README.md").read_text().startswith("---\n")
    python = fresh_python(tmp_path / "venv")
    log = tmp_path / "importtime.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(free_port), GRADIO_ANALYTICS_ENABLED="False")
    # What a Space runs, from the Space's root; only the step counts are cut for speed.
    cmd = [str(python), "-X", "importtime", "demo/app.py", "--fool-steps", "20", "--ideal-steps", "4"]
    with open(log, "w") as err:
        server = subprocess.Popen(cmd, cwd=space, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            client = None
            deadline = time.monotonic() + 180
            while client is None:
                assert server.poll() is None, f"the Space exited with {server.returncode}: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "the Space did not come up in 180 s"
                try:
                    client = Client(f"http://127.0.0.1:{free_port}/", verbose=False)
                except Exception:
                    time.sleep(1)
            assert client.predict(handle_file(str(photos["cat"])), api_name="/classify")["label"] == "cat"
            _, _, after, _, _ = client.predict(handle_file(str(photos["dog"])), "cat", 4, False, api_name="/fool_me")
            assert after["label"] == "cat"
            image, _, _ = client.predict("dog", 0, api_name="/ideal")
            assert Path(image).is_file()
            overlay, *_ = client.predict(handle_file(str(photos["cat"])), None, api_name="/explain")
            assert Path(overlay).is_file()
        finally:
            server.terminate()
            server.wait(timeout=30)

    imported = imported_top_level(log.read_text())
    assert {"torch", "onnxruntime", "gradio", "demo", "service", "training", "export"} <= imported
    providers = metadata.packages_distributions()
    needed = {dist.lower().replace("_", "-") for name in imported - OUR_PACKAGES for dist in providers.get(name, [])}
    covered = closure(requirement_names((space / "requirements.txt").read_text().splitlines()) | {"gradio"})
    assert needed <= covered, f"imported but not in requirements.txt (or gradio's): {sorted(needed - covered)}"
