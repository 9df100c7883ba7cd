// Light or dark: the system's choice (prefers-color-scheme), unless the header's
// toggle said otherwise; that choice is kept in localStorage (`expman.theme`) only
// while it differs from the system's, so flipping back follows the system again.
// Charts take their axis and grid colours from the theme when drawn, and are
// drawn again on a change (the "expman-theme" event).
const KEY = "expman.theme";
const media = window.matchMedia("(prefers-color-scheme: dark)");

function system() { return media.matches ? "dark" : "light"; }

function stored() {
  try { const t = localStorage.getItem(KEY); return t === "dark" || t === "light" ? t : null; } catch { return null; }
}

export function theme() { return document.documentElement.dataset.theme || system(); }

function apply() {
  const t = stored() || system();
  if (document.documentElement.dataset.theme === t) return;
  document.documentElement.dataset.theme = t;
  const button = document.getElementById("theme-toggle");
  if (button) {
    button.textContent = t === "dark" ? "☀" : "☾";
    button.title = `${t} theme${stored() ? "" : " (the system's)"}: switch to ${t === "dark" ? "light" : "dark"}`;
  }
  window.dispatchEvent(new Event("expman-theme"));
}

export function initTheme() {
  document.getElementById("theme-toggle")?.addEventListener("click", () => {
    const next = theme() === "dark" ? "light" : "dark";
    try { if (next === system()) localStorage.removeItem(KEY); else localStorage.setItem(KEY, next); } catch { /* off */ }
    document.documentElement.dataset.theme = "";
    apply();
  });
  media.addEventListener("change", () => { document.documentElement.dataset.theme = ""; apply(); });
  apply();
}

// a colour of the theme (a CSS variable of style.css)
export function themeColor(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}
