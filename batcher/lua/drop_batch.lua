#!lua
-- Forget a finished batch once its records are deleted; gives its bytes back to the staging budget
-- and adds it to the lifetime counters (once: only the call that finds the batch done counts it).
-- KEYS: leases, batch, batch_entries, totals, waiting   ARGV: batch_id, now_ms
-- Returns 1, or 0 when the batch was already dropped or is not done.
if redis.call('HGET', KEYS[2], 'state') ~= 'done' then
  return 0
end
local fields = redis.call('HMGET', KEYS[2], 'bytes', 'objects', 'tar_bytes', 'put_requests')
local bytes = tonumber(fields[1])
redis.call('HINCRBY', KEYS[4], 'uploaded_batches', 1)
redis.call('HINCRBY', KEYS[4], 'uploaded_bytes', bytes)
redis.call('HINCRBY', KEYS[4], 'uploaded_objects', tonumber(fields[2]))
redis.call('HINCRBY', KEYS[4], 'uploaded_tar_bytes', tonumber(fields[3] or '0'))
redis.call('HINCRBY', KEYS[4], 'put_requests', tonumber(fields[4] or '1'))
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'staged_bytes', -bytes)
redis.call('HSET', KEYS[4], 'last_upload_ms', ARGV[2])
return 1
