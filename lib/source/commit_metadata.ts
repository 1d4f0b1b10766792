/**
 * The metadata anonymizer stores with each Kafka offset commit, and the rule
 * that decides, after a crash or a rebalance, which pending rows in KV belong
 * to this instance. Pure, so the rule is unit-tested on its own.
 *
 * Every commit says who made it and the recent handovers of the partition:
 * `[offset, committer]` pairs recording at which offset each owner started
 * and whose commit that offset was. A restarted instance reads the group's
 * commit; if a later owner started at an offset this instance committed,
 * that commit landed and the rows below it are ours.
 *
 * @module
 */

/** How many handovers the metadata remembers (Kafka allows 4096 bytes). */
const HISTORY = 10;

/** Parsed commit metadata. */
export interface CommitMetadata {
  /** Instance id of the committer. */
  committer: string;
  /** Most recent first: `[offset an owner started at, instance that committed it]`. */
  handovers: Array<[bigint, string]>;
}

/** Serializes metadata for a commit. */
export function formatMetadata(meta: CommitMetadata): string {
  return JSON.stringify({
    i: meta.committer,
    h: meta.handovers.slice(0, HISTORY).map(([o, c]) => [String(o), c]),
  });
}

/** Parses metadata of the group's last commit; foreign or missing metadata yields `null`. */
export function parseMetadata(text: string | null | undefined): CommitMetadata | null {
  if (!text) return null;
  try {
    const v = JSON.parse(text);
    if (typeof v?.i !== "string" || !Array.isArray(v.h)) return null;
    return {
      committer: v.i,
      handovers: v.h
        .filter((e: unknown) => Array.isArray(e) && e.length === 2)
        .map(([o, c]: [string, string]) => [BigInt(o), String(c)] as [bigint, string]),
    };
  } catch {
    return null;
  }
}

/**
 * The handover history to commit with after taking over a partition whose
 * last commit was `groupOffset` with metadata `current`.
 */
export function takeOver(
  self: string,
  groupOffset: bigint,
  current: CommitMetadata | null,
): Array<[bigint, string]> {
  if (current === null) return [];
  if (current.committer === self) return current.handovers;
  return [[groupOffset, current.committer] as [bigint, string], ...current.handovers].slice(
    0,
    HISTORY,
  );
}

/** What to do with a partition's pending rows `[committed, next)`. */
export type Resolution =
  /** Offsets below `upTo` are ours; rows at or above `dropFrom` (if set) were stored by another owner. */
  | { action: "promote"; upTo: bigint; dropFrom?: bigint; resumeAt?: bigint }
  /** All pending rows were consumed by another owner; restart at `resumeAt`. */
  | { action: "drop"; resumeAt: bigint }
  /** Nobody else moved past our rows: fence them with our own commit of `next`. */
  | { action: "fence" };

/**
 * Decides the fate of pending rows `[committed, next)` given the group's last
 * commit (`groupOffset`, -1 if none) and its metadata.
 *
 * @example A crash right after our commit landed, before KV recorded it
 * ```ts
 * import { resolvePending } from "./commit_metadata.ts";
 * import assert from "node:assert/strict";
 *
 * // We ("a") committed 150; "b" took over at 150 and has since committed 300.
 * const r = resolvePending("a", { committed: 100n, next: 150n }, 300n, {
 *   committer: "b",
 *   handovers: [[150n, "a"]],
 * });
 * assert.deepEqual(r, { action: "promote", upTo: 150n, resumeAt: 300n });
 * ```
 */
export function resolvePending(
  self: string,
  state: { committed: bigint; next: bigint },
  groupOffset: bigint,
  meta: CommitMetadata | null,
): Resolution {
  if (groupOffset <= state.committed) return { action: "fence" };
  if (meta?.committer === self) {
    // Our own commit is the group's latest: everything below it is ours.
    return groupOffset >= state.next
      ? { action: "promote", upTo: state.next }
      : { action: "promote", upTo: groupOffset };
  }
  // Someone else committed past our ownership. Did one of our commits land
  // first, which they then started from? Our commits are always at chunk
  // boundaries, so promoting up to one never splits a chunk.
  const ours = meta?.handovers.find(([o, c]) => c === self && o > state.committed);
  if (ours === undefined) return { action: "drop", resumeAt: groupOffset };
  const upTo = ours[0] < state.next ? ours[0] : state.next;
  return upTo < state.next
    ? { action: "promote", upTo, dropFrom: upTo, resumeAt: groupOffset }
    : { action: "promote", upTo, resumeAt: groupOffset };
}
