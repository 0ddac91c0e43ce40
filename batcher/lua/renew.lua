#!lua
-- Extend a batch's lease if the caller still holds it (its token matches).
-- KEYS: leases, batch   ARGV: batch_id, token, lease_until_ms
-- Returns 1 when renewed, 0 when the lease was lost.
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[2] then
  return 0
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), ARGV[1])
return 1
