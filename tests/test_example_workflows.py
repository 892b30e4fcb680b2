"""Every example workflow runs unchanged through a real ComfyUI server on the embedded shapes-world demo
model it loads (UI format converted the way the front end does, POST /prompt, /history) and makes the
images it promises: the count and size stored in the file's extra.sae_expected.

The Flux-style workflows and the SD1.5 / SDXL twins (extra.sae_requires: weights no test machine has) are not
run here;
they are converted to API format in tests/test_workflow_convert.py and loaded in tests/test_browser.py."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tools.example_requirements import requires_weights
from tools.workflow_convert import ui_to_api

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
# Front-end-only node types (no backend class; the conversion drops them, as the front end does).
FRONT_END_ONLY = {"Note", "MarkdownNote"}


def _runnable(path):
    reason = requires_weights(json.loads(path.read_text()))
    marks = [pytest.mark.skip(reason=f"{path.stem} {reason}: converted in test_workflow_convert, loaded in "
                                     "test_browser")] if reason else []
    return pytest.param(path, marks=marks, id=path.stem)


DEMO = ("direction_explorer", "direction_with_swap", "prompt_edit_swap", "real_image_edit", "single_direction_edit")
TWINS = {"_sd15": (512, 30, "v1-5-pruned-emaonly.safetensors"), "_sdxl": (1024, 30, "sd_xl_base_1.0.safetensors")}


def test_there_are_eighteen_example_workflows_using_only_core_and_our_nodes(object_info):
    """Five on the demo model, their SD1.5 and SDXL twins (ten) and three for Flux.1; the thirteen that
    need other weights say why."""
    assert sorted(p.stem for p in WORKFLOWS) == sorted(
        [*DEMO, *(f"{d}{t}" for d in DEMO for t in TWINS), "flux_direction_edit", "flux_prompt_edit_swap",
         "flux_real_image_edit"])
    assert sum(requires_weights(json.loads(p.read_text())) is not None for p in WORKFLOWS) == 13
    for path in WORKFLOWS:
        wf = json.loads(path.read_text())
        for node in wf["nodes"]:
            assert node["type"] in object_info or node["type"] in FRONT_END_ONLY, \
                f"{path.name}: unknown node {node['type']}"


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("path", [_runnable(p) for p in WORKFLOWS])
def test_example_workflow_runs_through_a_real_server(comfy_server, object_info, path):
    shutil.copy(REPO / "tools" / "assets" / "sae_example.png", comfy_server.tmp / "base" / "input" / "sae_example.png")
    workflow = json.loads(path.read_text())
    expected = workflow["extra"]["sae_expected"]
    entry = comfy_server.run(ui_to_api(workflow, object_info), timeout=900)
    files = comfy_server.output_files(entry)
    assert len(files) == expected["images"]
    for f in files:
        with Image.open(f) as im:
            assert list(im.size) == expected["size"], f


def _widgets(wf, node_type):
    return [n["widgets_values"] for n in wf["nodes"] if n["type"] == node_type]


@pytest.mark.parametrize("twin", TWINS)
def test_twins_are_the_demo_graphs_at_the_models_native_size_and_steps(twin):
    """Each demo workflow's SD1.5 / SDXL twin has the same nodes (the demo loader replaced by Load
    Checkpoint of the twin's file, plus a Note, and an ImageScale of the 64 px example picture in the
    real-image edit), every empty latent at the model's size, every sampler at its step count, and
    extra.sae_requires naming the checkpoint; the image count matches the demo's."""
    size, steps, checkpoint = TWINS[twin]
    for name in DEMO:
        demo = json.loads((REPO / "example_workflows" / f"{name}.json").read_text())
        wf = json.loads((REPO / "example_workflows" / f"{name}{twin}.json").read_text())
        types = sorted(n["type"] for n in wf["nodes"] if n["type"] not in ("Note", "ImageScale"))
        want = sorted("CheckpointLoaderSimple" if n["type"] == "SAEdit_LoadShapesDemoModel" else n["type"]
                      for n in demo["nodes"])
        assert types == want, name
        assert _widgets(wf, "CheckpointLoaderSimple") == [[checkpoint]]
        assert wf["extra"]["sae_requires"]["models"] == {"checkpoints": [checkpoint]}
        assert all(w[:2] == [size, size] for w in _widgets(wf, "EmptyLatentImage")), name
        samplers = _widgets(wf, "KSampler") + _widgets(wf, "KSamplerAdvanced")
        assert samplers and all(steps in w for w in samplers), name
        assert wf["extra"]["sae_expected"]["images"] == demo["extra"]["sae_expected"]["images"]
        if name == "real_image_edit":
            assert [w[1:3] for w in _widgets(wf, "ImageScale")] == [[size, size]]


def test_thumbnails_are_small_jpegs_beside_their_workflows():
    """example_workflows/<name>.jpg (tools/make_thumbnails.py) belongs to a workflow, is a 256 px JPEG and
    stays under 50 kB, so the repository and the template browser stay light."""
    thumbs = sorted((REPO / "example_workflows").glob("*.jpg"))
    assert [t.stem for t in thumbs] == [w.stem for w in WORKFLOWS]
    for t in thumbs:
        assert t.stat().st_size < 50_000, t.name
        with Image.open(t) as im:
            assert im.format == "JPEG" and im.size == (256, 256), t.name


@pytest.mark.server
def test_template_browser_lists_every_workflow_with_its_thumbnail(comfy_server):
    """GET /api/workflow_templates (what the template browser reads) lists our eighteen workflows under the
    pack, and each one's .json and .jpg are served where the front end fetches them."""
    from conftest_server import PACK_NAME

    listed = comfy_server.get("/api/workflow_templates").get(PACK_NAME)
    assert sorted(listed) == [w.stem for w in WORKFLOWS]
    for name in listed:
        wf = json.loads(comfy_server.get_bytes(f"/api/workflow_templates/{PACK_NAME}/{name}.json"))
        assert wf["nodes"]
        jpg = comfy_server.get_bytes(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")
        assert jpg[:3] == b"\xff\xd8\xff", name  # JPEG signature
