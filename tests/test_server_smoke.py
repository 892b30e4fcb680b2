"""End to end through a real headless ComfyUI: the pack loads, a core-only UI workflow is converted, queued
and executed with the stand-in SD1.5 checkpoint (64x64, 2 steps), and failures come back as errors."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from tools.comfy_server import ComfyExecutionError, ComfyServer
from tools.workflow_convert import ui_to_api

pytestmark = pytest.mark.server

WORKFLOW = Path(__file__).resolve().parent / "workflows" / "core_txt2img.json"
PACK_MODULE = "custom_nodes.self-attention-edit"


def test_pack_is_loaded(comfy_server):
    mine = [name for name, info in comfy_server.object_info().items() if info.get("python_module") == PACK_MODULE]
    assert mine, "no node of the pack in /object_info"


def test_txt2img_smoke(comfy_server, record_property):
    workflow = json.loads(WORKFLOW.read_text())
    prompt = ui_to_api(workflow, comfy_server.object_info())
    t0 = time.perf_counter()
    entry = comfy_server.run(prompt, timeout=600, workflow=workflow)
    elapsed = time.perf_counter() - t0

    assert entry["status"]["status_str"] == "success"
    assert set(entry["outputs"]) == {"9"}  # the muted SaveImage (14) is not part of the prompt
    images = entry["outputs"]["9"]["images"]
    assert len(images) == 2  # batch_size 2
    files = comfy_server.output_files(entry)
    for item, path in zip(images, files):
        assert item["type"] == "output" and item["filename"].startswith("sae-smoke")
        assert path.is_file() and path.parent == comfy_server.output_dir
        with Image.open(path) as img:
            assert img.size == (64, 64)  # the bypassed 1.5x upscale did not run
            assert img.mode == "RGB"
            text = dict(img.text)
            pixels = img.getextrema()
        assert json.loads(text["prompt"])["3"]["inputs"]["seed"] == 42
        assert json.loads(text["workflow"])["nodes"]  # the UI workflow travels in the PNG
        assert any(lo < hi for lo, hi in pixels), "a flat image"
        with Image.open(io.BytesIO(comfy_server.view(item))) as served:
            assert served.size == (64, 64)
    record_property("server_start_s", round(comfy_server.startup_seconds, 1))
    record_property("prompt_s", round(elapsed, 1))


def test_execution_error_is_raised_with_the_node(comfy_server):
    from conftest_server import BROKEN_CHECKPOINT

    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BROKEN_CHECKPOINT}},
        "2": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(ComfyExecutionError, match=r"node 1 \(CheckpointLoaderSimple\)") as err:
        comfy_server.run(prompt, timeout=120)
    assert err.value.body["status"]["status_str"] == "error"


def test_interrupt(comfy_server):
    """A long sampling run is stopped by interrupt() and reported as interrupted."""
    workflow = json.loads(WORKFLOW.read_text())
    prompt = ui_to_api(workflow, comfy_server.object_info())
    prompt["3"]["inputs"]["steps"] = 1000
    prompt["3"]["inputs"]["seed"] = 7
    prompt_id = comfy_server.queue(prompt)
    deadline = time.monotonic() + 60
    while not any(item[1] == prompt_id for item in comfy_server.get("/queue")["queue_running"]):
        assert time.monotonic() < deadline, "the prompt never started"
        time.sleep(0.2)
    time.sleep(1.0)
    comfy_server.interrupt(prompt_id)
    with pytest.raises(ComfyExecutionError, match="interrupted"):
        comfy_server.wait(prompt_id, timeout=120)


def test_broken_pack_fails_startup_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """A pack that cannot be imported makes start() fail with the log; no process or temp folder remains."""
    import tools.comfy_server as cs

    made = {}
    mkdtemp, popen = cs.tempfile.mkdtemp, cs.subprocess.Popen
    monkeypatch.setattr(cs.tempfile, "mkdtemp", lambda **kw: made.setdefault("tmp", mkdtemp(**kw)))
    monkeypatch.setattr(cs.subprocess, "Popen", lambda *a, **kw: made.setdefault("proc", popen(*a, **kw)))

    pack = tmp_path / "broken-pack"
    pack.mkdir()
    (pack / "__init__.py").write_text("raise ImportError('deliberately broken')\n")
    srv = ComfyServer(custom_node_dirs=[pack], output_dir=tmp_path / "out", log_path=tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="'broken-pack' failed to load") as err:
        srv.start()
    assert "deliberately broken" in str(err.value)  # the log tail comes with the error
    assert made["proc"].returncode is not None  # stopped and reaped
    with pytest.raises(ProcessLookupError):
        os.kill(made["proc"].pid, 0)
    assert not Path(made["tmp"]).exists()
    assert "To see the GUI go to" in (tmp_path / "server.log").read_text()  # it did start, then was stopped
    assert (tmp_path / "out").is_dir()  # a caller's output folder is kept
