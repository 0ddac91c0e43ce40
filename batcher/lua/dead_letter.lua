#!lua
-- Park a batch whose retry budget is spent: no flush takes it until `s3batch retry` revives it.
-- Its records stay in Redis. KEYS: leases, dead, batch   ARGV: batch_id, token, error, now_ms, reason
-- (reason: 'transient', revived by the flush once S3 answers again, or 'permanent', by `s3batch retry`).
-- Returns 1, or 0 when the caller no longer holds the lease.
if redis.call('HGET', KEYS[3], 'token') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[3], 'state', 'dead', 'last_error', ARGV[3], 'dead_ms', ARGV[4], 'dead_reason', ARGV[5])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[1])
return 1
