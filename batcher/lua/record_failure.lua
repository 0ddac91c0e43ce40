#!lua
-- Count a failed upload attempt (the caller then sets the backoff with renew.lua, or dead-letters the batch).
-- KEYS: batch   ARGV: token, error
-- Returns the number of failed attempts so far, or -1 when the caller no longer holds the lease.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return -1
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[2])
return attempts
