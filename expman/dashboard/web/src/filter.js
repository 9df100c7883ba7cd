// The runs view's param expression: clauses like `lr < 0.01`, `model == "CNN"`,
// `data.features >= 4`, joined by `and` (or `&&`, `,`) and `or` (or `||`); `and`
// binds tighter, as in Python. A key is looked up in the flattened params, then in
// the last metric values; `name` and `status` work too. Whatever cannot be read
// (parentheses, a missing value, two clauses with nothing between) is an error.

const CLAUSE = /^\s*([A-Za-z_][\w.\-/]*)\s*(<=|>=|==|!=|=|<|>|~)\s*(.+?)\s*$/;
const JOIN = /^(?:\s+(and|or)(?=\s|$)|\s*(&&|\|\||,))/i;

// text -> [[clause, ...], ...]: a run matches when every clause of some group does
export function parseExpr(text) {
  const groups = [[]];
  let piece = "", quote = "", joiner = "";
  const close = (next) => {
    if (!piece.trim()) {
      throw new Error(joiner ? `nothing after "${joiner}"` : `nothing before "${next}"`);
    }
    groups[groups.length - 1].push(clause(piece.trim()));
    piece = "";
  };
  for (let i = 0; i < text.length;) {
    const ch = text[i];
    if (quote) { piece += ch; if (ch === quote) quote = ""; i++; continue; }
    if (ch === '"' || ch === "'") { quote = ch; piece += ch; i++; continue; }
    if (ch === "(" || ch === ")") {
      throw new Error(`parentheses are not supported: write a and b or c (and binds tighter)`);
    }
    const m = JOIN.exec(text.slice(i));
    if (m) {
      const word = (m[1] || m[2]).toLowerCase();
      close(word);
      joiner = word;
      if (word === "or" || word === "||") groups.push([]);
      i += m[0].length;
      continue;
    }
    piece += ch;
    i++;
  }
  if (quote) throw new Error(`unclosed ${quote} in "${piece.trim()}"`);
  if (piece.trim() || joiner) close("");
  return groups.filter((g) => g.length);
}

function clause(p) {
  const m = CLAUSE.exec(p);
  if (!m) throw new Error(`cannot read "${p}": write key op value, e.g. lr < 0.01`);
  let value = m[3];
  if (/^(["']).*\1$/.test(value)) value = value.slice(1, -1);
  else if (/[<>=!~]/.test(value)) {
    throw new Error(`cannot read "${p}": a missing and/or? (quote a value holding < > = ! ~)`);
  }
  else if (value !== "" && !isNaN(Number(value))) value = Number(value);
  else if (value === "true" || value === "false") value = value === "true";
  return { key: m[1], op: m[2], value };
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

export function matches(row, groups) {
  return groups.some((clauses) => clauses.every((c) => holds(row, c)));
}

function holds(row, { key, op, value }) {
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
}
