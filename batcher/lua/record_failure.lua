#!lua
-- Count a failed upload round (the caller then sets the backoff with renew.lua, or dead-letters the batch).
-- KEYS: batch, totals   ARGV: token, error, now_ms
-- Returns {attempts so far, when the first failed (ms)}, or {-1, 0} when the caller no longer holds the lease.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return {-1, 0}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSETNX', KEYS[1], 'first_failed_ms', ARGV[3])
redis.call('HSET', KEYS[1], 'last_error', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'failed_rounds', 1)
return {attempts, tonumber(redis.call('HGET', KEYS[1], 'first_failed_ms'))}
