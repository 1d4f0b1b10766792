import assert from "node:assert/strict";
import { trimMalloc, tuneMalloc } from "./_malloc.ts";

const linux = Deno.build.os === "linux";

Deno.test("tuneMalloc() sets the mmap threshold and arena count on glibc Linux", {
  ignore: !linux,
}, () => {
  const t = tuneMalloc({ env: () => undefined });
  assert.deepEqual(t, { mmapThreshold: 128 * 1024, arenaMax: 2, skipped: null });
});

Deno.test("tuneMalloc() leaves to the environment each setting it gives", {
  ignore: !linux,
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

Deno.test("trimMalloc() reaches glibc on Linux with --allow-ffi", { ignore: !linux }, () => {
  assert.equal(trimMalloc(), true);
});

Deno.test("tuneMalloc() says why it skips without --allow-ffi", async () => {
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-malloc-" });
  try {
    const script = `${dir}/child.ts`;
    await Deno.writeTextFile(
      script,
      `import { tuneMalloc } from ${JSON.stringify(new URL("./_malloc.ts", import.meta.url).href)};
console.log(JSON.stringify(tuneMalloc({ env: () => undefined })));`,
    );
    // `deno run` grants nothing unasked, and --no-prompt makes a request fail instead of asking.
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.success, true, new TextDecoder().decode(out.stderr));
    const t = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.equal(t.mmapThreshold, null);
    assert.match(t.skipped, linux ? /no --allow-ffi/ : /not Linux/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
