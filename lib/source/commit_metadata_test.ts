import assert from "node:assert/strict";
import { formatMetadata, parseMetadata, resolvePending, takeOver } from "./commit_metadata.ts";

Deno.test("formatMetadata() and parseMetadata() round-trip and reject foreign metadata", () => {
  const meta = { committer: "a", handovers: [[150n, "b"], [100n, "c"]] as Array<[bigint, string]> };
  assert.deepEqual(parseMetadata(formatMetadata(meta)), meta);
  assert.equal(parseMetadata(""), null);
  assert.equal(parseMetadata(null), null);
  assert.equal(parseMetadata("not json"), null);
  assert.equal(parseMetadata('{"other":1}'), null);
  const long = {
    committer: "a",
    handovers: Array.from({ length: 20 }, (_, i) => [BigInt(i), "x"] as [bigint, string]),
  };
  assert.equal(parseMetadata(formatMetadata(long))!.handovers.length, 10);
});

Deno.test("takeOver() records who handed the partition over, at which offset", () => {
  assert.deepEqual(takeOver("a", 500n, null), []);
  assert.deepEqual(takeOver("a", 500n, { committer: "a", handovers: [[1n, "z"]] }), [[1n, "z"]]);
  assert.deepEqual(takeOver("a", 500n, { committer: "b", handovers: [[1n, "z"]] }), [[500n, "b"], [
    1n,
    "z",
  ]]);
});

Deno.test("resolvePending() decides the fate of pending rows", async (t) => {
  const state = { committed: 100n, next: 150n };
  await t.step("nobody committed past our ownership: fence with our own commit", () => {
    assert.deepEqual(resolvePending("a", state, -1n, null), { action: "fence" });
    assert.deepEqual(resolvePending("a", state, 100n, { committer: "b", handovers: [] }), {
      action: "fence",
    });
  });
  await t.step("our commit is the group's latest: promote up to it", () => {
    assert.deepEqual(resolvePending("a", state, 150n, { committer: "a", handovers: [] }), {
      action: "promote",
      upTo: 150n,
    });
    assert.deepEqual(resolvePending("a", state, 120n, { committer: "a", handovers: [] }), {
      action: "promote",
      upTo: 120n,
    });
  });
  await t.step("another owner consumed our pending rows: drop them", () => {
    assert.deepEqual(
      resolvePending("a", state, 300n, { committer: "b", handovers: [[100n, "a"]] }),
      {
        action: "drop",
        resumeAt: 300n,
      },
    );
  });
  await t.step("another owner started after our landed commit: keep ours", () => {
    assert.deepEqual(
      resolvePending("a", state, 300n, { committer: "b", handovers: [[150n, "a"]] }),
      {
        action: "promote",
        upTo: 150n,
        resumeAt: 300n,
      },
    );
    assert.deepEqual(
      resolvePending("a", state, 300n, { committer: "b", handovers: [[130n, "a"]] }),
      {
        action: "promote",
        upTo: 130n,
        dropFrom: 130n,
        resumeAt: 300n,
      },
    );
  });
});
