import assert from "node:assert/strict";
import { tuneMalloc } from "./_malloc.ts";

Deno.test("tuneMalloc() sets the mmap threshold and arena count on glibc Linux", {
  ignore: Deno.build.os !== "linux",
}, () => {
  const t = tuneMalloc({ env: () => undefined });
  assert.deepEqual(t, { mmapThreshold: 128 * 1024, arenaMax: 2, skipped: null });
});

Deno.test("tuneMalloc() leaves to the environment each setting it gives", {
  ignore: Deno.build.os !== "linux",
}, async (t) => {
  await t.step("only the arena count given", () => {
    const set = tuneMalloc({ env: (name) => name === "MALLOC_ARENA_MAX" ? "4" : undefined });
    assert.deepEqual(set, { mmapThreshold: 128 * 1024, arenaMax: null, skipped: null });
  });
  await t.step("both given", () => {
    const set = tuneMalloc({ env: () => "65536" });
    assert.deepEqual(set, { mmapThreshold: null, arenaMax: null, skipped: null });
  });
});
