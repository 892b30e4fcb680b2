"""tools.workflow_convert: UI-format workflows -> API prompts, the way the front end's graphToPrompt does it.

The first group needs no server (hand-written node definitions); the rest use the real server's
/object_info and hand-made UI workflows of core nodes only.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from tools.comfy_server import ComfyError
from tools.workflow_convert import (
    input_specs,
    is_ui_workflow,
    is_valid_connection,
    process_dynamic_prompt,
    ui_to_api,
    widget_layout,
    widget_values,
)

WORKFLOWS = Path(__file__).resolve().parent / "workflows"


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def names(node_def: dict) -> list:
    return [slot.name for slot in widget_layout(node_def)]


def strip_meta(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def node(workflow: dict, node_id: int) -> dict:
    return next(n for n in workflow["nodes"] if n["id"] == node_id)


def add_link(workflow: dict, origin: int, origin_slot: int, target: int, target_slot: int, type_: str) -> int:
    link_id = max(link[0] for link in workflow["links"]) + 1
    workflow["links"].append([link_id, origin, origin_slot, target, target_slot, type_])
    return link_id


def retarget(workflow: dict, link_id: int, origin: int, origin_slot: int) -> None:
    link = next(link for link in workflow["links"] if link[0] == link_id)
    link[1], link[2] = origin, origin_slot


# ------------------------------------------------------------------------------------------------------
# without a server

SEEDED = {
    "input": {
        "required": {
            "model": ["MODEL"],
            "seed": ["INT", {"default": 0}],  # no flag: the front end still adds a control (named seed)
            "steps": ["INT", {"default": 20}],
            "mode": [["a", "b"], {"control_after_generate": True}],
            "count": ["INT", {"forceInput": True}],
        },
        "optional": {"noise_seed": ["INT", {"control_after_generate": False}], "note": ["STRING", {}]},
    },
    "input_order": {"required": ["model", "seed", "steps", "mode", "count"], "optional": ["noise_seed", "note"]},
    "output": ["LATENT"],
}


def test_widget_layout_companion_widgets():
    # seed -> control; COMBO with control -> control + filter list; noise_seed with False -> none
    assert names(SEEDED) == ["seed", None, "steps", "mode", None, None, "noise_seed", "note"]


def test_input_order_and_upload_widget():
    node_def = {
        "input": {"required": {"image": [["a.png"], {"image_upload": True}], "x": ["INT", {}]},
                  "optional": {"y": ["FLOAT", {}]}},
        "input_order": {"required": ["x", "image"], "optional": ["y"]},
    }
    assert [s.name for s in input_specs(node_def)] == ["x", "image", "y", "upload"]
    assert names(node_def) == ["x", "image", "y", None]  # the upload button is saved, never sent


def test_widget_values_positional_and_dict_forms():
    node = {"widgets_values": [7, "randomize", 30, "b", "fixed", "", 3, "hello"]}
    assert widget_values(node, SEEDED) == {"seed": 7, "steps": 30, "mode": "b", "noise_seed": 3, "note": "hello"}
    node = {"widgets_values": {"seed": 1, "note": "x", "control_after_generate": "fixed"}}
    assert widget_values(node, SEEDED) == {"seed": 1, "note": "x"}


def test_old_files_with_force_input_values_are_migrated():
    node_def = {"input": {"required": {"a": ["INT", {}], "b": ["FLOAT", {"forceInput": True}], "c": ["STRING", {}]}},
                "input_order": {"required": ["a", "b", "c"]}}
    assert widget_values({"widgets_values": [1, 2.5, "z"]}, node_def) == {"a": 1, "c": "z"}
    assert widget_values({"widgets_values": [1, "z"]}, node_def) == {"a": 1, "c": "z"}


def test_dynamic_prompts_like_the_front_end():
    rng = random.Random(0)
    assert process_dynamic_prompt("a cat // comment", rng) == "a cat "
    assert process_dynamic_prompt("a /* x */cat", rng) == "a cat"
    assert process_dynamic_prompt("{red|red} {b{x|x}|b{x|x}}", rng) == "red bx"
    assert process_dynamic_prompt(r"\{literal\|braces\}", rng) == "{literal|braces}"
    picks = {process_dynamic_prompt("{a|b|c}", random.Random(s)) for s in range(40)}
    assert picks == {"a", "b", "c"}


def test_is_valid_connection():
    assert is_valid_connection("MODEL", "model")
    assert is_valid_connection("*", "VAE") and is_valid_connection("", "VAE") and is_valid_connection(None, "VAE")
    assert is_valid_connection("IMAGE,MASK", "MASK")
    assert not is_valid_connection("MODEL", "CLIP")


def test_is_ui_workflow():
    assert is_ui_workflow(load("core_txt2img.json"))
    assert not is_ui_workflow({"3": {"class_type": "KSampler", "inputs": {}}})


# ------------------------------------------------------------------------------------------------------
# against the real server's /object_info

EXPECTED_TXT2IMG = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sae-standin-sd15.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a red cat ", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 42, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sae-smoke", "images": ["8", 0]}},
}


@pytest.mark.server
def test_core_layouts_match_the_front_end(object_info):
    assert names(object_info["KSampler"]) == ["seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"]
    assert names(object_info["KSamplerAdvanced"]) == [
        "add_noise", "noise_seed", None, "steps", "cfg", "sampler_name", "scheduler", "start_at_step",
        "end_at_step", "return_with_leftover_noise"]
    assert names(object_info["SamplerCustom"]) == ["add_noise", "noise_seed", None, "cfg"]
    assert names(object_info["LoadImage"]) == ["image", None]
    assert names(object_info["CheckpointLoaderSimple"]) == ["ckpt_name"]
    assert names(object_info["LoraLoader"]) == ["lora_name", "strength_model", "strength_clip"]


@pytest.mark.server
def test_core_txt2img(object_info):
    """Reroute followed, PrimitiveNode applied, Note dropped, bypassed upscale skipped, muted save dropped."""
    prompt = ui_to_api(load("core_txt2img.json"), object_info)
    assert strip_meta(prompt) == EXPECTED_TXT2IMG
    assert prompt["6"]["_meta"] == {"title": "Positive"}
    assert prompt["8"]["_meta"] == {"title": "VAE Decode"}  # no saved title: the display name


@pytest.mark.server
def test_links_in_object_form(object_info):
    wf = load("core_txt2img.json")
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    wf["links"] = [dict(zip(keys, link)) for link in wf["links"]]
    assert strip_meta(ui_to_api(wf, object_info)) == EXPECTED_TXT2IMG


@pytest.mark.server
def test_primitive_value_wins_over_the_stale_widget_value(object_info):
    wf = load("core_txt2img.json")
    node(wf, 3)["widgets_values"][0] = 0
    node(wf, 12)["widgets_values"][0] = 1234
    assert ui_to_api(wf, object_info)["3"]["inputs"]["seed"] == 1234


@pytest.mark.server
def test_widget_converted_to_socket_takes_the_link(object_info):
    wf = load("core_txt2img.json")
    wf["nodes"].append({"id": 20, "type": "PrimitiveInt", "mode": 0, "inputs": [],
                        "outputs": [{"name": "INT", "type": "INT", "links": []}], "widgets_values": [5, "fixed"]})
    link = add_link(wf, 20, 0, 3, 5, "INT")
    node(wf, 3)["inputs"].append({"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": link})
    prompt = ui_to_api(wf, object_info)
    assert prompt["3"]["inputs"]["steps"] == ["20", 0]
    assert prompt["20"]["inputs"] == {"value": 5}


@pytest.mark.server
def test_bypass_uses_the_same_slot_when_types_match(object_info):
    """A bypassed LoraLoader hands MODEL and CLIP straight through (slot 0 -> 0, slot 1 -> 1)."""
    wf = load("core_txt2img.json")
    wf["nodes"].append({
        "id": 21, "type": "LoraLoader", "mode": 4,
        "inputs": [{"name": "model", "type": "MODEL", "link": None}, {"name": "clip", "type": "CLIP", "link": None}],
        "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}, {"name": "CLIP", "type": "CLIP", "links": [3, 5]}],
        "widgets_values": ["missing.safetensors", 1.0, 1.0]})
    node(wf, 21)["inputs"][0]["link"] = add_link(wf, 4, 0, 21, 0, "MODEL")
    node(wf, 21)["inputs"][1]["link"] = add_link(wf, 4, 1, 21, 1, "CLIP")
    for link_id, slot in ((1, 0), (3, 1), (5, 1)):
        retarget(wf, link_id, 21, slot)
    prompt = ui_to_api(wf, object_info)
    assert "21" not in prompt
    assert strip_meta(prompt) == EXPECTED_TXT2IMG
    node(wf, 21)["mode"] = 0  # not bypassed: the loader is used
    prompt = ui_to_api(wf, object_info)
    assert prompt["3"]["inputs"]["model"] == ["21", 0] and prompt["6"]["inputs"]["clip"] == ["21", 1]
    assert prompt["21"]["inputs"]["lora_name"] == "missing.safetensors"


@pytest.mark.server
def test_bypass_without_a_matching_input_drops_the_link(object_info):
    wf = load("core_txt2img.json")
    node(wf, 8)["mode"] = 4  # VAEDecode has no IMAGE input
    prompt = ui_to_api(wf, object_info)
    assert "8" not in prompt and prompt["9"]["inputs"] == {"filename_prefix": "sae-smoke"}


@pytest.mark.server
def test_muted_nodes_and_their_consumers_inputs_are_dropped(object_info):
    wf = load("core_txt2img.json")
    node(wf, 6)["mode"] = 2
    prompt = ui_to_api(wf, object_info)
    assert "6" not in prompt and "positive" not in prompt["3"]["inputs"]
    assert "14" not in prompt  # the muted SaveImage of the file


@pytest.mark.server
def test_chained_reroutes(object_info):
    wf = load("core_txt2img.json")
    wf["nodes"].append({"id": 22, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": None}],
                        "outputs": [{"name": "", "type": "VAE", "links": [8]}]})
    node(wf, 22)["inputs"][0]["link"] = add_link(wf, 10, 0, 22, 0, "VAE")
    retarget(wf, 8, 22, 0)
    assert strip_meta(ui_to_api(wf, object_info)) == EXPECTED_TXT2IMG


@pytest.mark.server
def test_partial_execution_keeps_only_what_outputs_need(object_info):
    prompt = ui_to_api(load("core_txt2img.json"), object_info, outputs=["3"])
    assert sorted(prompt, key=int) == ["3", "4", "5", "6", "7"]


@pytest.mark.server
def test_unknown_types_and_subgraphs_are_refused(object_info):
    wf = load("core_txt2img.json")
    node(wf, 8)["type"] = "NoSuchNode"
    with pytest.raises(KeyError, match="NoSuchNode"):
        ui_to_api(wf, object_info)
    wf = load("core_txt2img.json")
    node(wf, 8)["type"] = "a1b2c3"
    wf["definitions"] = {"subgraphs": [{"id": "a1b2c3"}]}
    with pytest.raises(NotImplementedError, match="subgraph"):
        ui_to_api(wf, object_info)


@pytest.mark.server
def test_the_server_validates_converted_prompts(comfy_server, object_info):
    """A converted prompt with a bad value is refused by the server's own validation, with node errors."""
    wf = load("core_txt2img.json")
    node(wf, 4)["widgets_values"] = ["no-such-checkpoint.safetensors"]
    node(wf, 5)["widgets_values"] = [64, 64, 0]  # batch_size below its minimum
    with pytest.raises(ComfyError) as err:
        comfy_server.queue(ui_to_api(wf, object_info))
    node_errors = err.value.body["node_errors"]
    assert set(node_errors) >= {"4", "5"}
    assert "no-such-checkpoint" in str(err.value)


