/**
 * The README documents behaviour; these checks keep it true to the code.
 */
import assert from "node:assert/strict";
import { SETTINGS } from "../lib/settings.ts";

const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
const denoJson = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));

Deno.test("README documents every setting with its flag and default", async (t) => {
  const rows = new Map<string, string[]>();
  for (const line of readme.split("\n")) {
    const m = /^\| `([A-Z_]+)` \| `(--[a-z-]+)` \| `([^`]*)` \| (.*) \|$/.exec(line);
    if (m) rows.set(m[1]!, [m[2]!, m[3]!, m[4]!]);
  }
  await t.step("no setting is missing or extra", () => {
    assert.deepEqual([...rows.keys()].sort(), SETTINGS.map((s) => s.env).sort());
  });
  await t.step("flags, defaults and descriptions match lib/config.ts", () => {
    for (const s of SETTINGS) {
      assert.deepEqual(rows.get(s.env), [`--${s.flag}`, s.default, s.help], s.env);
    }
  });
});

Deno.test("README names only tasks that deno.json defines", () => {
  const named = [...readme.matchAll(/deno(?:@[\d.]+)? task ([a-z0-9:]+)/g)].map((m) => m[1]!);
  const tableTasks = [...readme.matchAll(/`(bench:[a-z0-9]+)`/g)].map((m) => m[1]!);
  const missing = [...new Set([...named, ...tableTasks])].filter((t) => !(t in denoJson.tasks));
  assert.deepEqual(missing, []);
  assert.ok(
    named.includes("demo") && named.includes("test"),
    "the two setup commands are documented",
  );
});

/** The documents whose figure tables must come from recorded runs. */
const FIGURE_DOCUMENTS = ["README.md", "docs/performance.md", "docs/capacity.md", "docs/wire.md"];

/** Each markdown table with the `bench/results/*.json` files named in the paragraph above it. */
function figureTables(text: string): { files: string[]; rows: string[] }[] {
  const tables: { files: string[]; rows: string[] }[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (!lines[i]!.startsWith("|") || lines[i - 1]?.startsWith("|")) continue;
    // The paragraph just above the table, past the blank line markdown needs before it.
    let j = i - 1;
    while (j >= 0 && lines[j]!.trim() === "") j--;
    let above = "";
    for (; j >= 0 && lines[j]!.trim() !== ""; j--) above = lines[j] + "\n" + above;
    const rows = [];
    for (let k = i; k < lines.length && lines[k]!.startsWith("|"); k++) rows.push(lines[k]!);
    const files = [...above.matchAll(/bench\/results\/[\w.-]+\.json/g)].map((m) => m[0]);
    if (files.length > 0) tables.push({ files, rows });
  }
  return tables;
}

/** The figures of a table's body: every cell but the first (a label) and code cells (commands). */
function figures(rows: string[]): string[] {
  const found: string[] = [];
  for (const row of rows.slice(2)) {
    const cells = row.split("|").slice(2, -1).filter((cell) => !cell.includes("`"));
    for (const cell of cells) {
      // Labels such as 1M, 7d or x8 are not figures and are skipped.
      for (const m of cell.matchAll(/(?<![\w.])\d[\d,]*(?:\.\d+)?(?![\w.])/g)) found.push(m[0]);
    }
  }
  return found;
}

Deno.test("figure tables in README and docs hold only numbers from the results files named beside them", async (t) => {
  for (const document of FIGURE_DOCUMENTS) {
    const text = await Deno.readTextFile(new URL(`../${document}`, import.meta.url));
    const tables = figureTables(text);
    for (const [index, table] of tables.entries()) {
      await t.step(`${document} table ${index + 1} (${table.files.join(", ")})`, async () => {
        const known = new Set<number>();
        for (const file of table.files) {
          const json = await Deno.readTextFile(new URL(`../${file}`, import.meta.url));
          for (const m of json.matchAll(/-?\d+(?:\.\d+)?/g)) known.add(Number(m[0]));
        }
        const missing = figures(table.rows).filter((f) =>
          !known.has(Number(f.replaceAll(",", "")))
        );
        assert.deepEqual(missing, [], `${document} numbers not found in ${table.files.join(", ")}`);
      });
    }
  }
  await t.step("the README's Totals for Grafana section has its query and disk tables", () => {
    const start = readme.indexOf("## Totals for Grafana");
    const end = readme.indexOf("\n## ", start + 1);
    assert.ok(start >= 0, "README has a Totals for Grafana section");
    const tables = figureTables(readme.slice(start, end < 0 ? undefined : end));
    assert.ok(tables.length >= 2, `found ${tables.length} tables naming a results file`);
  });
});
