import { describe, expect, it } from 'vitest';
import { renderReport, type Results } from '../../scripts/bench/report.js';
import { lineChart } from '../../scripts/bench/svg-chart.js';

const spread = (median: number) => ({ median, min: median * 0.9, max: median * 1.1, n: 3 });

/** One size, pinned: haul's lazy window twice CRIU alone's, its pre-copy total 1.05 times. */
function results(): Results {
  const base = { placement: 'pinned' as const, mib: 1024, runs: [], stallMs: spread(1), throughputMBps: spread(100), allIntact: true };
  return {
    generated: '2026-12-04T00:00:00.000Z', quick: false, minutes: 1, machine: { cores: 2 },
    migrate: {
      repetitions: 3, pinning: { source: 'CPU 0', destination: 'CPU 1' },
      cases: [
        { ...base, name: 'criu-pre-copy-held', totalMs: spread(1000), downtimeMs: spread(900) },
        { ...base, name: 'haul-pre-copy', totalMs: spread(1050), downtimeMs: spread(950), proxyPeakRssMib: spread(140), cachePeakRssMib: spread(130) },
        { ...base, name: 'criu-lazy-all', totalMs: spread(2000), downtimeMs: spread(100), windowMs: spread(1000), faultP50Us: spread(1), faultP99Us: spread(10) },
        { ...base, name: 'haul-lazy-all', totalMs: spread(3000), downtimeMs: spread(150), windowMs: spread(2000), faultP50Us: spread(2), faultP99Us: spread(20) },
      ],
    },
  };
}

describe('the benchmark report', () => {
  it('says which targets were met and which missed, from the medians of the same run', () => {
    const { markdown } = renderReport(results());
    expect(markdown).toMatch(/\| Post-copy window at 1 GiB ≤ 1\.2× CRIU alone's \(pinned\) \| 2\.00× \| \*\*missed\*\* \|/);
    expect(markdown).toMatch(/\| Pre-copy total ≤ 1\.1× CRIU alone with its source held, pinned per side, at every size \| 1024 MiB 1\.05× \| met \|/);
    // what this run did not measure is said so, not counted as met
    expect(markdown).toMatch(/Peak RSS .* \| not measured in this run \|/);
    expect(markdown).toContain('](docs/performance.md)');
  });

  it('draws the pictures it links', () => {
    const { markdown, pictures } = renderReport(results());
    for (const name of Object.keys(pictures)) expect(markdown).toContain(`bench/${name}`);
    expect(Object.keys(pictures)).toEqual(expect.arrayContaining(['downtime-pinned.svg', 'window-pinned.svg', 'fault-latency.svg']));
  });
});

describe('a line chart', () => {
  it('marks every point of every series, and escapes what it is given', () => {
    const svg = lineChart({ title: 'a <b> & c', xLabel: 'MiB', yLabel: 'ms', xLog2: true, series: [{ name: 'one', points: [[64, 10], [2048, 40]] }, { name: 'two', points: [[64, 5]] }] });
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.match(/<circle /g)).toHaveLength(3);
    expect(svg).toContain('a &lt;b&gt; &amp; c');
    expect(svg).not.toContain('NaN');
  });
});
