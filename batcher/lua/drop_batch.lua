#!lua
-- Forget a finished batch once its records are deleted; gives its bytes back to the staging budget.
-- KEYS: leases, batch, batch_entries, totals   ARGV: batch_id
-- Returns 1, or 0 when the batch was already dropped or is not done.
if redis.call('HGET', KEYS[2], 'state') ~= 'done' then
  return 0
end
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes'))
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'staged_bytes', -bytes)
return 1
