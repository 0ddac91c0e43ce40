#!lua
-- Give a claimed batch a new id and S3 key (the old key holds another object): same objects, same order.
-- KEYS: leases, waiting, batch, batch_entries, new_batch, new_batch_entries
-- ARGV: batch_id, token, new_batch_id, new_s3_key, now_ms
-- Returns 1, or 0 when the caller no longer holds the lease.
if redis.call('HGET', KEYS[3], 'token') ~= ARGV[2] then
  return 0
end
local lease = redis.call('ZSCORE', KEYS[1], ARGV[1])
local oldest = redis.call('HGET', KEYS[3], 'oldest_ms')
redis.call('RENAME', KEYS[3], KEYS[5])
redis.call('RENAME', KEYS[4], KEYS[6])
redis.call('HSET', KEYS[5], 'batch_id', ARGV[3], 's3_key', ARGV[4], 'created_ms', ARGV[5], 'rekeyed_from', ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], lease, ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[2], oldest, ARGV[3])
return 1
