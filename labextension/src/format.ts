/**
 * Human formatting of bytes, seconds, sizes and power laws: the same words as the Python side
 * (`torchreview_lab/measure/_format.py`, `PowerLawFit.big_o`), so panel and CLI agree.
 */

function sig3(x: number): string {
  // Python's '{:.3g}': 3 significant digits, no trailing zeros.
  return String(Number(x.toPrecision(3)));
}

export function fmtBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) {
    return '-';
  }
  const units: [string, number][] = [
    ['TB', 1e12],
    ['GB', 1e9],
    ['MB', 1e6],
    ['kB', 1e3]
  ];
  for (const [unit, scale] of units) {
    if (Math.abs(n) >= scale) {
      return `${sig3(n / scale)} ${unit}`;
    }
  }
  return `${Math.round(n)} B`;
}

export function fmtSeconds(s: number | null | undefined): string {
  if (s === null || s === undefined || !Number.isFinite(s)) {
    return '-';
  }
  if (s >= 3600) {
    return `${sig3(s / 3600)} h`;
  }
  if (s >= 60) {
    return `${sig3(s / 60)} min`;
  }
  if (s >= 1) {
    return `${sig3(s)} s`;
  }
  if (s >= 1e-3) {
    return `${sig3(s * 1e3)} ms`;
  }
  return `${sig3(s * 1e6)} µs`;
}

/** T with thousands separators (rounded to 3 significant digits when large: an estimate). */
export function fmtSize(t: number | null | undefined, estimate = false): string {
  if (t === null || t === undefined || !Number.isFinite(t)) {
    return '-';
  }
  let v = t;
  if (estimate && v >= 1000) {
    const digits = Math.floor(Math.log10(v)) - 2;
    v = Math.round(v / 10 ** digits) * 10 ** digits;
  }
  return Math.round(v).toLocaleString('en-US');
}

/** `O(T^1.00)`, or `O(1)` for a flat law. */
export function bigO(exponent: number | null | undefined): string {
  if (exponent === null || exponent === undefined || !Number.isFinite(exponent)) {
    return 'O(?)';
  }
  return Math.abs(exponent) < 0.05 ? 'O(1)' : `O(T^${exponent.toFixed(2)})`;
}
