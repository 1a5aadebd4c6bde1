// medfed dashboard: refresh the live parts of a page while a study runs (no page reload).
// An element with data-live="URL" and data-status="running" is replaced every data-interval ms
// by the HTML fragment that URL returns; polling stops once the fragment's status is not running.
"use strict";

function watch(element) {
  const interval = Number(element.dataset.interval || 1000);
  if (element.dataset.status !== "running") return;
  setTimeout(async () => {
    let next = element;
    try {
      const reply = await fetch(element.dataset.live, { cache: "no-store" });
      if (reply.ok) {
        const holder = document.createElement("template");
        holder.innerHTML = (await reply.text()).trim();
        next = holder.content.firstElementChild;
        element.replaceWith(next);
        document.dispatchEvent(new CustomEvent("medfed:updated", { detail: next.id }));
      }
    } catch (error) {
      // the dashboard was stopped or restarted: keep the page and try again
    }
    watch(next);
  }, interval);
}

document.querySelectorAll("[data-live]").forEach(watch);
