import assert from "node:assert/strict";
import { Counter, Gauge, Histogram, Registry } from "./_prometheus.ts";

Deno.test("Registry.metrics() renders the Prometheus text format", async (t) => {
  const registry = new Registry();
  const c = new Counter({ name: "x_total", help: "a count", registry });
  const g = new Gauge({
    name: "g",
    help: "a gauge\\with backslash",
    registry,
    collect: (gg) => gg.set(7, { p: "0" }),
  });
  const h = new Histogram({ name: "h", help: "h", registry, buckets: [1, 5] });
  new Counter({ name: "os_total", help: "kept elsewhere", registry, total: () => 42.5 });
  await t.step("counters add per label set and start at 0", async () => {
    assert.match(await registry.metrics(), /^x_total 0$/m);
    c.inc();
    c.inc({ reason: 'a"b\\c\nd' }, 2);
    const text = await registry.metrics();
    assert.match(text, /^# TYPE x_total counter$/m);
    assert.match(text, /^x_total\{\} 1$|^x_total 1$/m);
    assert.ok(text.includes('x_total{reason="a\\"b\\\\c\\nd"} 2'), text);
    assert.throws(() => c.inc({}, -1), RangeError);
  });
  await t.step("gauges are set by collectors at scrape time", async () => {
    const text = await registry.metrics();
    assert.match(text, /^g\{p="0"\} 7$/m);
    assert.match(text, /^# HELP g a gauge\\\\with backslash$/m);
    g.reset();
  });
  await t.step("histograms are cumulative with +Inf, sum and count", async () => {
    h.observe(0.5);
    h.observe(3);
    h.observe(9);
    const text = await registry.metrics();
    assert.match(text, /^h_bucket\{le="1"\} 1$/m);
    assert.match(text, /^h_bucket\{le="5"\} 2$/m);
    assert.match(text, /^h_bucket\{le="\+Inf"\} 3$/m);
    assert.match(text, /^h_sum 12.5$/m);
    assert.match(text, /^h_count 3$/m);
  });
  await t.step("a counter kept elsewhere is read at scrape time", async () => {
    assert.match(await registry.metrics(), /^os_total 42.5$/m);
  });
  await t.step("a name registers once", () => {
    assert.throws(() => new Gauge({ name: "g", help: "again", registry }));
  });
});
