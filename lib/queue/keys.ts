/**
 * The only place KV keys are built and read back. Every key starts with
 * `"anonymizer"` so the database can be shared or inspected safely. Builders
 * return typed tuples; the parsers turn a listed `Deno.KvKey` back into its
 * parts, refusing a key of another shape.
 *
 * @module
 */
import { QueueError } from "../errors.ts";

const ROOT = "anonymizer";
type Root = typeof ROOT;

/** Names of the `Deno.KvU64` counters. */
export type CounterName = "queued_rows" | "landed_rows" | "landed_batches" | "dead_lettered_rows";

/** Key of {@linkcode instanceKey}. */
export type InstanceKey = readonly [Root, "instance"];
/** Key of {@linkcode partitionKey}. */
export type PartitionKey = readonly [Root, "partition", string, number];
/** Key of {@linkcode chunkKey}. */
export type ChunkKey = readonly [Root, "chunk", string, number, bigint];
/** Key of {@linkcode batchPartKey}. */
export type BatchPartKey = readonly [Root, "batch_part", bigint, number];
/** Key of {@linkcode batchRowsKey}. */
export type BatchRowsKey = readonly [Root, "batch_rows", bigint, number];
/** Key of {@linkcode returnedKey}. */
export type ReturnedKey = readonly [Root, "returned", bigint];

/** This instance's persistent identity (used as Kafka commit metadata). */
export const instanceKey = (): InstanceKey => [ROOT, "instance"];

/** Per-partition queue progress: `{ next, committed }` offsets. */
export const partitionKey = (topic: string, partition: number): PartitionKey => [
  ROOT,
  "partition",
  topic,
  partition,
];

/** Prefix of all partition states. */
export const partitionPrefix = (): readonly [Root, "partition"] => [ROOT, "partition"];

/** A chunk of queued rows from one partition, keyed by its first offset. */
export const chunkKey = (topic: string, partition: number, firstOffset: bigint): ChunkKey => [
  ROOT,
  "chunk",
  topic,
  partition,
  firstOffset,
];

/** Prefix of one partition's chunks, ordered by offset. */
export const chunkPartitionPrefix = (
  topic: string,
  partition: number,
): readonly [Root, "chunk", string, number] => [ROOT, "chunk", topic, partition];

/** The one sealed batch awaiting delivery. */
export const batchKey = (): readonly [Root, "batch"] => [ROOT, "batch"];

/** Part `index` of the body of batch `batchId`. */
export const batchPartKey = (batchId: bigint, index: number): BatchPartKey => [
  ROOT,
  "batch_part",
  batchId,
  index,
];

/** Prefix of all batch body parts. */
export const batchPartPrefix = (): readonly [Root, "batch_part"] => [ROOT, "batch_part"];

/** Part `index` of the rows of batch `batchId`, kept to re-split the batch. */
export const batchRowsKey = (batchId: bigint, index: number): BatchRowsKey => [
  ROOT,
  "batch_rows",
  batchId,
  index,
];

/** Prefix of all batch row parts. */
export const batchRowsPrefix = (): readonly [Root, "batch_rows"] => [ROOT, "batch_rows"];

/** Owned rows handed back from a batch that must be re-split (413, poison), oldest first. */
export const returnedKey = (seq: bigint): ReturnedKey => [ROOT, "returned", seq];

/** Prefix of all returned rows. */
export const returnedPrefix = (): readonly [Root, "returned"] => [ROOT, "returned"];

/** Request pacing state shared by every process using this KV. */
export const pacerKey = (): readonly [Root, "pacer"] => [ROOT, "pacer"];

/** What is known about the ClickHouse server (version, capabilities). */
export const serverKey = (): readonly [Root, "server"] => [ROOT, "server"];

/** A monotonically increasing counter (`Deno.KvU64`). */
export const counterKey = (name: CounterName): readonly [Root, "counter", CounterName] => [
  ROOT,
  "counter",
  name,
];

/** The topic and partition of a key listed under {@linkcode partitionPrefix}. */
export function parsePartitionKey(key: Deno.KvKey): { topic: string; partition: number } {
  const [root, kind, topic, partition] = key;
  if (
    key.length !== 4 || root !== ROOT || kind !== "partition" || typeof topic !== "string" ||
    typeof partition !== "number"
  ) throw invalid(key, "partition");
  return { topic, partition };
}

/** The batch id of a key listed under {@linkcode batchPartPrefix} or {@linkcode batchRowsPrefix}. */
export function parseBatchId(key: Deno.KvKey): bigint {
  const [root, kind, id, index] = key;
  if (
    key.length !== 4 || root !== ROOT || (kind !== "batch_part" && kind !== "batch_rows") ||
    typeof id !== "bigint" || typeof index !== "number"
  ) throw invalid(key, "batch part");
  return id;
}

/** The sequence number of a key listed under {@linkcode returnedPrefix}. */
export function parseReturnedKey(key: Deno.KvKey): bigint {
  const [root, kind, seq] = key;
  if (key.length !== 3 || root !== ROOT || kind !== "returned" || typeof seq !== "bigint") {
    throw invalid(key, "returned rows");
  }
  return seq;
}

/** The first offset of a key listed under {@linkcode chunkPartitionPrefix}. */
export function parseChunkKey(key: Deno.KvKey): bigint {
  const [root, kind, topic, partition, first] = key;
  if (
    key.length !== 5 || root !== ROOT || kind !== "chunk" || typeof topic !== "string" ||
    typeof partition !== "number" || typeof first !== "bigint"
  ) throw invalid(key, "chunk");
  return first;
}

function invalid(key: Deno.KvKey, what: string): QueueError {
  return new QueueError(
    `Cannot read a ${what} key as it has another shape: current value is ` +
      JSON.stringify(key.map(String)),
    { code: "kv_key_invalid", retriable: false },
  );
}
