#!lua
-- Record that a batch is in S3 and its results are published, so that no later flush rebuilds it.
-- KEYS: batch   ARGV: token, etag, tar_bytes, put_requests
-- Returns 1, or 0 when the caller no longer holds the lease.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'done', 'etag', ARGV[2], 'tar_bytes', ARGV[3], 'put_requests', ARGV[4])
return 1
