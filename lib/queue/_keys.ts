/**
 * The only place KV keys are built. Every key starts with `"anonymizer"` so the
 * database can be shared or inspected safely.
 *
 * @module
 */

const ROOT = "anonymizer";

/** This instance's persistent identity (used as Kafka commit metadata). */
export const instanceKey = (): Deno.KvKey => [ROOT, "instance"];

/** Per-partition queue progress: `{ next, committed }` offsets. */
export const partitionKey = (topic: string, partition: number): Deno.KvKey => [
  ROOT,
  "partition",
  topic,
  partition,
];

/** Prefix of all partition states. */
export const partitionPrefix = (): Deno.KvKey => [ROOT, "partition"];

/** A chunk of queued rows from one partition, keyed by its first offset. */
export const chunkKey = (topic: string, partition: number, firstOffset: bigint): Deno.KvKey => [
  ROOT,
  "chunk",
  topic,
  partition,
  firstOffset,
];

/** Prefix of one partition's chunks, ordered by offset. */
export const chunkPartitionPrefix = (topic: string, partition: number): Deno.KvKey => [
  ROOT,
  "chunk",
  topic,
  partition,
];

/** Prefix of all chunks. */
export const chunkPrefix = (): Deno.KvKey => [ROOT, "chunk"];

/** The one sealed batch awaiting delivery. */
export const batchKey = (): Deno.KvKey => [ROOT, "batch"];

/** Part `index` of the body of batch `batchId`. */
export const batchPartKey = (batchId: bigint, index: number): Deno.KvKey => [
  ROOT,
  "batch_part",
  batchId,
  index,
];

/** Part `index` of the rows (RowBinary) of batch `batchId`, kept to re-split the batch. */
export const batchRowsKey = (batchId: bigint, index: number): Deno.KvKey => [
  ROOT,
  "batch_rows",
  batchId,
  index,
];

/** Prefix of all batch row parts. */
export const batchRowsPrefix = (): Deno.KvKey => [ROOT, "batch_rows"];

/** Owned rows handed back from a batch that must be re-split (413, poison), oldest first. */
export const returnedKey = (seq: bigint): Deno.KvKey => [ROOT, "returned", seq];

/** Prefix of all returned rows. */
export const returnedPrefix = (): Deno.KvKey => [ROOT, "returned"];

/** Prefix of all batch body parts. */
export const batchPartPrefix = (): Deno.KvKey => [ROOT, "batch_part"];

/** Request pacing state shared by every process using this KV. */
export const pacerKey = (): Deno.KvKey => [ROOT, "pacer"];

/** What is known about the ClickHouse server (version, capabilities). */
export const serverKey = (): Deno.KvKey => [ROOT, "server"];

/** A monotonically increasing counter (`Deno.KvU64`). */
export const counterKey = (
  name: "queued_rows" | "landed_rows" | "landed_batches" | "dead_lettered_rows",
): Deno.KvKey => [
  ROOT,
  "counter",
  name,
];
