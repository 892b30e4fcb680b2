// Drawing and analysis of an eigenvalue spectrum (no ComfyUI imports: usable and testable on its own).
// Input: the `sae_spectrum` summary the Python node sends:
//   {model_family, k, layers: [{key, width, level, eigenvalues: [descending floats]}]}

export const MAX_SHOWN = 64; // indices drawn per layer; the rest would be unreadable on a node anyway

/** The summary cleaned up: only layers with finite positive eigenvalues, at most MAX_SHOWN each. */
export function normalizeSpectrum(summary) {
  if (!summary || !Array.isArray(summary.layers)) return null;
  const layers = [];
  for (const layer of summary.layers) {
    if (!layer || !Array.isArray(layer.eigenvalues)) continue;
    // log scale: zero or negative eigenvalues (C is positive semi-definite) are clamped to a tiny floor
    const values = layer.eigenvalues.slice(0, MAX_SHOWN).filter((v) => typeof v === "number" && Number.isFinite(v))
      .map((v) => Math.max(v, 1e-12));
    if (values.length) layers.push({ key: String(layer.key ?? "?"), level: Number(layer.level) || 0, width: layer.width, values });
  }
  if (!layers.length) return null;
  const k = Math.max(...layers.map((l) => l.values.length));
  return { family: summary.model_family ?? "", k, totalK: Number(summary.k) || k, layers };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Where the spectrum drops most: the index i (0-based) maximising the median over layers of
 *  lambda_i / lambda_{i+1}. Directions 0..i dominate. null when fewer than 2 values or no drop of at
 *  least MIN_GAP. */
export const MIN_GAP = 1.25; // a smaller drop is no gap: every direction is about as strong

export function findGap(spec) {
  let best = null;
  for (let i = 0; i + 1 < spec.k; i++) {
    const ratios = spec.layers.filter((l) => l.values.length > i + 1).map((l) => l.values[i] / l.values[i + 1]);
    if (!ratios.length) continue;
    const r = median(ratios);
    if (!best || r > best.ratio) best = { index: i, ratio: r };
  }
  return best && best.ratio >= MIN_GAP ? best : null;
}

const PAD = { left: 34, right: 8, top: 8, bottom: 16 };

function levelColor(level, maxLevel) {
  const hue = 200 - (maxLevel ? (level / maxLevel) * 170 : 0); // blue (high resolution) -> orange (bottleneck)
  return `hsl(${hue}, 80%, 60%)`;
}

/** Chart geometry shared by drawing and hit testing. */
export function layout(spec, width, height) {
  const logs = spec.layers.flatMap((l) => l.values.map(Math.log10));
  // whole decades when the spectrum spans them; quarter decades for a flat one (e.g. random weights),
  // so its small differences stay visible
  const unit = Math.max(...logs) - Math.min(...logs) > 1.5 ? 1 : 0.25;
  const lo = Math.floor(Math.min(...logs) / unit) * unit;
  const hi = Math.max(lo + unit, Math.ceil(Math.max(...logs) / unit) * unit);
  const plotW = Math.max(1, width - PAD.left - PAD.right);
  const plotH = Math.max(1, height - PAD.top - PAD.bottom);
  const step = plotW / spec.k;
  return {
    lo, hi, step, unit,
    x: (i) => PAD.left + (i + 0.5) * step,
    y: (v) => PAD.top + (1 - (Math.log10(v) - lo) / (hi - lo)) * plotH,
    bottom: PAD.top + plotH,
    indexAt: (px) => Math.min(spec.k - 1, Math.max(0, Math.floor((px - PAD.left) / step))),
  };
}

/** Draws the spectrum into a 2D context of size width x height (CSS pixels). One layer: bars; several:
 *  one line per layer coloured by resolution level. The largest gap is marked; `hover` = index to highlight. */
export function drawSpectrum(ctx, spec, width, height, gap, hover = null) {
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = "#1b1b1b";
  ctx.fillRect(0, 0, width, height);
  const g = layout(spec, width, height);
  ctx.font = "9px sans-serif";
  ctx.fillStyle = "#999";
  ctx.strokeStyle = "#333";
  ctx.lineWidth = 1;
  for (let d = g.lo; d <= g.hi + 1e-9; d += g.unit) { // grid lines at (quarter) decades: log scale
    const y = g.y(10 ** d);
    ctx.beginPath(); ctx.moveTo(PAD.left, y); ctx.lineTo(width - PAD.right, y); ctx.stroke();
    ctx.fillText(g.unit === 1 ? `1e${Math.round(d)}` : fmt(10 ** d), 2, y + 3);
  }
  const tick = Math.max(1, Math.ceil(spec.k / 16));
  for (let i = 0; i < spec.k; i += tick) ctx.fillText(String(i), g.x(i) - 3, height - 4);

  if (gap) { // directions left of this line dominate
    const xg = PAD.left + (gap.index + 1) * g.step;
    ctx.strokeStyle = "#e0c040";
    ctx.setLineDash([3, 3]);
    ctx.beginPath(); ctx.moveTo(xg, PAD.top); ctx.lineTo(xg, g.bottom); ctx.stroke();
    ctx.setLineDash([]);
  }
  if (hover !== null) {
    ctx.fillStyle = "rgba(255,255,255,0.08)";
    ctx.fillRect(PAD.left + hover * g.step, PAD.top, g.step, g.bottom - PAD.top);
  }
  const maxLevel = Math.max(...spec.layers.map((l) => l.level));
  if (spec.layers.length === 1) {
    const l = spec.layers[0];
    ctx.fillStyle = levelColor(l.level, maxLevel);
    l.values.forEach((v, i) => {
      const y = g.y(v);
      ctx.fillRect(g.x(i) - g.step * 0.35, y, g.step * 0.7, g.bottom - y);
    });
    return;
  }
  for (const l of spec.layers) {
    ctx.strokeStyle = levelColor(l.level, maxLevel);
    ctx.globalAlpha = 0.8;
    ctx.beginPath();
    l.values.forEach((v, i) => (i ? ctx.lineTo(g.x(i), g.y(v)) : ctx.moveTo(g.x(i), g.y(v))));
    ctx.stroke();
    ctx.fillStyle = ctx.strokeStyle;
    if (g.step > 6) l.values.forEach((v, i) => ctx.fillRect(g.x(i) - 1.5, g.y(v) - 1.5, 3, 3));
  }
  ctx.globalAlpha = 1;
}

function fmt(v) {
  return v >= 1e4 || v < 1e-2 ? v.toExponential(2) : v.toPrecision(3);
}

/** Text for the caption line: what the chart shows and where it drops. */
export function caption(spec, gap) {
  const parts = [`${spec.layers.length} layer${spec.layers.length > 1 ? "s" : ""}`, `k=${spec.totalK}`];
  if (spec.totalK > spec.k) parts.push(`first ${spec.k} shown`);
  if (gap) parts.push(`gap after index ${gap.index} (x${gap.ratio.toFixed(2)})`);
  else if (spec.k > 1) parts.push("flat: no direction dominates");
  return parts.join(" · ");
}

/** Hover text for index i: eigenvalue (one layer) or median and range over layers, and the ratio to i+1. */
export function describeIndex(spec, i) {
  const vals = spec.layers.filter((l) => l.values.length > i).map((l) => l.values[i]);
  if (!vals.length) return "";
  const next = spec.layers.filter((l) => l.values.length > i + 1).map((l) => l.values[i] / l.values[i + 1]);
  const drop = next.length ? ` · λ${i}/λ${i + 1} ${median(next).toFixed(2)}` : "";
  if (vals.length === 1) return `index ${i}: λ=${fmt(vals[0])} (${spec.layers[0].key})${drop}`;
  return `index ${i}: median λ=${fmt(median(vals))} [${fmt(Math.min(...vals))}..${fmt(Math.max(...vals))}]${drop}`;
}
