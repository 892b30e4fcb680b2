"""The real ComfyUI front end (comfyui-frontend-package, served by a real headless server with this pack)
in headless Chromium, driven by Playwright: our nodes and extension are registered, every example workflow
loads without missing nodes, dialogs, console errors or changed widget values, and one workflow queued from
the front end runs and leaves the eigenvalue spectrum chart drawn on its node (also after a reload).

Needs Debian's chromium (/usr/bin/chromium, or SAE_CHROMIUM=path). Without it the tests skip, except in CI
(env CI set), where they fail: `.ci/run` installs it. Screenshots go to test-artifacts/ in the repo root.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest_server import PACK_NAME

pytestmark = [pytest.mark.browser, pytest.mark.server]

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
ARTIFACTS = REPO / "test-artifacts"
SNAPSHOT = REPO / "tests" / "node_interface_snapshot.json"
EXAMPLE_IMAGE = REPO / "tools" / "assets" / "sae_example.png"
RUN_WORKFLOW = REPO / "example_workflows" / "single_direction_edit.json"
EXTENSION = "self_attention_edit.spectrum"
# Flags for a root user on a machine without a display, GPU or internet (background networking would
# only produce refused connections).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--disable-extensions"]
# Console messages of the stock front end on a fresh user folder that have nothing to do with the pack:
# absent optional user files (user.css, saved workflows: 404), the blocked call to api.comfy.org, and (front
# end 1.49.6) the page's Content Security Policy refusing the model downloads its default workflow
# (Z-Image Turbo, from huggingface.co) looks up: this machine has no network, and the pack connects nowhere.
BENIGN = ("Failed to load resource", "api.comfy.org", "https://huggingface.co/")


def chromium_path() -> str | None:
    path = os.environ.get("SAE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).is_file() else None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        message = "Debian's chromium is not installed (apt-get install chromium, or set SAE_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run should have installed it")
        pytest.skip(message)
    return path


class Page:
    """The ComfyUI page plus the console errors it produced since the last `take_errors()`."""

    def __init__(self, page):
        self.page = page
        self.rendering = "classic"
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def take_errors(self, ignore=BENIGN) -> list[str]:
        errors, self.errors = self.errors, []
        return [e for e in errors if not any(b in e for b in ignore)]


# Node renderings of the front end: the classic LiteGraph canvas, and the Vue node rendering ("Nodes 2.0",
# setting Comfy.VueNodes.Enabled), where every node is a DOM element [data-node-id] and DOM widgets are
# mounted inside it. Both front ends tested (1.32.9 with ComfyUI 0.3.75, 1.49.6 with 0.33) offer both.
RENDERINGS = ("classic", "vue")


@pytest.fixture(scope="module", params=RENDERINGS)
def ui(request, chromium, comfy_server):
    from playwright.sync_api import sync_playwright

    # A first visit opens the template browser over the canvas; this user has "done the tutorial".
    comfy_server.post("/settings", {"Comfy.TutorialCompleted": True,
                                    "Comfy.VueNodes.Enabled": request.param == "vue"})
    # LoadImage's combo must list the real-image example's input, as on a user's machine.
    shutil.copy(EXAMPLE_IMAGE, comfy_server.tmp / "base" / "input" / EXAMPLE_IMAGE.name)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = Page(browser.new_page(viewport={"width": 1400, "height": 900}))
            page.page.goto(comfy_server.url)
            page.page.wait_for_function(
                "() => window.app?.graph && window.app.extensions?.length"
                " && Object.keys(window.LiteGraph?.registered_node_types ?? {}).length > 100",
                timeout=120_000)
            page.rendering = request.param
            assert page.page.evaluate("() => !!LiteGraph.vueNodesMode") == (request.param == "vue")
            yield page
        finally:
            browser.close()


def our_nodes(object_info) -> dict:
    return {k: v for k, v in object_info.items() if v.get("python_module") == f"custom_nodes.{PACK_NAME}"}


def screenshot(page, name: str, tmp_path: Path) -> Path:
    """Saved under pytest's tmp dir and copied to test-artifacts/ (git-ignored) where CI can collect it."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)
    return path


