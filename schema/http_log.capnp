@0xde66e776c76851f2;

# One HTTP access-log record as the CDN edge sends it to Kafka topic http_log:
# one plain (unpacked) message per Kafka message value, with the standard
# stream framing (segment table).
struct HttpLogRecord {
  timestampEpochMilli @0 :UInt64;
  resourceId @1 :UInt64;
  bytesSent @2 :UInt64;
  requestTimeMilli @3 :UInt64;
  responseStatus @4 :UInt16;
  cacheStatus @5 :Text;
  method @6 :Text;
  remoteAddr @7 :Text;
  url @8 :Text;
}
