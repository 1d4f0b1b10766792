import assert from "node:assert/strict";
import { QueueError } from "../errors.ts";
import {
  batchPartKey,
  batchRowsKey,
  chunkKey,
  counterKey,
  parseBatchId,
  parseChunkKey,
  parsePartitionKey,
  parseReturnedKey,
  partitionKey,
  returnedKey,
} from "./keys.ts";

Deno.test("parsePartitionKey() and the other parsers read back what the builders wrote", () => {
  assert.deepEqual(parsePartitionKey(partitionKey("http_log", 3)), {
    topic: "http_log",
    partition: 3,
  });
  assert.equal(parseChunkKey(chunkKey("http_log", 3, 42n)), 42n);
  assert.equal(parseBatchId(batchPartKey(7n, 2)), 7n);
  assert.equal(parseBatchId(batchRowsKey(8n, 0)), 8n);
  assert.equal(parseReturnedKey(returnedKey(9n)), 9n);
});

Deno.test("parsePartitionKey() and the other parsers refuse a key of another shape", () => {
  const refused = (parse: () => unknown) =>
    assert.throws(parse, (err: unknown) => {
      assert.ok(err instanceof QueueError);
      assert.equal(err.code, "kv_key_invalid");
      assert.equal(err.retriable, false);
      return true;
    });
  refused(() => parsePartitionKey(chunkKey("http_log", 3, 42n)));
  refused(() => parsePartitionKey(["anonymizer", "partition", "http_log", 3n]));
  refused(() => parseChunkKey(partitionKey("http_log", 3)));
  refused(() => parseChunkKey(["other", "chunk", "http_log", 3, 42n]));
  refused(() => parseBatchId(counterKey("queued_rows")));
  refused(() => parseReturnedKey(["anonymizer", "returned", 1]));
});
