/**
 * The Prometheus text exposition format (version 0.0.4) for counters, gauges
 * and histograms, with label values escaped as the format requires.
 *
 * Written here rather than taken from npm: `prom-client`'s dependency tree
 * makes `deno compile` (Deno 2.9) overflow its stack, and anonymizer must
 * ship as one executable.
 *
 * @module
 */

type Labels = Record<string, string>;

interface Metric {
  readonly name: string;
  collect(): Promise<void> | void;
  render(): string;
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function labelText(labels: Labels): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return "";
  return `{${entries.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`;
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/** Holds metrics and renders them for a scrape. */
export class Registry {
  readonly #metrics: Metric[] = [];
  /** The content type of {@linkcode Registry.metrics}. */
  readonly contentType = "text/plain; version=0.0.4; charset=utf-8";

  /** Adds a metric; names must be unique. */
  register(metric: Metric): void {
    if (this.#metrics.some((m) => m.name === metric.name)) {
      throw new Error(`Cannot register metric ${metric.name} twice`);
    }
    this.#metrics.push(metric);
  }

  /** Runs every collector, then renders all metrics. */
  async metrics(): Promise<string> {
    for (const m of this.#metrics) await m.collect();
    return this.#metrics.map((m) => m.render()).join("");
  }
}

interface BaseOptions {
  name: string;
  help: string;
  registry: Registry;
  labelNames?: readonly string[];
}

abstract class Base implements Metric {
  readonly name: string;
  readonly #help: string;
  readonly #type: string;
  protected readonly values = new Map<string, { labels: Labels; value: number }>();

  constructor(type: string, options: BaseOptions) {
    this.name = options.name;
    this.#help = options.help;
    this.#type = type;
    options.registry.register(this);
  }

  collect(): Promise<void> | void {}

  protected header(): string {
    return `# HELP ${this.name} ${escapeHelp(this.#help)}\n# TYPE ${this.name} ${this.#type}\n`;
  }

  protected add(labels: Labels, delta: number, replace: boolean): void {
    const key = labelText(labels);
    const cur = this.values.get(key);
    if (cur === undefined) this.values.set(key, { labels, value: delta });
    else cur.value = replace ? delta : cur.value + delta;
  }

  render(): string {
    let out = this.header();
    if (this.values.size === 0 && this.#type !== "histogram") out += `${this.name} 0\n`;
    for (const { labels, value } of this.values.values()) {
      out += `${this.name}${labelText(labels)} ${formatValue(value)}\n`;
    }
    return out;
  }
}

/** A monotonically increasing count. */
export class Counter extends Base {
  readonly #total: (() => number) | undefined;

  /**
   * A counter registered in `options.registry`. With `total`, the count is
   * kept elsewhere (e.g. CPU time by the OS) and read at scrape time.
   */
  constructor(options: BaseOptions & { total?: () => number }) {
    super("counter", options);
    this.#total = options.total;
  }

  override collect(): void {
    if (this.#total !== undefined) this.add({}, this.#total(), true);
  }

  /** Adds `n` (default 1) to the series with `labels`. */
  inc(labels: Labels = {}, n = 1): void {
    if (n < 0) throw new RangeError(`Cannot decrease counter ${this.name} by ${n}`);
    this.add(labels, n, false);
  }
}

/** A value that goes up and down, optionally refreshed at scrape time by `collect`. */
export class Gauge extends Base {
  readonly #collect: ((g: Gauge) => Promise<void> | void) | undefined;

  /** A gauge registered in `options.registry`. */
  constructor(options: BaseOptions & { collect?: (g: Gauge) => Promise<void> | void }) {
    super("gauge", options);
    this.#collect = options.collect;
  }

  override collect(): Promise<void> | void {
    return this.#collect?.(this);
  }

  /** Sets the series with `labels` (default none) to `value`. */
  set(value: number, labels: Labels = {}): void {
    this.add(labels, value, true);
  }

  /** Removes every series, before a collector sets the current ones. */
  reset(): void {
    this.values.clear();
  }
}

/** Observations counted into cumulative buckets, with their sum and count. */
export class Histogram extends Base {
  readonly #buckets: number[];
  readonly #counts: number[];
  #sum = 0;
  #count = 0;

  /** A histogram with upper bounds `buckets` (ascending), registered in `options.registry`. */
  constructor(options: BaseOptions & { buckets: readonly number[] }) {
    super("histogram", options);
    this.#buckets = [...options.buckets].sort((a, b) => a - b);
    this.#counts = this.#buckets.map(() => 0);
  }

  /** Records one observation. */
  observe(value: number): void {
    for (let i = 0; i < this.#buckets.length; i++) {
      if (value <= this.#buckets[i]!) this.#counts[i]!++;
    }
    this.#sum += value;
    this.#count++;
  }

  override render(): string {
    let out = this.header();
    this.#buckets.forEach((b, i) =>
      out += `${this.name}_bucket{le="${formatValue(b)}"} ${this.#counts[i]}\n`
    );
    out += `${this.name}_bucket{le="+Inf"} ${this.#count}\n`;
    out += `${this.name}_sum ${formatValue(this.#sum)}\n${this.name}_count ${this.#count}\n`;
    return out;
  }
}
