// Eigenvalue spectrum chart on "Compute Attention Eigendirections" and "Load Attention Directions".
// The Python nodes send ui.sae_spectrum = [summary]; onExecuted receives it. The chart is a DOM widget
// (canvas) added on first data, not serialized as a widget value (saved workflows keep their widget order);
// a compact copy of the data goes into node.properties so the chart comes back when the workflow is reloaded.
import { app } from "../../scripts/app.js";
import { caption, describeIndex, drawSpectrum, findGap, layout, normalizeSpectrum } from "./lib/spectrum_chart.js";

const NODE_IDS = new Set(["SAEdit_ComputeEigendirections", "SAEdit_LoadDirections"]);
const WIDGET_NAME = "sae_spectrum_chart";
const PROPERTY = "sae_spectrum";
const CHART_HEIGHT = 150;

function createChart(node) {
  const root = document.createElement("div");
  root.className = "sae-spectrum";
  root.style.cssText = "display:flex;flex-direction:column;gap:2px;width:100%;height:100%;font:10px sans-serif;color:#bbb";
  const canvas = document.createElement("canvas");
  canvas.style.cssText = "flex:1 1 auto;min-height:0;width:100%;border-radius:4px";
  const info = document.createElement("div");
  info.style.cssText = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;min-height:12px";
  root.append(canvas, info);

  const widget = node.addDOMWidget(WIDGET_NAME, "sae_spectrum", root, {
    getMinHeight: () => CHART_HEIGHT,
    hideOnZoom: true,
  });
  widget.serialize = false; // not a widget value: positional widgets_values must stay as the node defines them
  const chart = { root, canvas, info, widget, spec: null, gap: null, hover: null };

  const redraw = () => {
    if (!chart.spec) return;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (w < 10 || h < 10) return;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    drawSpectrum(ctx, chart.spec, w, h, chart.gap, chart.hover);
    info.textContent = chart.hover === null ? caption(chart.spec, chart.gap) : describeIndex(chart.spec, chart.hover);
    // flag for tests and other extensions: what is on screen
    root.dataset.saeDrawn = String(chart.spec.layers.length);
  };
  chart.redraw = redraw;
  new ResizeObserver(redraw).observe(canvas);
  canvas.addEventListener("pointermove", (e) => {
    if (!chart.spec) return;
    const { left, width } = canvas.getBoundingClientRect();
    const px = ((e.clientX - left) / width) * canvas.clientWidth;
    chart.hover = layout(chart.spec, canvas.clientWidth, canvas.clientHeight).indexAt(px);
    redraw();
  });
  canvas.addEventListener("pointerleave", () => { chart.hover = null; redraw(); });
  return chart;
}

function compact(summary) {
  // What the chart needs, capped by normalizeSpectrum (64 values per layer): small enough for a workflow file.
  const spec = normalizeSpectrum(summary);
  if (!spec) return null;
  return {
    model_family: spec.family, k: spec.totalK,
    layers: spec.layers.map((l) => ({ key: l.key, level: l.level, width: l.width, eigenvalues: l.values })),
  };
}

function showSpectrum(node, summary) {
  const spec = normalizeSpectrum(summary);
  if (!spec) return false;
  if (!node.__saeChart) {
    node.__saeChart = createChart(node);
    const size = node.computeSize();
    node.setSize([Math.max(node.size[0], 320), Math.max(node.size[1], size[1])]);
  }
  const chart = node.__saeChart;
  chart.spec = spec;
  chart.gap = findGap(spec);
  chart.hover = null;
  chart.redraw();
  requestAnimationFrame(chart.redraw); // the DOM widget gets its size on the next frame
  node.setDirtyCanvas?.(true, true);
  return true;
}

app.registerExtension({
  name: "self_attention_edit.spectrum",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_IDS.has(nodeData?.name)) return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const summary = output?.[PROPERTY]?.[0];
      if (showSpectrum(this, summary)) this.properties[PROPERTY] = compact(summary);
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (info) {
      const r = onConfigure?.apply(this, arguments);
      const saved = info?.properties?.[PROPERTY];
      if (saved) showSpectrum(this, saved); // restore the chart of a saved workflow
      return r;
    };
  },
});
