"""UI-format workflow JSON (what the front end saves) -> API-format prompt (what POST /prompt takes).

A port of the front end's graphToPrompt (ComfyUI_frontend src/utils/executionUtil.ts with litegraph's
ExecutableNodeDTO, as shipped in comfyui-frontend-package 1.32.x), driven by the server's /object_info:

- widgets_values map positionally onto the widgets the front end builds from a node definition: inputs in
  `input_order` (required, then optional, then the rest), widget types only (INT FLOAT BOOLEAN STRING COMBO
  ...), forceInput inputs excluded. Hidden companion widgets take a slot too: an INT with
  control_after_generate (or, when unspecified, named seed/noise_seed) is followed by its "control after
  generate" value; a COMBO with control_after_generate by that and a filter list; a media-upload COMBO
  (image_upload / video_upload / animated_image_upload) adds an upload button after all inputs (its value
  is saved, never sent).
  Old files that stored values for forceInput inputs are migrated as the front end does.
- a linked input (socket, or widget converted to a socket) takes its value from the link; links are
  followed through bypassed nodes (mode 4: first input of a compatible type, same slot preferred) and
  through Reroute nodes. Muted nodes (mode 2) are dropped, and so are inputs fed by them.
- virtual nodes (Reroute, PrimitiveNode, Note, MarkdownNote) are not emitted; a PrimitiveNode first writes
  its value into the widgets it feeds (applyToGraph).
- STRING widgets with dynamicPrompts get the front end's processing: comments stripped, {a|b} choices
  resolved (with a seeded random.Random, so conversions are reproducible). List values are wrapped as
  {"__value__": [...]} like the front end does.

Not supported (raise NotImplementedError): subgraphs and legacy group nodes, and widgets that front-end
extensions add for custom widget types.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

MODE_NEVER = 2  # muted
MODE_BYPASS = 4
VIRTUAL_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
# Input types the front end renders as widgets (ComfyWidgets in 1.32); anything else is a socket.
WIDGET_TYPES = frozenset({"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "COLOR", "TEXTAREA",
                          "IMAGECOMPARE", "CHART", "GALLERIA", "IMAGEUPLOAD"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # "COMBO" for option lists
    options: dict
    optional: bool

    @property
    def is_widget(self) -> bool:
        return (self.options.get("widgetType") or self.type) in WIDGET_TYPES and not self.options.get("forceInput")


@dataclass(frozen=True)
class WidgetSlot:
    """One entry of widgets_values: `name` is the API input it feeds, or None for companion widgets that
    are never sent (control_after_generate, control_filter_list)."""
    name: str | None
    spec: InputSpec | None


# ------------------------------------------------------------------------------------------------------
# node definitions (/object_info entries)

def input_specs(node_def: dict) -> list[InputSpec]:
    """The inputs in the order the front end builds them (getOrderedInputSpecs), with the upload widget the
    Comfy.UploadImage extension appends."""
    raw = node_def.get("input", {})
    specs: dict[str, InputSpec] = {}
    for group, optional in (("required", False), ("optional", True)):
        for name, value in (raw.get(group) or {}).items():
            if not isinstance(value, (list, tuple)) or not value:
                continue
            kind = value[0]
            options = dict(value[1]) if len(value) > 1 and isinstance(value[1], dict) else {}
            if isinstance(kind, (list, tuple)):
                options.setdefault("options", list(kind))
                kind = "COMBO"
            specs[name] = InputSpec(name, str(kind), options, optional)
        if group == "required":
            # Comfy.UploadImage: the first media-upload combo among the required inputs gets an upload widget
            for spec in list(specs.values()):
                if spec.type == "COMBO" and any(spec.options.get(f) is True for f in UPLOAD_FLAGS):
                    specs["upload"] = InputSpec("upload", "IMAGEUPLOAD", {**spec.options, "imageInputName": spec.name},
                                                False)
                    break
    order = node_def.get("input_order")
    if not order:
        return list(specs.values())
    ordered = [specs[n] for n in order.get("required", []) if n in specs and not specs[n].optional]
    ordered += [specs[n] for n in order.get("optional", []) if n in specs and specs[n].optional]
    seen = {s.name for s in ordered}
    return ordered + [s for s in specs.values() if s.name not in seen]


def _has_control(spec: InputSpec) -> bool:
    flag = spec.options.get("control_after_generate")
    if spec.type == "INT":
        return bool(flag) if flag is not None else spec.name in ("seed", "noise_seed")
    return spec.type == "COMBO" and bool(flag)


def widget_layout(node_def: dict) -> list[WidgetSlot]:
    """What each position of a node's widgets_values holds."""
    slots = []
    for spec in input_specs(node_def):
        if not spec.is_widget:
            continue
        if spec.type == "IMAGEUPLOAD":  # the upload button: a value in the file, never in the prompt
            slots.append(WidgetSlot(None, spec))
            continue
        slots.append(WidgetSlot(spec.name, spec))
        if _has_control(spec):
            slots.append(WidgetSlot(None, spec))  # control_after_generate
            if spec.type == "COMBO":
                slots.append(WidgetSlot(None, spec))  # control_filter_list
    return slots