def test_front_end_lists_our_nodes_and_loads_our_extension(ui, object_info):
    """Every node of the pack is registered in LiteGraph under its id with its display name; the spectrum
    extension is registered, and nothing at startup failed in the pack's scripts."""
    mine = our_nodes(object_info)
    assert set(mine) == set(json.loads(SNAPSHOT.read_text()))  # the same nodes the interface snapshot holds
    registered = ui.page.evaluate(
        "(ids) => Object.fromEntries(ids.map(id => [id, LiteGraph.registered_node_types[id]?.title ?? null]))",
        list(mine))
    assert registered == {k: v["display_name"] for k, v in mine.items()}
    assert EXTENSION in ui.page.evaluate("() => app.extensions.map(e => e.name)")
    ours = [e for e in ui.take_errors(ignore=()) if f"/extensions/{PACK_NAME}/" in e]
    assert not ours, ours


def test_help_page_is_served_where_the_front_end_looks(ui, object_info):
    """For a custom node the front end fetches /extensions/<pack>/docs/<NodeId>.md (after a per-locale
    docs/<NodeId>/<locale>.md): every node's page is served from there as markdown with a title."""
    answers = ui.page.evaluate(
        """async ([pack, ids]) => Object.fromEntries(await Promise.all(ids.map(async id => {
               const r = await fetch(`/extensions/${pack}/docs/${id}.md`);
               return [id, r.ok ? (await r.text()).slice(0, 200) : `HTTP ${r.status}`];
           })))""",
        [PACK_NAME, sorted(our_nodes(object_info))])
    bad = {k: v for k, v in answers.items() if not v.startswith("# ")}
    assert not bad, bad


def test_template_browser_shows_our_workflows_with_thumbnails(ui):
    """The front end's own API lists our example workflows as templates of the pack, and each thumbnail,
    fetched from the URL the template browser builds (api.apiURL("/workflow_templates/<pack>/<name>.jpg")),
    decodes in the browser as a 256 px image."""
    result = ui.page.evaluate(
        """async (pack) => {
            const api = window.comfyAPI.api.api;
            const names = (await api.getWorkflowTemplates())[pack] ?? [];
            const sizes = await Promise.all(names.map(name => new Promise(resolve => {
                const img = new Image();
                img.onload = () => resolve([name, Math.max(img.naturalWidth, img.naturalHeight)]);
                img.onerror = () => resolve([name, 0]);
                img.src = api.apiURL(`/workflow_templates/${pack}/${name}.jpg`);
            })));
            return Object.fromEntries(sizes);
        }""", PACK_NAME)
    assert sorted(result) == [p.stem for p in WORKFLOWS]
    assert set(result.values()) == {256}, result


LOAD_AND_CHECK = """async ([name, wf]) => {
    const missing = wf.nodes.map(n => n.type).filter(t => !(t in LiteGraph.registered_node_types));
    await app.loadGraphData(wf, true, false, name);
    const problems = [];
    for (const src of wf.nodes) {
        const node = app.graph.getNodeById(src.id);
        if (!node) { problems.push(`node ${src.id} (${src.type}) not in the graph`); continue; }
        if (node.has_errors) problems.push(`node ${src.id} (${src.type}) has errors`);
        // widget values land positionally: each saved value must come back in the same widget
        const widgets = (node.widgets ?? []).filter(w => w.serialize !== false);
        (src.widgets_values ?? []).forEach((v, i) => {
            const w = widgets[i];
            if (!w) problems.push(`node ${src.id} (${src.type}): no widget for saved value #${i} ${JSON.stringify(v)}`);
            else if (JSON.stringify(w.value) !== JSON.stringify(v))
                problems.push(`node ${src.id} (${src.type}) widget ${w.name}: ${JSON.stringify(w.value)} != saved ${JSON.stringify(v)}`);
        });
        for (const w of widgets) {
            let values = w.options?.values;
            if (typeof values === "function") values = values(w, node);
            if (w.type === "combo" && Array.isArray(values) && !values.includes(w.value))
                problems.push(`node ${src.id} (${src.type}) combo ${w.name}: ${JSON.stringify(w.value)} is not an option`);
        }
    }
    const links = app.graph.links instanceof Map ? app.graph.links.size : Object.keys(app.graph.links).length;
    if (links !== wf.links.length) problems.push(`${links} links, the file has ${wf.links.length}`);
    const dialogs = [...document.querySelectorAll(".p-dialog")].filter(d => d.offsetParent !== null)
        .map(d => d.innerText.slice(0, 300));
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));  // let Vue render
    const domNodes = document.querySelectorAll("[data-node-id]").length;
    return {missing, problems, dialogs, nodes: app.graph.nodes.length, domNodes};
}"""


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_loads_cleanly_in_the_front_end(ui, path):
    """app.loadGraphData (what opening the file does) finds every node type, shows no dialog (missing
    nodes/models), logs no error, and every widget holds the saved value, combos one of their options."""
    ui.take_errors()
    wf = json.loads(path.read_text())
    result = ui.page.evaluate(LOAD_AND_CHECK, [path.name, wf])
    assert result["missing"] == []
    assert result["nodes"] == len(wf["nodes"])
    # Vue rendering draws every node as a DOM element; the classic canvas draws none.
    assert result["domNodes"] == (len(wf["nodes"]) if ui.rendering == "vue" else 0)
    assert result["problems"] == []
    assert result["dialogs"] == []
    assert ui.take_errors() == []


