// Hellas web pages: progress of downloads, copy buttons and the "try it" box. No framework.
"use strict";

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function watchDownload(section) {
  const bar = document.getElementById("bar");
  const status = document.getElementById("status");
  const show = (id, on) => { document.getElementById(id).hidden = !on; };
  const events = new EventSource(section.dataset.events);
  events.onmessage = (event) => {
    const p = JSON.parse(event.data);
    section.dataset.state = p.state;
    if (p.state === "downloading" || p.state === "retrying") {
      bar.max = p.total; bar.value = p.done;
      const pct = (100 * p.done / p.total).toFixed(1);
      status.textContent = p.state === "retrying"
        ? `Connection lost at ${fmtBytes(p.done)}; resuming (attempt ${p.attempt})…`
        : `${pct}% · ${fmtBytes(p.done)} of ${fmtBytes(p.total)}` + (p.bytes_per_sec ? ` · ${fmtBytes(p.bytes_per_sec)}/s` : "");
    } else if (p.state === "verifying") {
      bar.removeAttribute("value"); status.textContent = "Checking the file's sha256…";
    } else if (p.state === "done") {
      bar.max = 1; bar.value = 1; status.textContent = `${p.name} is ready.`;
      show("cancel-form", false); show("continue", true); events.close();
    } else if (p.state === "failed") {
      status.textContent = "Failed: " + p.error;
      show("cancel-form", false); show("retry-form", true); events.close();
    } else if (p.state === "cancelled") {
      status.textContent = "Cancelled; nothing was kept.";
      show("cancel-form", false); show("retry-form", true); events.close();
    }
  };
}

function copyText(id, button) {
  const text = document.getElementById(id).textContent;
  const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1500); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done);
    return;
  }
  // Plain http (hellas.local) is not a secure context: fall back to a selection.
  const area = document.createElement("textarea");
  area.value = text; document.body.appendChild(area); area.select();
  document.execCommand("copy"); area.remove(); done();
}

function tryIt(form) {
  const answer = document.getElementById("try-answer");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    answer.textContent = "…";
    const started = performance.now();
    try {
      const response = await fetch(form.dataset.base + "/chat/completions", {
        method: "POST",
        headers: { "Authorization": "Bearer " + form.dataset.key, "Content-Type": "application/json" },
        body: JSON.stringify({
          model: document.getElementById("try-model").value,
          messages: [{ role: "user", content: document.getElementById("try-message").value }],
          max_tokens: 64,
          // Greedy: the same question gets the same answer, which makes a first test readable.
          temperature: 0,
        }),
      });
      const body = await response.json();
      if (!response.ok) { answer.textContent = "Error: " + (body.error ? body.error.message : response.status); return; }
      answer.textContent = body.choices[0].message.content;
      answer.dataset.seconds = ((performance.now() - started) / 1000).toFixed(1);
    } catch (error) {
      answer.textContent = "Error: " + error;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.getElementById("download");
  if (section) watchDownload(section);
  document.querySelectorAll("[data-copy]").forEach((b) => b.addEventListener("click", () => copyText(b.dataset.copy, b)));
  const form = document.getElementById("try");
  if (form) tryIt(form);
});
