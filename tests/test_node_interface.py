"""Released node interfaces stay loadable: every node's id, display name, inputs (names, types, order,
required/optional, combo options, numeric ranges) and outputs, as ComfyUI itself reports them
(GET_NODE_INFO_V1, what /object_info serves), compared with tests/node_interface_snapshot.json.

Why: saved workflows store widget values by position (`widgets_values`) and links by slot index, and API
prompts name inputs; renaming, reordering, retyping or removing any of them breaks files users already have.

Compatible changes, which pass test_released_interfaces_are_unchanged:
  - a new node;
  - a new OPTIONAL input appended after the existing optional ones (old files load it with its default);
  - a new output appended after the existing ones (old links keep their slot indices);
  - new combo options, wider numeric ranges (old values stay valid); changed defaults and tooltips.
Everything else is breaking (new required input, rename, reorder, type change, removed combo option,
narrower range, changed display name or node id).
test_snapshot_covers_the_current_interface then fails until the snapshot records the addition, so nothing
new stays unprotected.

Regenerate the snapshot after a deliberate change (review the diff of the JSON before committing):

    SAE_UPDATE_SNAPSHOT=1 scripts/test.sh tests/test_node_interface.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).resolve().parent / "node_interface_snapshot.json"
UPDATE_ENV = "SAE_UPDATE_SNAPSHOT"
REGENERATE = f"{UPDATE_ENV}=1 scripts/test.sh tests/test_node_interface.py"
# Combos whose options are not ours to freeze: a folder listing, and ComfyUI's own scheduler list.
EXTERNAL_OPTIONS = {("SAEdit_LoadDirections", "file"), ("SAEdit_InvertLatent", "scheduler")}


def describe_input(node_id: str, name: str, spec) -> dict:
    """The part of one input spec ([type, {options}]) a saved workflow depends on."""
    io_type, opts = (spec[0], spec[1] if len(spec) > 1 else {}) if isinstance(spec, (list, tuple)) else (spec, {})
    if isinstance(io_type, list):  # V1 style combo: the options list is the type
        io_type, opts = "COMBO", {**opts, "options": io_type}
    out = {"name": name, "type": io_type}
    if io_type == "COMBO":
        out["options"] = None if (node_id, name) in EXTERNAL_OPTIONS else list(opts.get("options", []))
    if io_type in ("INT", "FLOAT"):
        out["min"], out["max"] = opts.get("min"), opts.get("max")
    return out


def describe_node(info: dict) -> dict:
    inputs = info.get("input", {})
    order = info.get("input_order", {})
    section = {kind: [describe_input(info["name"], n, inputs[kind][n]) for n in order.get(kind, [])]
               for kind in ("required", "optional")}
    return {
        "display_name": info["display_name"],
        "required": section["required"],
        "optional": section["optional"],
        "outputs": [{"type": t, "name": n} for t, n in zip(info["output"], info["output_name"])],
    }


@pytest.fixture(scope="module")
def current(pack) -> dict:
    """{node id: interface} for every node ComfyUI registered from this pack."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py (testbed put ComfyUI on sys.path)

    ours = {name: cls for name, cls in comfy_nodes.NODE_CLASS_MAPPINGS.items()
            if cls.__module__.startswith(pack.__name__ + ".")}
    assert ours, "ComfyUI registered no node from the pack"
    return {name: describe_node(cls.GET_NODE_INFO_V1()) for name, cls in sorted(ours.items())}


@pytest.fixture(scope="module")
def snapshot(current) -> dict:
    if os.environ.get(UPDATE_ENV):
        SNAPSHOT.write_text(dump_snapshot(current))
    assert SNAPSHOT.is_file(), f"{SNAPSHOT.name} is missing; create it with {REGENERATE}"
    return json.loads(SNAPSHOT.read_text())


def dump_snapshot(interfaces: dict) -> str:
    """JSON with one input/output per line: a reviewable diff when the snapshot is regenerated."""
    lines = ["{"]
    for n, (node_id, node) in enumerate(interfaces.items()):
        lines.append(f"  {json.dumps(node_id)}: {{")
        lines.append(f"    \"display_name\": {json.dumps(node['display_name'])},")
        for m, kind in enumerate(("required", "optional", "outputs")):
            items = [f"      {json.dumps(x)}" for x in node[kind]]
            close = "]" + ("," if m < 2 else "")
            lines += [f"    \"{kind}\": [" + ("" if items else close)] + (",\n".join(items).split("\n") if items else [])
            if items:
                lines.append("    " + close)
        lines.append("  }" + ("," if n < len(interfaces) - 1 else ""))
    return "\n".join(lines + ["}", ""])


