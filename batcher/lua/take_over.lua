#!lua
-- Take over a batch whose lease has expired, with a new token; the old holder is fenced out.
-- KEYS: leases, batch   ARGV: batch_id, now_ms, new_token, lease_until_ms
-- Returns the batch hash as a flat list, or false when the lease is still valid or the batch is gone.
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) > tonumber(ARGV[2]) then
  return false
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return false
end
redis.call('HSET', KEYS[2], 'token', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'takeovers', 1)
redis.call('ZADD', KEYS[1], tonumber(ARGV[4]), ARGV[1])
return redis.call('HGETALL', KEYS[2])