LISTEN = """() => {
    const api = window.comfyAPI.api.api;
    window.__saeEvents = [];
    for (const ev of ["execution_start", "executed", "execution_success", "execution_error", "execution_interrupted"])
        api.addEventListener(ev, e => window.__saeEvents.push([ev, e.detail]));
}"""

CHART_STATE = """(id) => {
    const node = app.graph.getNodeById(id);
    const el = node?.widgets?.find(w => w.name === "sae_spectrum_chart")?.element;
    if (!el) return null;
    const canvas = el.querySelector("canvas");
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let colored = 0;  // pixels of the layer colours (saturated), not the grey background or grid
    for (let i = 0; i < data.length; i += 4) {
        const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
        if (Math.max(r, g, b) - Math.min(r, g, b) > 60) colored++;
    }
    const box = el.getBoundingClientRect();
    return {drawn: el.dataset.saeDrawn, caption: el.innerText, colored, width: canvas.width, height: canvas.height,
            mounted: el.isConnected && box.width > 0 && box.height > 0,
            saved: node.properties.sae_spectrum ? {k: node.properties.sae_spectrum.k,
                                                   layers: node.properties.sae_spectrum.layers.length} : null,
            widgets_values: node.serialize().widgets_values};
}"""


# Self-attention layers of the demo model the example workflows load: 3 input blocks, the middle block and
# 6 output blocks (sae_patches/demo_model.py DEFAULT_ARCHITECTURE).
DEMO_LAYERS = 10


