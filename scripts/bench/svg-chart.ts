/**
 * The benchmark report's pictures: a line chart (a measure against workload size, one line per
 * method) and a grouped bar chart, as standalone SVG text. Small on purpose: axes, ticks, a legend.
 */

export interface Series {
  readonly name: string;
  readonly points: ReadonlyArray<readonly [number, number]>;
}

export interface LineChart {
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly series: readonly Series[];
  /** Sizes double from one case to the next: a base-2 axis spaces them evenly. */
  readonly xLog2?: boolean;
}

export interface BarChart {
  readonly title: string;
  readonly yLabel: string;
  readonly groups: readonly string[];
  readonly series: ReadonlyArray<{ readonly name: string; readonly values: readonly number[] }>;
  /** Values far apart (µs and ms): a base-10 axis. */
  readonly yLog10?: boolean;
}

const WIDTH = 720;
const HEIGHT = 420;
const MARGIN = { left: 80, right: 200, top: 40, bottom: 60 };
const COLOURS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#17becf'];
const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;

const escape = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const fmt = (value: number): string => (Math.abs(value) >= 100 ? String(Math.round(value)) : String(Math.round(value * 100) / 100));

/** Round numbers to mark an axis from 0 to `max`. */
function niceTicks(max: number): number[] {
  if (!(max > 0)) return [0, 1];
  const step0 = max / 5;
  const magnitude = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= step0)!;
  const ticks = [];
  for (let tick = 0; tick <= max + step / 2; tick += step) ticks.push(tick);
  if (ticks[ticks.length - 1]! < max) ticks.push(ticks[ticks.length - 1]! + step);
  return ticks;
}

function frame(title: string, xLabel: string, yLabel: string, body: string[]): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${MARGIN.left}" y="24" font-size="15" font-weight="bold">${escape(title)}</text>`,
    `<text x="${MARGIN.left + plotWidth / 2}" y="${HEIGHT - 16}" text-anchor="middle">${escape(xLabel)}</text>`,
    `<text transform="translate(18 ${MARGIN.top + plotHeight / 2}) rotate(-90)" text-anchor="middle">${escape(yLabel)}</text>`,
    `<line x1="${MARGIN.left}" y1="${MARGIN.top + plotHeight}" x2="${MARGIN.left + plotWidth}" y2="${MARGIN.top + plotHeight}" stroke="black"/>`,
    `<line x1="${MARGIN.left}" y1="${MARGIN.top}" x2="${MARGIN.left}" y2="${MARGIN.top + plotHeight}" stroke="black"/>`,
    ...body,
    '</svg>',
    '',
  ].join('\n');
}

function legend(names: readonly string[]): string[] {
  return names.flatMap((name, i) => {
    const y = MARGIN.top + 10 + i * 20;
    const x = MARGIN.left + plotWidth + 16;
    return [`<rect x="${x}" y="${y - 9}" width="14" height="10" fill="${COLOURS[i % COLOURS.length]}"/>`, `<text x="${x + 20}" y="${y}">${escape(name)}</text>`];
  });
}

