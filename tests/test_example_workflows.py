"""Every example workflow runs unchanged through a real ComfyUI server on the stand-in SD1.5 checkpoint
(UI format converted the way the front end does, POST /prompt, /history) and makes the images it
promises: the count and size stored in the file's extra.sae_expected."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tools.workflow_convert import ui_to_api

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))


def test_there_are_five_example_workflows_using_only_core_and_our_nodes(object_info):
    assert len(WORKFLOWS) == 5
    for path in WORKFLOWS:
        wf = json.loads(path.read_text())
        for node in wf["nodes"]:
            assert node["type"] in object_info, f"{path.name}: unknown node {node['type']}"


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
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