def _same_or_appended(node_id, what, old: list, new: list, problems: list, appended_ok: bool,
                      fields=("name", "type")) -> None:
    """Appends to `problems` every way `new` breaks files made with `old` (position by position)."""
    for i, item in enumerate(old):
        if i >= len(new):
            problems.append(f"{node_id}: {what} {item['name']!r} (position {i}) was removed")
            continue
        cur = new[i]
        if any(cur[f] != item[f] for f in fields):
            problems.append(f"{node_id}: {what} position {i} was {item['name']!r} ({item['type']}), "
                            f"now {cur['name']!r} ({cur['type']})")
            continue
        if item.get("options") is not None:
            lost = [o for o in item["options"] if o not in (cur.get("options") or [])]
            if lost:
                problems.append(f"{node_id}: {what} {item['name']!r} lost combo options {lost} "
                                "(saved workflows using them would no longer validate)")
        if "min" in item:
            if item["min"] is not None and (cur.get("min") is None or cur["min"] > item["min"]) or \
                    item["max"] is not None and (cur.get("max") is None or cur["max"] < item["max"]):
                problems.append(f"{node_id}: {what} {item['name']!r} range narrowed from "
                                f"[{item['min']}, {item['max']}] to [{cur.get('min')}, {cur.get('max')}]")
    if not appended_ok and len(new) > len(old):
        added = [x["name"] for x in new[len(old):]]
        problems.append(f"{node_id}: new {what}s {added}: old workflows and API prompts do not have them")


def breaking_changes(snapshot: dict, current: dict) -> list[str]:
    problems = []
    for node_id, old in snapshot.items():
        new = current.get(node_id)
        if new is None:
            problems.append(f"{node_id}: node removed or renamed (saved workflows refer to it by this id)")
            continue
        if new["display_name"] != old["display_name"]:
            problems.append(f"{node_id}: display name {old['display_name']!r} became {new['display_name']!r}")
        _same_or_appended(node_id, "required input", old["required"], new["required"], problems, appended_ok=False)
        _same_or_appended(node_id, "optional input", old["optional"], new["optional"], problems, appended_ok=True)
        # links refer to outputs by slot index and type; an output's display name is cosmetic
        _same_or_appended(node_id, "output", old["outputs"], new["outputs"], problems, appended_ok=True,
                          fields=("type",))
    return problems


def test_released_interfaces_are_unchanged(current, snapshot):
    """No node of the snapshot was removed, renamed or changed in a way that breaks saved workflows."""
    problems = breaking_changes(snapshot, current)
    assert not problems, ("released node interface changed (saved workflows would break):\n  "
                          + "\n  ".join(problems)
                          + f"\nIf this is deliberate (a breaking release), regenerate: {REGENERATE}")


def test_snapshot_covers_the_current_interface(current, snapshot):
    """Every node, input and output the pack has now is recorded, so additions become protected too."""
    assert current == snapshot, (
        "the node interface has compatible additions the snapshot does not record "
        f"(new nodes, appended optional inputs or outputs, new options); review and regenerate: {REGENERATE}")


def test_describe_input_reads_both_combo_styles():
    """V1 combos (options list as the type) and V3 ones (COMBO + options) are recorded the same way."""
    v1 = describe_input("N", "x", [["a", "b"], {"default": "a"}])
    v3 = describe_input("N", "x", ["COMBO", {"options": ["a", "b"], "multiselect": False}])
    assert v1 == v3 == {"name": "x", "type": "COMBO", "options": ["a", "b"]}


def test_the_checker_tells_breaking_from_compatible_changes():
    """The rules of the module docstring, on a made-up node: appends pass, everything else is reported."""
    def node(required, optional=(), outputs=({"type": "MODEL", "name": "MODEL"},)):
        return {"N": {"display_name": "N", "required": list(required), "optional": list(optional),
                      "outputs": list(outputs)}}

    a = {"name": "a", "type": "INT", "min": 0, "max": 10}
    c = {"name": "c", "type": "COMBO", "options": ["x", "y"]}
    s = {"name": "s", "type": "STRING"}
    old = node([a, c], [s])
    compatible = node([{**a, "min": -5}, {**c, "options": ["x", "y", "z"]}], [s, {"name": "t", "type": "STRING"}],
                      [{"type": "MODEL", "name": "patched"}, {"type": "IMAGE", "name": "IMAGE"}])
    assert breaking_changes(old, compatible) == []
    cases = {
        "reordered": node([c, a], [s]),
        "new required input": node([a, c, s]),
        "lost option": node([a, {**c, "options": ["x"]}], [s]),
        "narrowed": node([{**a, "max": 5}, c], [s]),
        "retyped": node([{**a, "type": "FLOAT"}, c], [s]),
        "optional removed": node([a, c]),
        "output retyped": node([a, c], [s], [{"type": "LATENT", "name": "MODEL"}]),
        "node removed": {},
    }
    for label, new in cases.items():
        assert breaking_changes(old, new), label
