#!lua
-- Count a failed upload attempt and hold the batch back until retry_at (the lease becomes the backoff).
-- KEYS: leases, batch   ARGV: batch_id, token, error, retry_at_ms
-- Returns the number of failed attempts so far, or -1 when the caller no longer holds the lease.
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[2] then
  return -1
end
local attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('HSET', KEYS[2], 'last_error', ARGV[3])
redis.call('ZADD', KEYS[1], tonumber(ARGV[4]), ARGV[1])
return attempts
