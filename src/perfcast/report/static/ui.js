/* perfcast web UI: read the form, ask the local API, show the prediction, breakdown and charts. */
(function () {
  "use strict";
  const $ = id => document.getElementById(id);
  const PC = window.PerfChart, fmt = PC.fmt;
  const FIELDS = ["model", "gpu", "tp", "pp", "dtype", "runtime", "profile", "batch", "prompt", "context"];
  const BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
  const KIND_COLOR = {gemm: "#2c7fb8", attention: "#d95f0e", elementwise: "#7fbc41", collective: "#756bb1",
                      p2p: "#636363", transfer: "#e7298a", cpu: "#a6761d", runtime: "#bdbdbd"};
  const MEM_COLOR = {weights: "#2c7fb8", kv_cache: "#d95f0e", activations: "#7fbc41", reserve: "#969696"};
  const BOUND_COLOR = {compute: "#8e44ad", memory: "#2980b9", latency: "#d4ac0d", launch: "#e67e22",
                       network: "#27ae60", host: "#c0392b"};
  const models = {};
  let seq = 0, last = null, timer = 0;

  async function getJSON(url) {
    const r = await fetch(url, {headers: {Accept: "application/json"}});
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) throw new Error((body && body.error) || `HTTP ${r.status}`);
    return body;
  }

  function fill(select, values, labels, chosen) {
    select.innerHTML = "";
    values.forEach((v, i) => select.add(new Option(labels ? labels[i] : String(v), String(v))));
    if (chosen !== undefined && values.map(String).includes(String(chosen))) select.value = String(chosen);
  }

  function fields() {
    const o = {};
    for (const f of FIELDS) o[f] = $(f).value.trim();
    return o;
  }

  function contexts(maxPos) {
    const out = [];
    for (let c = 256; c <= maxPos && out.length < 60; c *= 2) out.push(c);
    if (out[out.length - 1] !== maxPos) out.push(maxPos);
    return out;
  }

  function setText(id, value, raw) {
    const e = $(id);
    e.textContent = value;
    if (raw === undefined) delete e.dataset.value; else e.dataset.value = String(raw);
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").style.display = message ? "block" : "none";
  }

  function clearCards() {
    for (const id of ["prefill-ms", "decode-ms", "tokens-per-s", "total-gib", "source"]) setText(id, "-");
    for (const id of ["prefill-bound", "decode-bound", "fits", "profile-name"]) setText(id, "");
  }

  function showPrediction(exp) {
    const p = exp.prediction;
    setText("prefill-ms", fmt(p.prefill_ms), p.prefill_ms);
    setText("decode-ms", fmt(p.decode_ms), p.decode_ms);
    const tps = p.batch / (p.decode_ms * 1e-3);
    setText("tokens-per-s", fmt(tps), tps);
    setText("total-gib", fmt(p.total_gib), p.total_gib);
    setText("prefill-bound", `${p.prefill_bound}-bound`);
    setText("decode-bound", `${p.decode_bound}-bound`);
    setText("fits", p.fits ? `fits in ${fmt(p.capacity_gib)} GiB` : `does NOT fit in ${fmt(p.capacity_gib)} GiB`);
    $("fits").className = "s " + (p.fits ? "good" : "bad");
    setText("source", p.source);
    setText("profile-name", p.profile);
    PC.bars($("chart-families"), {
      xLabel: "% of the phase's time", labelWidth: 70,
      rows: ["prefill", "decode"].map(ph => ({label: ph, segments: exp.families.filter(f => f.phase === ph).map(f => (
        {name: f.kind, value: 100 * f.share, color: KIND_COLOR[f.kind], note: `${fmt(f.ms)} ms`}))})),
    });
    PC.bars($("chart-memory"), {
      xLabel: "GiB per GPU", labelWidth: 70, limit: {value: p.capacity_gib, label: "capacity"},
      rows: [{label: p.gpu, segments: exp.memory.filter(m => m.component in MEM_COLOR).map(m => (
        {name: m.component, value: m.gib, color: MEM_COLOR[m.component]}))}],
    });
    roofline(exp);
    opsTable(exp);
  }

  function roofline(exp) {
    const r = exp.roofline;
    const pts = exp.ops.filter(o => o.intensity_flop_per_byte && o.achieved_flops_per_s);
    const xs = pts.map(o => o.intensity_flop_per_byte).concat([r.ridge_flop_per_byte]);
    const lo = Math.min(...xs) / 4, hi = Math.max(...xs) * 4;
    const ceiling = [];
    for (let i = 0; i <= 40; i++) {
      const x = lo * Math.pow(hi / lo, i / 40);
      ceiling.push({x, y: Math.min(r.peak_flops_per_s, r.mem_bw_bytes_per_s * x)});
    }
    ceiling.push({x: r.ridge_flop_per_byte, y: r.peak_flops_per_s, label: "ridge point"});
    ceiling.sort((a, b) => a.x - b.x);
    const series = [{name: `ceiling (${r.dtype})`, color: "#222", points: ceiling, markers: false, width: 1.5}];
    for (const ph of ["prefill", "decode"]) {
      series.push({name: `${ph} ops`, lines: false, color: ph === "prefill" ? "#8e44ad" : "#2980b9",
        points: pts.filter(o => o.phase === ph).map(o => ({x: o.intensity_flop_per_byte, y: o.achieved_flops_per_s,
          r: 3 + 8 * Math.sqrt(o.share), label: `${o.name}: ${fmt(o.ms)} ms, ${o.bound}-bound, ${o.source}`}))});
    }
    PC.line($("chart-roofline"), {xLabel: "FLOP per byte", yLabel: "achieved FLOP/s", xLog: true, yLog: true, series});
  }

  function opsTable(exp) {
    const phase = $("ops-phase").value;
    const rows = exp.ops.filter(o => o.phase === phase).sort((a, b) => b.ms - a.ms);
    const t = $("ops-table");
    t.innerHTML = "";
    const head = t.createTHead().insertRow();
    ["op", "kind", "count", "ms", "ms/launch", "share %", "bound", "source", "FLOP/byte", "TFLOP/s"].forEach((c, i) => {
      const th = document.createElement("th");
      th.textContent = c;
      if (i < 2 || i > 5) th.className = "l";
      head.appendChild(th);
    });
    const body = t.createTBody();
    for (const o of rows) {
      const tr = body.insertRow();
      const cells = [o.name, o.kind, String(o.count), fmt(o.ms), fmt(o.ms_per_launch), (100 * o.share).toFixed(1),
        o.bound, o.source, fmt(o.intensity_flop_per_byte),
        o.achieved_flops_per_s ? fmt(o.achieved_flops_per_s / 1e12) : "-"];
      cells.forEach((c, i) => {
        const td = tr.insertCell();
        td.textContent = c;
        if (i === 6) td.style.color = BOUND_COLOR[c] || "";
        if (i < 2 || i > 5) td.className = "l";
      });
    }
  }

  function showSweeps(f, byBatch, byContext) {
    const label = (sw, i) => `${fmt(sw.total_gib[i])} GiB/GPU` + (sw.fits[i] ? "" : " - does NOT fit");
    const split = (sw, xKey, yKey, lab) => {
      const pts = sw[xKey].map((x, i) => ({x, y: sw[yKey][i], label: lab(sw, i), fits: sw.fits[i]}));
      return [{name: "fits", color: "#2c7fb8", points: pts.filter(p => p.fits), legend: true},
              {name: "does not fit", color: "#c0392b", dash: true, points: pts.filter(p => !p.fits)}];
    };
    PC.line($("chart-batch"), {xLabel: "batch", yLabel: "decode step (ms)", xLog: true, yLog: true,
      mark: {x: Number(f.batch)}, series: split(byBatch, "batch", "decode_ms", label)});
    PC.line($("chart-tput"), {xLabel: "time per output token (ms)", yLabel: "decode tokens/s", xLog: true, yLog: true,
      series: split(byBatch, "decode_ms", "tokens_per_s", (sw, i) => `batch ${sw.batch[i]}, ` + label(sw, i))});
    const ctx = [{name: "decode step", points: byContext.context.map((c, i) => (
                   {x: c, y: byContext.decode_ms[i], label: label(byContext, i)}))},
                 {name: "prefill", points: byContext.context.map((c, i) => (
                   {x: c, y: byContext.prefill_ms[i], label: label(byContext, i)}))}];
    PC.line($("chart-context"), {xLabel: "context = prompt (tokens)", yLabel: "ms", xLog: true, yLog: true,
      mark: {x: Number(f.context)}, series: ctx});
  }

  async function update() {
    const my = ++seq;
    document.body.dataset.busy = "1";
    const f = fields();
    const q = new URLSearchParams(f).toString();
    const {prompt, context, ...rest} = f;  // the context sweep sets both to each swept value
    const maxPos = (models[f.model] || {}).max_positions || 4096;
    try {
      const [exp, byBatch, byContext] = await Promise.all([
        getJSON("api/predict?" + q),
        getJSON("api/sweep?" + q + "&axis=batch&values=" + BATCHES.join(",")),
        getJSON("api/sweep?" + new URLSearchParams(rest).toString() + "&axis=context&values=" +
                contexts(maxPos).join(",")),
      ]);
      if (my !== seq) return;
      showError("");
      last = exp;
      showPrediction(exp);
      showSweeps(f, byBatch, byContext);
    } catch (e) {
      if (my !== seq) return;
      clearCards();
      showError(e.message);
    } finally {
      if (my === seq) {
        document.body.dataset.busy = "0";
        document.body.dataset.updates = String(my);
      }
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(update, 120);
  }

  function onModel() {
    const m = models[$("model").value];
    if (!m) return;
    fill($("tp"), m.valid_tp, null, $("tp").value || 1);
    $("prompt").max = $("context").max = m.max_positions;
  }

  async function init() {
    try {
      const [gpus, modelList, opts] = await Promise.all([getJSON("api/gpus"), getJSON("api/models"),
                                                          getJSON("api/options")]);
      for (const m of modelList) models[m.id] = m;
      fill($("model"), modelList.map(m => m.id), modelList.map(m => `${m.id} (${fmt(m.params_b)}B)`),
           "meta-llama/Llama-3.1-8B");
      fill($("gpu"), gpus.map(g => g.id), gpus.map(g => `${g.id} (${fmt(g.capacity_gib)} GiB)`), "h100-sxm");
      fill($("dtype"), opts.dtypes, null, "bf16");
      fill($("runtime"), opts.runtimes, null, "cuda-graph");
      fill($("profile"), opts.profiles, null, "auto");
      onModel();
    } catch (e) {
      showError("could not load the catalogs: " + e.message);
      document.body.dataset.busy = "0";
      return;
    }
    $("model").addEventListener("change", onModel);
    $("form").addEventListener("input", schedule);
    $("form").addEventListener("change", schedule);
    $("form").addEventListener("submit", ev => { ev.preventDefault(); update(); });
    $("ops-phase").addEventListener("change", () => { if (last) opsTable(last); });
    let resize = 0;
    window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(() => last && update(), 200); });
    update();
  }

  init();
})();