def _migrate_widgets_values(node_def: dict, layout: list[WidgetSlot], values: list) -> list:
    """The front end's migrateWidgetsValues: files from before forceInput existed hold values for them."""
    names = {s.name for s in layout if s.name}
    raw = []
    for group in ("required", "optional"):
        raw += [InputSpec(n, "", dict(v[1]) if len(v) > 1 and isinstance(v[1], dict) else {}, group == "optional")
                for n, v in (node_def.get("input", {}).get(group) or {}).items() if isinstance(v, (list, tuple))]
    kept = [s for s in raw if s.name in names or s.options.get("forceInput")]
    if not any(s.options.get("forceInput") for s in kept):
        return values
    width = sum(2 if (s.options.get("control_after_generate") or s.name in ("seed", "noise_seed")) else 1
                for s in kept)
    if width != len(values):
        return values
    return [v for s, v in zip(kept, values) if not s.options.get("forceInput")]


def widget_values(node: dict, node_def: dict) -> dict:
    """{input name: value} for a UI node's widgets (before links and front-end serialisation)."""
    layout = widget_layout(node_def)
    values = node.get("widgets_values")
    if values is None:
        return {}
    if isinstance(values, dict):  # some packs save widgets_values keyed by widget name
        return {s.name: values[s.name] for s in layout if s.name and s.name in values}
    values = _migrate_widgets_values(node_def, layout, list(values))
    return {slot.name: value for slot, value in zip(layout, values) if slot.name is not None}


# ------------------------------------------------------------------------------------------------------
# front-end serialisation helpers

def process_dynamic_prompt(text: str, rng: random.Random) -> str:
    """The front end's processDynamicPrompt: strip /* */ and // comments, resolve {a|b|c} choices."""
    text = re.sub(r"/\*[\s\S]*?\*/|//.*", "", text)
    pos = 0

    def escape() -> str:
        nonlocal pos
        ch = "\\" + (text[pos] if pos < len(text) else "undefined")
        pos += 1
        return ch

    def choice_block() -> str:
        nonlocal pos
        options, current, depth = [], "", 0
        while pos < len(text):
            ch = text[pos]
            pos += 1
            if ch == "\\":
                current += escape()
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                if not depth:
                    break
                depth -= 1
            elif ch == "|" and not depth:
                options.append(current)
                current = ""
                continue
            current += ch
        options.append(current)
        return process_dynamic_prompt(options[int(rng.random() * len(options))], rng)

    out = ""
    while pos < len(text):
        ch = text[pos]
        pos += 1
        out += escape() if ch == "\\" else choice_block() if ch == "{" else ch
    return re.sub(r"\\([{}|])", r"\1", out)


def is_valid_connection(a, b) -> bool:
    """LiteGraph.isValidConnection: wildcards, case-insensitive equality, comma-separated type lists."""
    a = 0 if a in ("", "*") else a
    b = 0 if b in ("", "*") else b
    if not a or not b or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(x == y for x in a.split(",") for y in b.split(","))


# ------------------------------------------------------------------------------------------------------
# the graph

