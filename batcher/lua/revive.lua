#!lua
-- Give a dead-lettered batch a fresh retry budget and make it due for the next flush at once.
-- KEYS: leases, dead, batch   ARGV: batch_id, now_ms
-- Returns 1, or 0 when the batch is not dead-lettered.
if redis.call('ZSCORE', KEYS[2], ARGV[1]) == false or redis.call('HGET', KEYS[3], 'state') ~= 'dead' then
  return 0
end
redis.call('HSET', KEYS[3], 'state', 'claimed', 'attempts', 0, 'token', '')
redis.call('HDEL', KEYS[3], 'first_failed_ms', 'dead_reason')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]), ARGV[1])
return 1
