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

/** The README's `## Totals for Grafana` section. */
function totalsSection(): string {
  const start = readme.indexOf("## Totals for Grafana");
  assert.ok(start >= 0, "README has a Totals for Grafana section");
  const end = readme.indexOf("\n## ", start + 1);
  return readme.slice(start, end < 0 ? undefined : end);
}

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

Deno.test("README figure tables hold only numbers from the results files named beside them", async (t) => {
  const tables = figureTables(totalsSection());
  await t.step("the query table and the disk tables each name their results file", () => {
    assert.ok(tables.length >= 2, `found ${tables.length} tables naming a results file`);
  });
  for (const [index, table] of tables.entries()) {
    await t.step(`table ${index + 1} (${table.files.join(", ")})`, async () => {
      const known = new Set<number>();
      for (const file of table.files) {
        const text = await Deno.readTextFile(new URL(`../${file}`, import.meta.url));
        for (const m of text.matchAll(/-?\d+(?:\.\d+)?/g)) known.add(Number(m[0]));
      }
      // Body rows only; labels such as 1M, 7d or x8 are not figures and are skipped.
      const missing: string[] = [];
      for (const row of table.rows.slice(2)) {
        for (const m of row.matchAll(/(?<![\w.])\d[\d,]*(?:\.\d+)?(?![\w.])/g)) {
          if (!known.has(Number(m[0].replaceAll(",", "")))) missing.push(m[0]);
        }
      }
      assert.deepEqual(missing, [], "README numbers not found in the results file");
    });
  }
});
