/* perfcast chart kit: small SVG line/scatter and bar charts with hover values and legend toggles.
   Hand-written for perfcast, no dependencies, nothing fetched from anywhere. Shared by the offline
   HTML report (inlined) and the local web UI (served from the package). */
(function (root) {
  "use strict";
  const SVGNS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2c7fb8", "#d95f0e", "#31a354", "#756bb1", "#e7298a", "#a6761d", "#636363",
                   "#1b9e77", "#e6ab02", "#66a61e"];

  function svgEl(tag, attrs, parent) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function htmlEl(tag, cls, parent, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  /* A compact number: 4 significant digits, k/M/G/T suffixes for large values. */
  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "-";
    if (v === 0) return "0";
    const a = Math.abs(v);
    const units = [[1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
    if (a >= 1e4) for (const [s, u] of units) if (a >= s) return +(v / s).toPrecision(3) + u;
    if (a < 1e-3) return v.toExponential(2);
    return String(+v.toPrecision(4));
  }

  function linTicks(lo, hi) {
    const span = hi - lo || Math.abs(hi) || 1;
    const raw = span / 5, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(m => m * mag).find(s => span / s <= 6);
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
    return out;
  }

  function logTicks(lo, hi) {
    const a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
    const mults = b - a <= 2 ? [1, 2, 5] : (b - a <= 4 ? [1, 3] : [1]);
    const out = [];
    for (let e = a; e <= b; e++) for (const m of mults) {
      const t = m * Math.pow(10, e);
      if (t >= lo * 0.999 && t <= hi * 1.001) out.push(t);
    }
    return out;
  }

  function makeScale(lo, hi, a, b, log) {
    if (log) {
      const l0 = Math.log10(lo), l1 = Math.log10(hi);
      return v => a + (Math.log10(v) - l0) / (l1 - l0 || 1) * (b - a);
    }
    return v => a + (v - lo) / (hi - lo || 1) * (b - a);
  }

  function extent(values, log, pad) {
    let lo = Math.min(...values), hi = Math.max(...values);
    if (!isFinite(lo)) return log ? [1, 10] : [0, 1];
    if (log) return lo === hi ? [lo / 2, hi * 2] : [lo / pad, hi * pad];
    if (lo === hi) return [lo - 1, hi + 1];
    const m = (hi - lo) * 0.05;
    return [lo >= 0 && lo - m < 0 ? 0 : lo - m, hi + m];
  }

  function tooltipFor(box) {
    let tip = box.querySelector(".pc-tip");
    if (!tip) tip = htmlEl("div", "pc-tip", box);
    return {
      show(html, x, y) { tip.innerHTML = html; tip.style.display = "block";
        tip.style.left = Math.min(x + 12, box.clientWidth - tip.offsetWidth - 4) + "px"; tip.style.top = (y + 12) + "px"; },
      hide() { tip.style.display = "none"; },
    };
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;"}[c]));
  }

  function legend(box, names, colors, hidden, onToggle) {
    const lg = htmlEl("div", "pc-legend", box);
    names.forEach((name, i) => {
      const b = htmlEl("button", "pc-key" + (hidden.has(name) ? " off" : ""), lg);
      b.type = "button";
      b.title = "show / hide";
      htmlEl("span", "pc-swatch", b).style.background = colors[i];
      htmlEl("span", "", b, name);
      b.addEventListener("click", () => onToggle(name));
    });
  }

  /* Line (or scatter) chart. opts: title, xLabel, yLabel, xLog, yLog, height, series:
     [{name, color, points: [{x, y, label}], lines (default true), dash, markers (default true)}],
     mark: {x, label} (a vertical marker). Returns {update(opts), hidden}. */
  function line(box, opts) {
    const hidden = new Set(opts.hidden || []);
    function draw() {
      box.innerHTML = "";
      box.classList.add("pc-chart");
      if (opts.title) htmlEl("div", "pc-title", box, opts.title);
      const W = Math.max(box.clientWidth || 640, 320), H = opts.height || 300;
      const M = {l: 62, r: 14, t: 10, b: 42};
      const svg = svgEl("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img"}, box);
      const ok = p => p && isFinite(p.x) && isFinite(p.y) && (!opts.xLog || p.x > 0) && (!opts.yLog || p.y > 0);
      const series = (opts.series || []).map((s, i) => ({...s, color: s.color || PALETTE[i % PALETTE.length],
                                                        points: (s.points || []).filter(ok)}));
      const shown = series.filter(s => !hidden.has(s.name));
      const all = shown.flatMap(s => s.points);
      const [x0, x1] = opts.xRange || extent(all.map(p => p.x), opts.xLog, 1.25);
      const [y0, y1] = opts.yRange || extent(all.map(p => p.y), opts.yLog, 1.5);
      const sx = makeScale(x0, x1, M.l, W - M.r, opts.xLog), sy = makeScale(y0, y1, H - M.b, M.t, opts.yLog);
      const grid = svgEl("g", {class: "pc-grid"}, svg);
      for (const t of (opts.xLog ? logTicks(x0, x1) : linTicks(x0, x1))) {
        svgEl("line", {x1: sx(t), x2: sx(t), y1: M.t, y2: H - M.b}, grid);
        svgEl("text", {x: sx(t), y: H - M.b + 14, "text-anchor": "middle", class: "pc-tick"}, svg).textContent = fmt(t);
      }
      for (const t of (opts.yLog ? logTicks(y0, y1) : linTicks(y0, y1))) {
        svgEl("line", {x1: M.l, x2: W - M.r, y1: sy(t), y2: sy(t)}, grid);
        svgEl("text", {x: M.l - 5, y: sy(t) + 4, "text-anchor": "end", class: "pc-tick"}, svg).textContent = fmt(t);
      }
      svgEl("rect", {x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, class: "pc-frame"}, svg);
      svgEl("text", {x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle", class: "pc-axis"}, svg)
        .textContent = opts.xLabel || "";
      svgEl("text", {x: 12, y: (M.t + H - M.b) / 2, transform: `rotate(-90 12 ${(M.t + H - M.b) / 2})`,
                     "text-anchor": "middle", class: "pc-axis"}, svg).textContent = opts.yLabel || "";
      if (opts.mark && isFinite(opts.mark.x) && opts.mark.x >= x0 && opts.mark.x <= x1) {
        svgEl("line", {x1: sx(opts.mark.x), x2: sx(opts.mark.x), y1: M.t, y2: H - M.b, class: "pc-mark"}, svg);
      }
      const hits = [];
      for (const s of shown) {
        const pts = s.points.map(p => [sx(p.x), sy(p.y), p]);
        if (s.lines !== false && pts.length > 1) {
          svgEl("polyline", {points: pts.map(q => q[0] + "," + q[1]).join(" "), fill: "none", stroke: s.color,
                             "stroke-width": s.width || 2, "stroke-dasharray": s.dash ? "5 4" : "none"}, svg);
        }
        for (const [px, py, p] of pts) {
          if (s.markers !== false) svgEl("circle", {cx: px, cy: py, r: p.r || 3.2, fill: s.color}, svg);
          hits.push({px, py, p, s});
        }
      }
      const focus = svgEl("circle", {r: 6, class: "pc-focus", visibility: "hidden"}, svg);
      const tip = tooltipFor(box);
      svg.addEventListener("mousemove", ev => {
        const r = svg.getBoundingClientRect(), mx = ev.clientX - r.left, my = ev.clientY - r.top;
        let best = null, bd = 30 * 30;
        for (const h of hits) {
          const d = (h.px - mx) ** 2 + (h.py - my) ** 2;
          if (d < bd) { bd = d; best = h; }
        }
        if (!best) { tip.hide(); focus.setAttribute("visibility", "hidden"); return; }
        focus.setAttribute("cx", best.px); focus.setAttribute("cy", best.py);
        focus.setAttribute("stroke", best.s.color); focus.setAttribute("visibility", "visible");
        const extra = best.p.label ? "<br>" + escapeHtml(best.p.label) : "";
        tip.show(`<b>${escapeHtml(best.s.name)}</b><br>${escapeHtml(opts.xLabel || "x")}: ${fmt(best.p.x)}` +
                 `<br>${escapeHtml(opts.yLabel || "y")}: ${fmt(best.p.y)}${extra}`, best.px, best.py);
      });
      svg.addEventListener("mouseleave", () => { tip.hide(); focus.setAttribute("visibility", "hidden"); });
      const keyed = series.filter(s => s.legend !== false);
      if (keyed.length > 1 || opts.legend) {
        legend(box, keyed.map(s => s.name), keyed.map(s => s.color), hidden, name => {
          hidden.has(name) ? hidden.delete(name) : hidden.add(name);
          draw();
        });
      }
    }
    draw();
    return {update(o) { Object.assign(opts, o); draw(); }, hidden};
  }

  /* Horizontal stacked bars. opts: title, xLabel, height per row, rows: [{label, segments:
     [{name, value, color, note}]}], limit: {value, label} (a vertical line, e.g. capacity). */
  function bars(box, opts) {
    const hidden = new Set(opts.hidden || []);
    function draw() {
      box.innerHTML = "";
      box.classList.add("pc-chart");
      if (opts.title) htmlEl("div", "pc-title", box, opts.title);
      const rows = opts.rows || [];
      const rowH = opts.rowHeight || 26, M = {l: opts.labelWidth || 110, r: 60, t: 6, b: 36};
      const W = Math.max(box.clientWidth || 640, 320), H = M.t + M.b + rows.length * rowH;
      const svg = svgEl("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img"}, box);
      const visible = seg => !hidden.has(seg.name) && isFinite(seg.value) && seg.value > 0;
      const totals = rows.map(r => r.segments.filter(visible).reduce((a, s) => a + s.value, 0));
      const top = Math.max(...totals, opts.limit ? opts.limit.value : 0, 1e-12) * 1.02;
      const sx = makeScale(0, top, M.l, W - M.r, false);
      const grid = svgEl("g", {class: "pc-grid"}, svg);
      for (const t of linTicks(0, top)) {
        svgEl("line", {x1: sx(t), x2: sx(t), y1: M.t, y2: H - M.b}, grid);
        svgEl("text", {x: sx(t), y: H - M.b + 14, "text-anchor": "middle", class: "pc-tick"}, svg).textContent = fmt(t);
      }
      svgEl("text", {x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle", class: "pc-axis"}, svg)
        .textContent = opts.xLabel || "";
      const tip = tooltipFor(box);
      const colors = {};
      rows.forEach((row, i) => {
        const y = M.t + i * rowH;
        svgEl("text", {x: M.l - 6, y: y + rowH / 2 + 4, "text-anchor": "end", class: "pc-label"}, svg).textContent = row.label;
        let x = 0, k = 0;
        for (const seg of row.segments) {
          const color = seg.color || colors[seg.name] || PALETTE[Object.keys(colors).length % PALETTE.length];
          colors[seg.name] = color;
          k++;
          if (!visible(seg)) continue;
          const rect = svgEl("rect", {x: sx(x), y: y + 3, width: Math.max(sx(x + seg.value) - sx(x), 0.5),
                                      height: rowH - 6, fill: color, class: "pc-bar"}, svg);
          rect.addEventListener("mousemove", ev => {
            const r = box.getBoundingClientRect();
            tip.show(`<b>${escapeHtml(row.label)}</b><br>${escapeHtml(seg.name)}: ${fmt(seg.value)}` +
                     (seg.note ? "<br>" + escapeHtml(seg.note) : ""), ev.clientX - r.left, ev.clientY - r.top);
          });
          rect.addEventListener("mouseleave", () => tip.hide());
          x += seg.value;
        }
        svgEl("text", {x: sx(x) + 4, y: y + rowH / 2 + 4, class: "pc-value"}, svg).textContent = k ? fmt(x) : "";
      });
      if (opts.limit) {
        const lx = sx(opts.limit.value);
        svgEl("line", {x1: lx, x2: lx, y1: M.t, y2: H - M.b, class: "pc-limit"}, svg);
        svgEl("text", {x: lx - 3, y: M.t + 10, "text-anchor": "end", class: "pc-limit-label"}, svg).textContent = opts.limit.label || "";
      }
      const names = Object.keys(colors);
      if (names.length > 1) {
        legend(box, names, names.map(n => colors[n]), hidden, name => {
          hidden.has(name) ? hidden.delete(name) : hidden.add(name);
          draw();
        });
      }
    }
    draw();
    return {update(o) { Object.assign(opts, o); draw(); }, hidden};
  }

  root.PerfChart = {line, bars, fmt, PALETTE};
})(window);
