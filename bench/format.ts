// Plain-text tables for the benchmark reports.

/** A number with `digits` decimals; '-' when there is none (or it is not finite). */
export function fmt(n: number | undefined, digits: number): string {
  return n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(digits);
}

/** a / b as '1.23x'; '-' when either is missing or b is 0. */
export function ratio(a: number | undefined, b: number | undefined): string {
  return a === undefined || b === undefined || b === 0 ? '-' : `${(a / b).toFixed(2)}x`;
}

/** Columns aligned: the first `leftColumns` padded on the right (names), the rest on the left (figures). */
export function table(rows: readonly (readonly string[])[], leftColumns = 2): string {
  const widths: number[] = [];
  for (const row of rows) for (let i = 0; i < row.length; i++) widths[i] = Math.max(widths[i] ?? 0, row[i]!.length);
  return rows
    .map((row) =>
      row
        .map((cell, i) => (i < leftColumns ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}
