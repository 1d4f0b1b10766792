/**
 * What the dead-letter replay does with one dead letter: pass it over (a
 * filter leaves it out), queue its row (it passes today's validation), or
 * leave it dead. Pure; the Kafka and queue side is in `_dlq_run.ts`.
 *
 * @module
 */
import type { HttpLogRow } from "../record/types.ts";
import type { MessageContext, MessageResult } from "./kafka_source.ts";

/** Which dead letters a replay considers. */
export interface DlqFilter {
  /** Only letters written with this `anonymizer.error.code`. Default: every code. */
  code?: string;
  /** Only letters the DLQ received at or after this time, epoch ms. Default: every time. */
  since?: number;
}

/** Code of a letter without an `anonymizer.error.code` header (none that anonymizer wrote). */
export const UNKNOWN_CODE = "unknown";

/** The fate of one dead letter, with the code it was dead-lettered with. */
export type Verdict =
  | { code: string; outcome: "skipped" }
  | { code: string; outcome: "dead"; now: string }
  | { code: string; outcome: "replayed"; row: HttpLogRow };

/**
 * Decides the fate of the dead letter `value` read with `context`. A row
 * ClickHouse rejected (JSON of an already masked row, not the source bytes)
 * stays dead: the record path cannot read it again.
 */
export function judgeLetter(
  value: Uint8Array | null,
  context: MessageContext,
  options: { filter: DlqFilter; toRow: (value: Uint8Array | null) => MessageResult },
): Verdict {
  const code = headerText(context.headers["anonymizer.error.code"]) ?? UNKNOWN_CODE;
  const { filter } = options;
  if (filter.code !== undefined && code !== filter.code) return { code, outcome: "skipped" };
  if (filter.since !== undefined && Number(context.timestamp) < filter.since) {
    return { code, outcome: "skipped" };
  }
  if (headerText(context.headers["content-type"]) === "application/json") {
    return { code, outcome: "dead", now: code };
  }
  const result = options.toRow(value);
  return result.ok
    ? { code, outcome: "replayed", row: result.row }
    : { code, outcome: "dead", now: result.code };
}

/** The first value of a header as UTF-8, or `undefined` when absent. */
function headerText(value: MessageContext["headers"][string]): string | undefined {
  const first = Array.isArray(value) ? value[0] : value;
  if (first === undefined) return undefined;
  return typeof first === "string" ? first : new TextDecoder().decode(first);
}
