// Debiased exponential moving average, as TensorBoard smooths scalars: the
// average starts at zero and is divided by (1 - w^n), so the first points are
// not pulled toward zero. Non-finite values pass through and do not count.
export function emaDebiased(values, weight) {
  const out = new Array(values.length);
  if (!(weight > 0)) return values.slice();
  let last = 0;
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || !isFinite(v)) { out[i] = v; continue; }
    last = last * weight + (1 - weight) * v;
    n++;
    out[i] = weight === 1 ? last : last / (1 - Math.pow(weight, n));
  }
  return out;
}