class _Graph:
    def __init__(self, workflow: dict, object_info: dict, virtual_types):
        self.object_info = object_info
        self.virtual_types = frozenset(virtual_types)
        self.nodes = {str(n["id"]): n for n in workflow.get("nodes", [])}
        self.links = {}
        for link in workflow.get("links") or []:
            if isinstance(link, dict):
                lid, o, os_, t, ts, ty = (link["id"], link["origin_id"], link["origin_slot"], link["target_id"],
                                         link["target_slot"], link.get("type"))
            else:
                lid, o, os_, t, ts, ty = link[:6]
            self.links[lid] = (str(o), int(os_), str(t), int(ts), ty)
        subgraphs = {s.get("id") for s in (workflow.get("definitions") or {}).get("subgraphs", [])}
        group_nodes = set(((workflow.get("extra") or {}).get("groupNodes") or {}).keys())
        missing = set()
        for node in self.nodes.values():
            kind = node.get("type")
            if kind in subgraphs:
                raise NotImplementedError(f"node {node['id']} is a subgraph ({kind}): unpack it in the UI first")
            if kind.startswith(("workflow>", "workflow/")) or kind in group_nodes:
                raise NotImplementedError(f"node {node['id']} is a legacy group node ({kind}): convert it first")
            if kind not in self.virtual_types and kind not in object_info:
                missing.add(kind)
        if missing:
            raise KeyError(f"node types unknown to the server: {sorted(missing)}")

    def is_virtual(self, node: dict) -> bool:
        return node["type"] in self.virtual_types

    def live_inputs(self, node: dict) -> list[dict]:
        """The node's input slots as the live graph holds them after loading (the saved file keeps only the
        linked widget sockets): sockets in definition order, then one socket per widget, then extras."""
        saved = {i.get("name"): i for i in node.get("inputs") or []}
        if self.is_virtual(node):
            return list(node.get("inputs") or [])
        specs = input_specs(self.object_info[node["type"]])
        ordered = [s for s in specs if not s.is_widget] + [s for s in specs if s.is_widget]
        slots = [{"type": s.type, **saved.get(s.name, {}), "name": s.name} for s in ordered]
        names = {s.name for s in ordered}
        return slots + [i for i in node.get("inputs") or [] if i.get("name") not in names]

    def output_type(self, node: dict, slot: int):
        outs = node.get("outputs") or []
        if slot < len(outs) and outs[slot].get("type") is not None:
            return outs[slot]["type"]
        types = self.object_info.get(node["type"], {}).get("output", [])
        return types[slot] if slot < len(types) else "*"

    def resolve_input(self, node: dict, inputs: list[dict], slot: int, visited: set, type_=None):
        key = f"{node['id']}[I]{slot}"
        if key in visited:
            raise RecursionError(f"circular link while resolving input {slot} of node {node['id']}")
        visited.add(key)
        if slot >= len(inputs):
            raise IndexError(f"node {node['id']} has no input slot {slot}")
        link_id = inputs[slot].get("link")
        if link_id is None:
            return None
        if link_id not in self.links:
            raise ValueError(f"node {node['id']} input {inputs[slot].get('name')!r}: link {link_id} not found")
        origin_id, origin_slot = self.links[link_id][:2]
        if origin_id not in self.nodes:
            raise ValueError(f"link {link_id} comes from missing node {origin_id}")
        return self.resolve_output(self.nodes[origin_id], origin_slot,
                                   type_ if type_ is not None else inputs[slot].get("type"), visited)

    def resolve_output(self, node: dict, slot: int, type_, visited: set):
        key = f"{node['id']}[O]{slot}"
        if key in visited:
            raise RecursionError(f"circular link while resolving output {slot} of node {node['id']}")
        visited.add(key)
        if node.get("mode") == MODE_BYPASS:
            inputs = self.live_inputs(node)
            index = self._bypass_slot(inputs, self.output_type(node, slot), slot, type_)
            return None if index < 0 else self.resolve_input(node, inputs, index, visited)
        if self.is_virtual(node):
            inputs = list(node.get("inputs") or [])
            if slot < len(inputs):
                return self.resolve_input(node, inputs, slot, visited, type_)
            return None  # e.g. PrimitiveNode: its value was written into the target widget
        return str(node["id"]), slot

    @staticmethod
    def _bypass_slot(inputs: list[dict], output_type, slot: int, type_) -> int:
        if type_ in ("*", ""):
            return slot if len(inputs) > slot else 0
        if slot < len(inputs):
            t = inputs[slot].get("type")
            if is_valid_connection(t, output_type) and is_valid_connection(t, type_):
                return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == type_:
                return i
        for i, inp in enumerate(inputs):
            if is_valid_connection(inp.get("type"), output_type) and is_valid_connection(inp.get("type"), type_):
                return i
        return -1

    def apply_primitives(self, values: dict[str, dict]) -> None:
        """PrimitiveNode.applyToGraph: its first widget value goes into every widget it feeds."""
        for node in self.nodes.values():
            if node["type"] != "PrimitiveNode" or not node.get("widgets_values"):
                continue
            value = node["widgets_values"][0]
            for out in node.get("outputs") or []:
                for link_id in out.get("links") or []:
                    if link_id not in self.links:
                        continue
                    _, _, target_id, target_slot, _ = self.links[link_id]
                    target = self.nodes.get(target_id)
                    if target is None or target_id not in values:
                        continue
                    saved = target.get("inputs") or []
                    inp = saved[target_slot] if target_slot < len(saved) else None
                    widget = (inp or {}).get("widget", {}).get("name")
                    if widget and widget in values[target_id]:
                        values[target_id][widget] = value


