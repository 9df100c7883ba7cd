// Builds expman serve's page into expman/dashboard/static/: one JS bundle (our
// sources + uPlot from node_modules), one CSS file, index.html, an icon.
// Run by `npm run build` (setup.py runs it when the bundle is missing).
import { build } from "esbuild";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "static");
mkdirSync(out, { recursive: true });
await build({
  entryPoints: { app: join(here, "src", "main.js") },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2020"],
  outdir: out,
  legalComments: "linked",   // uPlot's MIT notice ships beside the bundle
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));
writeFileSync(join(out, "favicon.svg"),
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><path d="M1 14 L5 8 L9 10 L15 2" ' +
  'stroke="#2563eb" stroke-width="2" fill="none"/></svg>\n');