export function lineChart(chart: LineChart): string {
  const xs = [...new Set(chart.series.flatMap((s) => s.points.map(([x]) => x)))].sort((a, b) => a - b);
  const toX = chart.xLog2 ? (x: number) => Math.log2(x) : (x: number) => x;
  const [xMin, xMax] = [toX(xs[0] ?? 1), toX(xs[xs.length - 1] ?? 2)];
  const yTicks = niceTicks(Math.max(0, ...chart.series.flatMap((s) => s.points.map(([, y]) => y))));
  const yMax = yTicks[yTicks.length - 1]!;
  const px = (x: number): number => MARGIN.left + (xMax === xMin ? plotWidth / 2 : ((toX(x) - xMin) / (xMax - xMin)) * plotWidth);
  const py = (y: number): number => MARGIN.top + plotHeight - (y / yMax) * plotHeight;
  const body: string[] = [];
  for (const tick of yTicks) {
    body.push(`<line x1="${MARGIN.left}" y1="${py(tick)}" x2="${MARGIN.left + plotWidth}" y2="${py(tick)}" stroke="#ddd"/>`);
    body.push(`<text x="${MARGIN.left - 6}" y="${py(tick) + 4}" text-anchor="end">${fmt(tick)}</text>`);
  }
  for (const x of xs) body.push(`<text x="${px(x)}" y="${MARGIN.top + plotHeight + 18}" text-anchor="middle">${fmt(x)}</text>`);
  chart.series.forEach((series, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const points = [...series.points].sort((a, b) => a[0] - b[0]);
    if (points.length > 1) body.push(`<polyline fill="none" stroke="${colour}" stroke-width="2" points="${points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ')}"/>`);
    for (const [x, y] of points) body.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3.5" fill="${colour}"><title>${escape(`${series.name}: ${fmt(y)} at ${fmt(x)}`)}</title></circle>`);
  });
  return frame(chart.title, chart.xLabel, chart.yLabel, [...body, ...legend(chart.series.map((s) => s.name))]);
}

export function barChart(chart: BarChart): string {
  const values = chart.series.flatMap((s) => s.values).filter((v) => Number.isFinite(v));
  const body: string[] = [];
  let py: (y: number) => number;
  if (chart.yLog10) {
    const positive = values.filter((v) => v > 0);
    const low = Math.floor(Math.log10(Math.min(...positive, 1)));
    const high = Math.ceil(Math.log10(Math.max(...positive, 10)));
    py = (y) => MARGIN.top + plotHeight - ((Math.log10(Math.max(y, 10 ** low)) - low) / (high - low)) * plotHeight;
    for (let e = low; e <= high; e++) {
      body.push(`<line x1="${MARGIN.left}" y1="${py(10 ** e)}" x2="${MARGIN.left + plotWidth}" y2="${py(10 ** e)}" stroke="#ddd"/>`);
      body.push(`<text x="${MARGIN.left - 6}" y="${py(10 ** e) + 4}" text-anchor="end">${fmt(10 ** e)}</text>`);
    }
  } else {
    const ticks = niceTicks(Math.max(0, ...values));
    const max = ticks[ticks.length - 1]!;
    py = (y) => MARGIN.top + plotHeight - (y / max) * plotHeight;
    for (const tick of ticks) {
      body.push(`<line x1="${MARGIN.left}" y1="${py(tick)}" x2="${MARGIN.left + plotWidth}" y2="${py(tick)}" stroke="#ddd"/>`);
      body.push(`<text x="${MARGIN.left - 6}" y="${py(tick) + 4}" text-anchor="end">${fmt(tick)}</text>`);
    }
  }
  const groupWidth = plotWidth / Math.max(1, chart.groups.length);
  const barWidth = (groupWidth * 0.8) / Math.max(1, chart.series.length);
  chart.groups.forEach((group, g) => {
    const left = MARGIN.left + g * groupWidth + groupWidth * 0.1;
    body.push(`<text x="${left + groupWidth * 0.4}" y="${MARGIN.top + plotHeight + 18}" text-anchor="middle">${escape(group)}</text>`);
    chart.series.forEach((series, i) => {
      const value = series.values[g];
      if (value === undefined || !Number.isFinite(value)) return;
      const top = py(value);
      body.push(`<rect x="${(left + i * barWidth).toFixed(1)}" y="${top.toFixed(1)}" width="${(barWidth - 2).toFixed(1)}" height="${(MARGIN.top + plotHeight - top).toFixed(1)}" fill="${COLOURS[i % COLOURS.length]}"><title>${escape(`${series.name}, ${group}: ${fmt(value)}`)}</title></rect>`);
    });
  });
  return frame(chart.title, '', chart.yLabel, [...body, ...legend(chart.series.map((s) => s.name))]);
}
