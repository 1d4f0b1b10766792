/**
 * The README documents behaviour; these checks keep it true to the code.
 */
import assert from "node:assert/strict";
import { SETTINGS } from "../lib/config.ts";

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
