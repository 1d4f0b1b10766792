/**
 * Consumer-group helpers for fault tests: compare a group's committed
 * offsets with the topic's end offsets, and evict the members of a group
 * whose processes were killed with SIGKILL.
 *
 * A member killed with SIGKILL stays in its group until its session times
 * out (30 s for anonymizer), and a replacement cannot be given partitions
 * before. Evicting it with a LeaveGroup request on its behalf is what the
 * coordinator does at the timeout, only sooner, so a test can restart a
 * killed service a dozen times in a few minutes.
 *
 * @module
 */
import { AnonymizerError } from "../lib/errors.ts";
import { KAFKA_BROKERS, withKafkaAdmin } from "./stack.ts";

/** Committed offset of `group` and end offset (high watermark) of `topic`, per partition. */
export interface PartitionOffsets {
  /** Partition. */
  partition: number;
  /** The group's committed offset, `-1` if none. */
  committed: number;
  /** The topic's end offset. */
  end: number;
}

/** The group's committed offsets next to the topic's end offsets, by partition. */
export async function groupOffsets(topic: string, group: string): Promise<PartitionOffsets[]> {
  return await withKafkaAdmin(async (a) => {
    const [committed] = await a.fetchOffsets({ groupId: group, topics: [topic] });
    const ends = await a.fetchTopicOffsets(topic);
    return ends.map((e) => ({
      partition: e.partition,
      committed: Number(
        committed?.partitions.find((p) => p.partition === e.partition)?.offset ?? -1,
      ),
      end: Number(e.high),
    })).sort((x, y) => x.partition - y.partition);
  });
}

/** Member ids of `group`, as the coordinator sees them. */
export async function groupMembers(group: string): Promise<string[]> {
  const { groups } = await withKafkaAdmin((a) => a.describeGroups([group]));
  return groups[0]?.members.map((m) => m.memberId) ?? [];
}

/**
 * Removes every member of `group` with LeaveGroup requests sent on their
 * behalf. Only for members whose processes are dead. Returns how many were
 * removed.
 */
export async function evictGroupMembers(group: string): Promise<number> {
  const members = await groupMembers(group);
  for (const member of members) await leaveGroup(group, member);
  return members.length;
}

/** LeaveGroup v1 (group_id, member_id) to the single broker, which coordinates every group. */
async function leaveGroup(group: string, member: string): Promise<void> {
  const [host, port] = KAFKA_BROKERS.split(",")[0]!.split(":");
  const enc = new TextEncoder();
  const str = (s: string) => {
    const b = enc.encode(s);
    const out = new Uint8Array(2 + b.length);
    new DataView(out.buffer).setInt16(0, b.length);
    out.set(b, 2);
    return out;
  };
  const header = new Uint8Array(8);
  const hv = new DataView(header.buffer);
  hv.setInt16(0, 13); // LeaveGroup
  hv.setInt16(2, 1); // version 1
  hv.setInt32(4, 7); // correlation id
  const parts = [header, str("anonymizer-tests"), str(group), str(member)];
  const size = parts.reduce((n, p) => n + p.length, 0);
  const req = new Uint8Array(4 + size);
  new DataView(req.buffer).setInt32(0, size);
  let off = 4;
  for (const p of parts) {
    req.set(p, off);
    off += p.length;
  }
  const conn = await Deno.connect({ hostname: host!, port: Number(port) });
  try {
    let w = 0;
    while (w < req.length) w += await conn.write(req.subarray(w));
    const res = new Uint8Array(64);
    let got = 0;
    while (got < 4 || got < 4 + new DataView(res.buffer).getInt32(0)) {
      const n = await conn.read(res.subarray(got));
      if (n === null) break;
      got += n;
    }
    // size, correlation id, throttle_time_ms, error_code
    if (got < 14) {
      throw new AnonymizerError(
        `Cannot evict member ${member} of group ${group}: short LeaveGroup response`,
        {
          code: "test_kafka_evict",
        },
      );
    }
    const error = new DataView(res.buffer).getInt16(12);
    // 25 UNKNOWN_MEMBER_ID: it left or timed out meanwhile.
    if (error !== 0 && error !== 25) {
      throw new AnonymizerError(
        `Cannot evict member ${member} of group ${group}: LeaveGroup answered error code ${error}`,
        { code: "test_kafka_evict" },
      );
    }
  } finally {
    conn.close();
  }
}
