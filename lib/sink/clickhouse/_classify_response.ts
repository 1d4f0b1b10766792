/**
 * Turns a failed ClickHouse-over-proxy HTTP exchange into a
 * {@linkcode ClickHouseError} that says whether the request may have been
 * applied. Pure, so every branch is unit-tested.
 *
 * @module
 */
import { ClickHouseError } from "../../errors.ts";

/**
 * ClickHouse error codes raised while parsing or planning an INSERT, before
 * any part is written, that can be pinned to the content of a row: the same
 * row fails the same way in any body (poison data).
 */
const POISON_CODES = new Set([
  6, // CANNOT_PARSE_TEXT
  20, // NUMBER_OF_COLUMNS_DOESNT_MATCH
  26, // CANNOT_PARSE_QUOTED_STRING
  27, // CANNOT_PARSE_INPUT_ASSERTION_FAILED
  32, // ATTEMPT_TO_READ_AFTER_EOF
  38, // CANNOT_PARSE_DATE
  41, // CANNOT_PARSE_DATETIME
  53, // TYPE_MISMATCH
  69, // ARGUMENT_OUT_OF_BOUND
  70, // CANNOT_CONVERT_TYPE
  72, // CANNOT_PARSE_NUMBER
  117, // INCORRECT_DATA
  131, // TOO_LARGE_STRING_SIZE
  321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
  691, // UNKNOWN_ELEMENT_OF_ENUM (modern servers)
]);

/**
 * ClickHouse error codes about the body anonymizer built, or its transport,
 * not about one row: a truncated or corrupted body, a failed checksum or
 * decompression, or a setting the server rejects. Bisecting on them would
 * dead-letter every row of a healthy stream, so the batch is kept instead.
 */
const BODY_CODES = new Set([
  33, // CANNOT_READ_ALL_DATA
  36, // BAD_ARGUMENTS (unless UNKNOWN_ENUM_ELEMENT matches)
  40, // CHECKSUM_DOESNT_MATCH
  271, // CANNOT_DECOMPRESS
  561, // ZSTD_DECODER_FAILED (Content-Encoding: zstd)
]);

/**
 * ClickHouse 18.16 reports a value that is not an element of an Enum column as
 * LOGICAL_ERROR (49), a code it otherwise uses for its own bugs; later releases
 * use BAD_ARGUMENTS (36), then UNKNOWN_ELEMENT_OF_ENUM (691). Only this
 * message makes a 49 or a 36 poison.
 */
const UNKNOWN_ENUM_ELEMENT = /DB::Exception: Unknown element '.*' for (type Enum(8|16)\(|enum)/s;

/**
 * ClickHouse error codes raised before any write that a later retry may pass
 * once load drops or an operator fixes configuration or schema.
 */
const WAIT_CODES = new Set([
  16, // NO_SUCH_COLUMN_IN_TABLE
  47, // UNKNOWN_IDENTIFIER
  60, // UNKNOWN_TABLE
  62, // SYNTAX_ERROR
  73, // UNKNOWN_FORMAT
  81, // UNKNOWN_DATABASE
  115, // UNKNOWN_SETTING
  164, // READONLY
  192, // UNKNOWN_USER
  193, // WRONG_PASSWORD
  202, // TOO_MANY_SIMULTANEOUS_QUERIES
  252, // TOO_MANY_PARTS
  497, // ACCESS_DENIED
  516, // AUTHENTICATION_FAILED
]);

/** Extracts the ClickHouse exception code from an error body (18.16 and modern forms). */
export function serverCode(body: string): number | undefined {
  const m = /Code:\s*(\d+)/.exec(body);
  return m ? Number(m[1]) : undefined;
}

/** Whether the response was produced by ClickHouse rather than by the proxy in front of it. */
export function fromClickHouse(headers: Headers): boolean {
  for (const name of headers.keys()) if (name.startsWith("x-clickhouse-")) return true;
  return false;
}

/** Classifies a non-2xx response to request `what` (e.g. `"INSERT of batch 7"`). */
export function classifyResponse(
  what: string,
  response: { status: number; headers: Headers; body: string },
): ClickHouseError {
  const { status, headers, body } = response;
  const brief = body.replace(/\s+/g, " ").trim().slice(0, 300);
  if (!fromClickHouse(headers)) {
    if (status === 503) {
      return new ClickHouseError(`Cannot send ${what} as ch-proxy refused it: status 503`, {
        code: "proxy_refused",
        outcome: "refused",
        retriable: true,
        status,
      });
    }
    if (status === 413) {
      return new ClickHouseError(
        `Cannot send ${what} as ch-proxy found the body too large: status 413`,
        {
          code: "body_too_large",
          outcome: "too_large",
          retriable: false,
          status,
        },
      );
    }
    // 502/504: ClickHouse was unreachable or slow; it may have applied the request.
    return new ClickHouseError(`Cannot confirm ${what} as ch-proxy answered status ${status}`, {
      code: status === 502 || status === 504 ? "upstream_unavailable" : "proxy_error",
      outcome: "unknown",
      retriable: true,
      status,
    });
  }
  const code = serverCode(body);
  if (
    code !== undefined &&
    (POISON_CODES.has(code) ||
      ((code === 49 || code === 36) && UNKNOWN_ENUM_ELEMENT.test(body)))
  ) {
    return new ClickHouseError(`Cannot send ${what} as ClickHouse rejected the data: ${brief}`, {
      code: "server_rejected",
      outcome: "rejected",
      retriable: false,
      status,
      serverCode: code,
    });
  }
  if (code !== undefined && BODY_CODES.has(code)) {
    return new ClickHouseError(
      `Cannot send ${what} as ClickHouse could not read the body (code ${code}): ${brief}`,
      { code: "body_rejected", outcome: "rejected", retriable: true, status, serverCode: code },
    );
  }
  if (code !== undefined && WAIT_CODES.has(code)) {
    return new ClickHouseError(`Cannot send ${what} as ClickHouse refused it: ${brief}`, {
      code: "server_refused",
      outcome: "rejected",
      retriable: true,
      status,
      serverCode: code,
    });
  }
  return new ClickHouseError(`Cannot confirm ${what} as ClickHouse failed: ${brief}`, {
    code: "server_failed",
    outcome: "unknown",
    retriable: true,
    status,
    serverCode: code,
  });
}

/** Classifies a request that got no response (timeout, reset, refused connection). */
export function classifyFailure(what: string, url: string, cause: unknown): ClickHouseError {
  const parts: string[] = [];
  for (let c: unknown = cause; c !== undefined && parts.length < 5; c = (c as Error).cause) {
    parts.push(String(c));
  }
  const text = parts.join(": ");
  if (/Connection refused|ECONNREFUSED|os error 111/i.test(text)) {
    // Nothing was sent, so nothing can have been applied and no proxy slot was used.
    return new ClickHouseError(`Cannot send ${what} as ${url} refused the connection`, {
      code: "proxy_unreachable",
      outcome: "refused",
      retriable: true,
      cause,
    });
  }
  const timeout = cause instanceof DOMException &&
    (cause.name === "TimeoutError" || cause.name === "AbortError");
  return new ClickHouseError(
    `Cannot confirm ${what} as ${
      timeout ? "the response timed out" : "the connection failed"
    }: ${text}`,
    { code: timeout ? "timeout" : "connection_lost", outcome: "unknown", retriable: true, cause },
  );
}