@pytest.mark.server
def test_conversion_does_not_modify_its_input(object_info):
    wf = load("core_txt2img.json")
    node(wf, 3)["widgets_values"][0] = 0  # the primitive writes 42 into the prompt, not into the file
    before = copy.deepcopy(wf)
    ui_to_api(wf, object_info)
    assert wf == before


EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "example_workflows").glob("*.json"))


@pytest.mark.server
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_workflow_converts_to_an_api_prompt(object_info, path):
    """Each example workflow (the Flux ones too, which are never run here: they need Flux weights) converts
    to an API prompt: one entry per backend node (Notes dropped), every required input of each class
    present, every link pointing at a node of the prompt and an output slot its class has, and the
    loaders' file names as the workflow stores them."""
    wf = json.loads(path.read_text())
    prompt = ui_to_api(wf, object_info)
    backend = [n for n in wf["nodes"] if n["type"] in object_info]
    assert sorted(prompt, key=int) == sorted((str(n["id"]) for n in backend), key=int)
    assert {n["type"] for n in wf["nodes"]} - set(object_info) <= {"Note", "MarkdownNote"}
    for node_id, entry in prompt.items():
        info = object_info[entry["class_type"]]
        missing = set(info["input"].get("required", {})) - set(entry["inputs"])
        assert not missing, (node_id, entry["class_type"], missing)
        for value in entry["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                src = prompt[str(value[0])]
                assert value[1] < len(object_info[src["class_type"]]["output"]), (node_id, value)
    required = (wf.get("extra", {}).get("sae_requires") or {}).get("models", {})
    stored = {v for e in prompt.values() for v in e["inputs"].values() if isinstance(v, str)}
    assert {name for names in required.values() for name in names} <= stored
