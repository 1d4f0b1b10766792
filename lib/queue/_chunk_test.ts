import assert from "node:assert/strict";
import { QueueError } from "../errors.ts";
import type { HttpLogRow } from "../record/types.ts";
import { stockRows } from "../../testing/stock_rows.ts";
import { seededRandom } from "../../testing/seeded_random.ts";
import {
  chunkBytes,
  chunkCount,
  type ChunkInfo,
  chunkLastOffset,
  MAX_VALUE_BYTES,
  packedChunk,
  packOne,
  packToFit,
  type StoredChunk,
  unpackChunk,
  unpackRowPart,
} from "./_chunk.ts";
import { decodeRows, encodeRows } from "./_row_binary.ts";

const INFO: ChunkInfo = { topic: "http_log", partition: 3, day: 19_675, enqueuedAt: 1_000 };

/** Offsets `first, first + step, …`, one per row. */
function offsetsFrom(first: bigint, count: number, step = 1n): BigInt64Array {
  return BigInt64Array.from({ length: count }, (_, i) => first + BigInt(i) * step);
}

/** Unpacks every value and checks it holds `rows` and `offsets` in order. */
function assertHolds(
  parts: Array<{ data: Uint8Array; offsets: BigInt64Array }>,
  rows: readonly HttpLogRow[],
  offsets: BigInt64Array,
): void {
  const got = parts.map((p) => unpackChunk(packedChunk(INFO, p.offsets, p.data)));
  assert.deepEqual(got.flatMap((c) => decodeRows(c.rows)), rows);
  assert.deepEqual(got.flatMap((c) => [...c.offsets]), [...offsets]);
  assert.deepEqual(parts.flatMap((p) => [...p.offsets]), [...offsets]);
}

Deno.test("packToFit() fills values close to the cap with stock rows", () => {
  const rows = stockRows(6_000, 2);
  const offsets = offsetsFrom(1_000_000n, rows.length);
  const parts = packToFit(rows, { offsets });
  assertHolds(parts, rows, offsets);
  const sizes = parts.map((p) => p.data.byteLength);
  assert.ok(sizes.every((n) => n <= MAX_VALUE_BYTES), `sizes ${sizes}`);
  assert.ok(sizes.slice(0, -1).every((n) => n >= 0.8 * MAX_VALUE_BYTES), `sizes ${sizes}`);
  const bytesPerRow = sizes.reduce((a, b) => a + b, 0) / rows.length;
  assert.ok(bytesPerRow < 0.6 * encodeRows(rows).byteLength / rows.length, `${bytesPerRow} B/row`);
});

Deno.test("packToFit() halves values of rows that compress too little until they fit", () => {
  // 6 bits of entropy per character: 96 kB of these do not compress into 60 kB.
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const random = seededRandom(11);
  const rows = stockRows(200, 3).map((row) => ({
    ...row,
    url: "/" + Array.from({ length: 1_000 }, () => alphabet[Math.floor(random() * 64)]).join(""),
  }));
  const offsets = offsetsFrom(7n, rows.length, 3n);
  const parts = packToFit(rows, { offsets });
  assert.ok(parts.length >= 3, `${parts.length} values`);
  assert.ok(parts.every((p) => p.data.byteLength <= MAX_VALUE_BYTES));
  assertHolds(parts, rows, offsets);
});

Deno.test("packToFit() with a smaller target packs smaller values", () => {
  const rows = stockRows(2_000, 4);
  const offsets = offsetsFrom(0n, rows.length);
  const parts = packToFit(rows, { offsets }, 20_000);
  assert.ok(parts.every((p) => p.data.byteLength <= 20_000));
  assert.ok(parts.length >= 10, `${parts.length} values`);
  assertHolds(parts, rows, offsets);
});

Deno.test("packOne() keeps the partition of each returned row", () => {
  const rows = stockRows(50, 5);
  const offsets = BigInt64Array.from(rows, (_, i) => BigInt(100 - i));
  const partitions = Int32Array.from(rows, (_, i) => i % 4);
  const chunk = packedChunk(
    { ...INFO, partition: -1, from: 9n },
    offsets,
    packOne(rows, {
      offsets,
      partitions,
    }),
  );
  assert.equal(chunkCount(chunk), 50);
  assert.equal(chunkLastOffset(chunk), 51n);
  const got = unpackChunk(chunk);
  assert.deepEqual(decodeRows(got.rows), rows);
  assert.deepEqual(got.offsets, offsets);
  assert.deepEqual(got.partitions, partitions);
  assert.deepEqual(unpackRowPart(chunk.data), got);
});

Deno.test("unpackChunk() reads a chunk and a row part written before the format tag", () => {
  const rows = stockRows(20, 6);
  const offsets = offsetsFrom(40n, rows.length);
  const legacy: StoredChunk = { ...INFO, offsets, rows: encodeRows(rows) };
  assert.equal(chunkCount(legacy), 20);
  assert.equal(chunkLastOffset(legacy), 59n);
  assert.equal(chunkBytes(legacy), encodeRows(rows).byteLength);
  assert.deepEqual(decodeRows(unpackChunk(legacy).rows), rows);
  const partitions = new Int32Array(rows.length).fill(3);
  const part = unpackRowPart({ rows: encodeRows(rows), offsets, partitions });
  assert.deepEqual(part.partitions, partitions);
  assert.deepEqual(part.offsets, offsets);
});

Deno.test("unpackChunk() refuses a format it does not know, by name", () => {
  const [part] = packToFit(stockRows(5, 7), { offsets: offsetsFrom(0n, 5) });
  const data = part!.data.slice();
  data[0] = 2;
  for (
    const read of [
      () => unpackChunk(packedChunk(INFO, part!.offsets, data)),
      () => unpackRowPart(data),
    ]
  ) {
    assert.throws(read, (err: unknown) => {
      assert.ok(err instanceof QueueError);
      assert.equal(err.code, "queue_format_unknown");
      assert.equal(err.retriable, false);
      assert.match(err.message, /tag 2/);
      return true;
    });
  }
});

Deno.test("unpackRowPart() refuses a row part without partitions", () => {
  const [part] = packToFit(stockRows(5, 8), { offsets: offsetsFrom(0n, 5) });
  assert.throws(() => unpackRowPart(part!.data), (err: unknown) => {
    assert.ok(err instanceof QueueError);
    assert.equal(err.code, "batch_corrupt");
    return true;
  });
});