def test_queued_from_the_front_end_it_runs_and_draws_the_spectrum(ui, comfy_server, tmp_path):
    """single_direction_edit with the eigendirections set to all layers of the demo model and a k nobody
    computed before on this server (6 in the classic rendering, 5 in the Vue one, so it really runs), queued
    with app.queuePrompt like the Run button: the prompt succeeds with the promised images, the node shows a
    chart of every layer with that k in colour on its canvas (mounted and visible in the page), the chart is
    no widget value, and it comes back when the saved workflow is loaded again."""
    k = {"classic": 6, "vue": 5}[ui.rendering]
    wf = json.loads(RUN_WORKFLOW.read_text())
    ui.page.evaluate(LOAD_AND_CHECK, [RUN_WORKFLOW.name, wf])
    compute = next(n["id"] for n in wf["nodes"] if n["type"] == "SAEdit_ComputeEigendirections")
    ui.page.evaluate(LISTEN)
    ui.page.evaluate("""([id, k]) => {
        const node = app.graph.getNodeById(id);
        node.widgets.find(w => w.name === "layers").value = "all";
        node.widgets.find(w => w.name === "top_k").value = k;
    }""", [compute, k])
    assert ui.page.evaluate(f"(id) => ({CHART_STATE})(id)", compute) is None  # no chart before any data
    ui.take_errors()
    ui.page.evaluate("() => app.queuePrompt(0, 1)")
    ui.page.wait_for_function(
        "() => window.__saeEvents.some(([ev]) => ['execution_success', 'execution_error', "
        "'execution_interrupted'].includes(ev))", timeout=900_000, polling=500)
    events = ui.page.evaluate("() => window.__saeEvents")
    final = [e for e in events if e[0] != "executed" and e[0] != "execution_start"]
    assert final[-1][0] == "execution_success", final
    prompt_id = final[-1][1]["prompt_id"]
    entry = comfy_server.wait(prompt_id, timeout=60)
    assert len(comfy_server.output_files(entry)) == wf["extra"]["sae_expected"]["images"]
    spectrum = entry["outputs"][str(compute)]["sae_spectrum"][0]
    assert spectrum["k"] == k and len(spectrum["layers"]) == DEMO_LAYERS

    ui.page.evaluate("""(id) => {  // bring the node into view at 100 % for the screenshot
        const node = app.graph.getNodeById(id);
        app.canvas.ds.scale = 1;
        app.canvas.ds.offset = [120 - node.pos[0], 200 - node.pos[1]];
        app.graph.setDirtyCanvas(true, true);
    }""", compute)
    ui.page.wait_for_timeout(500)
    state = ui.page.evaluate(f"(id) => ({CHART_STATE})(id)", compute)
    assert state is not None, "no spectrum chart widget on the node"
    assert state["drawn"] == str(DEMO_LAYERS)
    assert f"{DEMO_LAYERS} layers" in state["caption"] and f"k={k}" in state["caption"]
    assert state["colored"] > 500, state  # lines in the level colours were drawn, not an empty box
    assert state["mounted"], state  # the chart's element is in the page and displayed, in either rendering
    assert state["saved"] == {"k": k, "layers": DEMO_LAYERS}
    assert state["widgets_values"] == ["all", k, ""]  # the chart adds no widget value
    screenshot(ui.page, f"browser-spectrum-{ui.rendering}.png", tmp_path)

    saved = ui.page.evaluate("() => app.graph.serialize()")
    ui.page.evaluate("(wf) => app.loadGraphData(wf, true, false, 'reloaded')", saved)
    ui.page.wait_for_timeout(300)
    restored = ui.page.evaluate(f"(id) => ({CHART_STATE})(id)", compute)
    assert restored is not None and restored["drawn"] == str(DEMO_LAYERS)
    assert restored["saved"] == {"k": k, "layers": DEMO_LAYERS}
    assert ui.take_errors() == []


def test_chart_survives_missing_or_malformed_data(ui):
    """onExecuted with no, empty or malformed spectrum data adds no chart and throws nothing."""
    result = ui.page.evaluate("""() => {
        app.graph.clear();
        const node = LiteGraph.createNode("SAEdit_ComputeEigendirections");
        app.graph.add(node);
        for (const output of [undefined, {}, {sae_spectrum: []}, {sae_spectrum: [null]},
                              {sae_spectrum: [{layers: [{eigenvalues: ["x", null]}]}]}])
            node.onExecuted(output);
        const none = !node.widgets.some(w => w.name === "sae_spectrum_chart");
        node.onExecuted({sae_spectrum: [{k: 3, layers: [{key: "middle.0.0", level: 3, eigenvalues: [9, 0, -1]}]}]});
        return {none, after: node.widgets.some(w => w.name === "sae_spectrum_chart")};
    }""")
    assert result == {"none": True, "after": True}
    assert ui.take_errors() == []


def test_chart_marks_the_gap_only_where_the_spectrum_drops(ui):
    """The chart's analysis (js/lib/spectrum_chart.js, as the browser loads it): a spectrum with a 10x drop
    after index 1 gets its gap there; a flat one (what random weights give) gets none and says so."""
    result = ui.page.evaluate(f"""async () => {{
        const m = await import("/extensions/{PACK_NAME}/lib/spectrum_chart.js");
        const layer = (values) => ({{key: "k", level: 0, eigenvalues: values}});
        const dropped = m.normalizeSpectrum({{k: 4, layers: [layer([50, 40, 4, 3]), layer([80, 60, 5, 4])]}});
        const flat = m.normalizeSpectrum({{k: 4, layers: [layer([7.1, 7.0, 6.95, 6.9])]}});
        return {{gap: m.findGap(dropped), flat: m.findGap(flat), caption: m.caption(flat, null),
                 hover: m.describeIndex(dropped, 1)}};
    }}""")
    assert result["gap"]["index"] == 1 and result["gap"]["ratio"] == pytest.approx(11, rel=0.1)
    assert result["flat"] is None and "flat" in result["caption"]
    assert result["hover"].startswith("index 1: median λ=")
