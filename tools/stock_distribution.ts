/**
 * The stock edge producer's value distributions, shared by the TypeScript
 * generator (synthetic_records.ts) and the server-side SQL generator of the
 * benches (testing/stock_sql.ts), so both draw from one definition.
 *
 * @module
 */
/** Resource ids are uniform over [RESOURCE_ID_MIN, RESOURCE_ID_MIN + RESOURCE_ID_SPAN). */
export const RESOURCE_ID_MIN = 100_000_000;
/** See {@linkcode RESOURCE_ID_MIN}. */
export const RESOURCE_ID_SPAN = 900_000_000;
/** HTTP statuses, drawn uniformly. */
export const STATUSES = [200, 301, 400, 403, 404, 500, 502, 504] as const;
/** Methods, drawn uniformly. */
export const METHODS = ["GET", "HEAD"] as const;
/** A URL starts with 1–6 of these, each drawn uniformly. */
export const PATH_WORDS = [
  "static",
  "images",
  "assets",
  "media",
  "video",
  "audio",
  "css",
  "js",
  "fonts",
  "api",
  "v1",
  "v2",
  "users",
  "profile",
  "download",
  "files",
  "content",
  "thumbnails",
  "products",
  "catalog",
  "blog",
  "posts",
  "news",
  "live",
  "stream",
  "hls",
  "public",
  "uploads",
  "gallery",
  "photos",
  "icons",
  "en",
  "de",
  "2024",
] as const;
/** Half of the URLs get no extension: "" is drawn as often as all others together. */
export const EXTENSIONS = [
  ".jpg",
  ".png",
  ".webp",
  ".gif",
  ".svg",
  ".css",
  ".js",
  ".json",
  ".html",
  ".mp4",
  ".m3u8",
  ".ts",
  ".woff2",
  ".pdf",
  ".zip",
] as const;
/** Characters of the random URL segment, each drawn uniformly. */
export const SEGMENT_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";
/** Shortest random URL segment; see {@linkcode SEGMENT_SKEW}. */
export const SEGMENT_MIN = 4;
/** Span of the random URL segment length; see {@linkcode SEGMENT_SKEW}. */
export const SEGMENT_SPAN = 147;
/**
 * Skews the random segment towards short ones: its length is
 * 4 + ⌊147·u^2.5⌋, mean ≈ 45, which with the path words and extension makes
 * the URL about 70 characters on average, like the stock producer's.
 */
export const SEGMENT_SKEW = 2.5;
