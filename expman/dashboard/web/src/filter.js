// The runs view's param expression: clauses like `lr < 0.01`, `model == "CNN"`,
// `data.features >= 4`, joined by `and` (or `&&`, `,`). A key is looked up in the
// flattened params, then in the last metric values; `name` and `status` work too.

const CLAUSE = /^\s*([A-Za-z_][\w.\-/]*)\s*(<=|>=|==|!=|=|<|>|~)\s*(.+?)\s*$/;

export function parseExpr(text) {
  const parts = text.split(/\s+and\s+|&&|,/i).map((s) => s.trim()).filter(Boolean);
  return parts.map((p) => {
    const m = CLAUSE.exec(p);
    if (!m) throw new Error(`cannot read "${p}": write key op value, e.g. lr < 0.01`);
    let value = m[3];
    if (/^(["']).*\1$/.test(value)) value = value.slice(1, -1);
    else if (value !== "" && !isNaN(Number(value))) value = Number(value);
    else if (value === "true" || value === "false") value = value === "true";
    return { key: m[1], op: m[2], value };
  });
}

function lookup(row, key) {
  if (key in row.flatParams) return row.flatParams[key];
  if (row.last_metrics && key in row.last_metrics) return row.last_metrics[key];
  if (key === "name" || key === "run") return row.run_name;
  if (key === "experiment") return row.experiment;
  if (key === "status") return row.status;
  // a unique last segment: `lr` matches `optimizer.lr`
  const hits = Object.keys(row.flatParams).filter((k) => k.endsWith(`.${key}`));
  return hits.length === 1 ? row.flatParams[hits[0]] : undefined;
}

export function matches(row, clauses) {
  return clauses.every(({ key, op, value }) => {
    const v = lookup(row, key);
    if (v === undefined) return false;
    if (op === "~") return String(v).toLowerCase().includes(String(value).toLowerCase());
    const a = typeof value === "number" && typeof v !== "number" ? Number(v) : v;
    const b = typeof v === "number" && typeof value !== "number" ? Number(value) : value;
    switch (op) {
      case "<": return a < b;
      case "<=": return a <= b;
      case ">": return a > b;
      case ">=": return a >= b;
      case "==": case "=": return typeof a === "number" ? a === b : String(a) === String(b);
      case "!=": return typeof a === "number" ? a !== b : String(a) !== String(b);
    }
    return false;
  });
}
