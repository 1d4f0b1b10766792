import assert from "node:assert/strict";
import { releaseBuffer } from "./_release.ts";

Deno.test("releaseBuffer() detaches an ArrayBuffer and leaves shared and detached ones", async (t) => {
  await t.step("an ArrayBuffer is detached", () => {
    const bytes = new Uint8Array(4096).fill(7);
    releaseBuffer(bytes.buffer);
    assert.equal(bytes.buffer.detached, true);
    assert.equal(bytes.byteLength, 0);
  });
  await t.step("a detached one stays as it is", () => {
    const buffer = new ArrayBuffer(16);
    releaseBuffer(buffer);
    releaseBuffer(buffer);
    assert.equal(buffer.detached, true);
  });
  await t.step("a SharedArrayBuffer is left alone", () => {
    const shared = new SharedArrayBuffer(16);
    releaseBuffer(shared);
    assert.equal(new Uint8Array(shared).length, 16);
  });
});