def ui_to_api(workflow: dict, object_info: dict, *, seed: int = 0, outputs=None,
              virtual_types=VIRTUAL_TYPES) -> dict:
    """Convert a UI-format workflow into an API-format prompt using the server's /object_info.

    seed: seeds the random choices of dynamic prompts ({a|b}); outputs: node ids to keep (with everything
    they depend on), like the front end's partial execution; default all.
    """
    graph = _Graph(workflow, object_info, virtual_types)
    rng = random.Random(seed)

    values: dict[str, dict] = {}
    for node_id, node in graph.nodes.items():
        if not graph.is_virtual(node):
            values[node_id] = widget_values(node, object_info[node["type"]])
    graph.apply_primitives(values)

    prompt: dict[str, dict] = {}
    for node_id, node in graph.nodes.items():
        if graph.is_virtual(node) or node.get("mode") in (MODE_NEVER, MODE_BYPASS):
            continue
        node_def = object_info[node["type"]]
        dynamic = {s.name for s in input_specs(node_def) if s.type == "STRING" and s.options.get("dynamicPrompts")}
        inputs = {}
        for name, value in values[node_id].items():
            if name in dynamic and isinstance(value, str):
                value = process_dynamic_prompt(value, rng)
            inputs[name] = {"__value__": value} if isinstance(value, list) else value
        live = graph.live_inputs(node)
        for i, inp in enumerate(live):
            resolved = graph.resolve_input(node, live, i, set())
            if resolved is not None:
                inputs[inp["name"]] = [resolved[0], resolved[1]]
        prompt[node_id] = {"inputs": inputs, "class_type": node["type"],
                           "_meta": {"title": node.get("title") or node_def.get("display_name") or node["type"]}}

    for entry in prompt.values():  # inputs fed by dropped (muted) nodes
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and value[0] not in prompt:
                del entry["inputs"][name]

    if outputs:
        kept: dict[str, dict] = {}
        stack = [str(o) for o in outputs]
        while stack:
            nid = stack.pop()
            if nid in kept or nid not in prompt:
                continue
            kept[nid] = prompt[nid]
            stack += [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
        prompt = {k: v for k, v in prompt.items() if k in kept}
    return prompt


def is_ui_workflow(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def load_api_prompt(path, object_info: dict, **kwargs) -> dict:
    """Read a workflow file in either format and return the API prompt."""
    data = json.loads(Path(path).read_text())
    return ui_to_api(data, object_info, **kwargs) if is_ui_workflow(data) else data


def main(argv: list[str] | None = None) -> int:
    """Print the API prompt of a UI workflow; node definitions come from a running server or a JSON file."""
    import argparse
    import sys
    import urllib.request

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("workflow", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8188")
    source.add_argument("--object-info", type=Path, help="a saved /object_info response")
    parser.add_argument("--seed", type=int, default=0, help="for dynamic-prompt choices")
    args = parser.parse_args(argv)
    if args.url:
        with urllib.request.urlopen(args.url.rstrip("/") + "/object_info", timeout=60) as resp:
            object_info = json.loads(resp.read())
    else:
        object_info = json.loads(args.object_info.read_text())
    prompt = load_api_prompt(args.workflow, object_info, seed=args.seed)
    json.dump(prompt, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
