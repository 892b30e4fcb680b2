"""Every node has a help page where ComfyUI's front end looks for custom nodes' docs
(<WEB_DIRECTORY>/docs/<NodeId>.md, served at /extensions/<pack>/docs/<NodeId>.md): titled with the node's
display name, with a table row for each input and output the node really has (as ComfyUI registers it), and
no row for one it does not have."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "js" / "docs"


@pytest.fixture(scope="module")
def node_infos(pack) -> dict:
    import nodes as comfy_nodes  # ComfyUI's nodes.py

    return {name: cls.GET_NODE_INFO_V1() for name, cls in comfy_nodes.NODE_CLASS_MAPPINGS.items()
            if cls.__module__.startswith(pack.__name__ + ".")}


def table_rows(text: str, heading: str) -> list[str]:
    """First cells of the table under '## heading'."""
    section = re.search(rf"^## {heading}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not section:
        return []
    rows = [line.split("|")[1].strip() for line in section.group(1).splitlines() if line.startswith("|")]
    return [r for r in rows[2:]]  # skip the header and the |---| line


def test_every_node_has_a_matching_help_page(node_infos):
    assert node_infos
    problems = []
    for node_id, info in sorted(node_infos.items()):
        page = DOCS / f"{node_id}.md"
        if not page.is_file():
            problems.append(f"{node_id}: no {page.relative_to(DOCS.parent.parent)}")
            continue
        text = page.read_text()
        if text.splitlines()[0] != f"# {info['display_name']}":
            problems.append(f"{node_id}: first line should be '# {info['display_name']}'")
        inputs = [n for kind in ("required", "optional") for n in info["input_order"].get(kind, [])]
        if table_rows(text, "Inputs") != inputs:
            problems.append(f"{node_id}: Inputs table {table_rows(text, 'Inputs')} != node inputs {inputs}")
        outputs = list(info["output_name"])
        if table_rows(text, "Outputs") != outputs:
            problems.append(f"{node_id}: Outputs table {table_rows(text, 'Outputs')} != node outputs {outputs}")
    assert not problems, "\n".join(problems)


def test_no_help_page_for_a_node_that_does_not_exist(node_infos):
    assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(node_infos)
