#!lua
-- Take the oldest queued objects as one batch if a batch is due, under a lease.
-- KEYS: queue, totals, leases, batch, batch_entries, waiting, epoch
-- ARGV: now_ms, max_age_ms, max_objects, max_bytes, lease_ms, token, batch_id, s3_key, force
-- Returns {objects, bytes, epoch of their staging, due score}: objects 0 when nothing was due; the due score
-- of what is left (batcher.lanes: the staging time of its oldest object, 1 when it already fills a batch, 0
-- when the queue is empty).
local now = tonumber(ARGV[1])
local max_age = tonumber(ARGV[2])
local max_objects = tonumber(ARGV[3])
local max_bytes = tonumber(ARGV[4])

local function due_score()
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then
    return 0
  end
  local queued_bytes = tonumber(redis.call('HGET', KEYS[2], 'queued_bytes') or '0')
  if redis.call('LLEN', KEYS[1]) >= max_objects or queued_bytes >= max_bytes then
    return 1
  end
  local staged_ms = entry_parse(head)
  return staged_ms
end

local score = due_score()
if score == 0 or (score + max_age > now and ARGV[9] ~= '1') then
  return {0, 0, '', score}
end

local epoch = redis.call('GET', KEYS[7]) or ''
local entries = redis.call('LRANGE', KEYS[1], 0, max_objects - 1)
local oldest = entry_parse(entries[1])
local take, bytes = 0, 0
for i, entry in ipairs(entries) do
  local _, size = entry_parse(entry)
  if take > 0 and bytes + size > max_bytes then
    break
  end
  take = i
  bytes = bytes + size
end

redis.call('LTRIM', KEYS[1], take, -1)
for first = 1, take, 1000 do
  redis.call('RPUSH', KEYS[5], unpack(entries, first, math.min(first + 999, take)))
end
redis.call('HSET', KEYS[4], 'batch_id', ARGV[7], 's3_key', ARGV[8], 'created_ms', now, 'token', ARGV[6],
  'objects', take, 'bytes', bytes, 'state', 'claimed', 'oldest_ms', oldest, 'epoch', epoch)
redis.call('ZADD', KEYS[6], oldest, ARGV[7])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[7])
redis.call('HINCRBY', KEYS[2], 'queued_bytes', -bytes)
redis.call('HINCRBY', KEYS[2], 'queued_objects', -take)
return {take, bytes, epoch, due_score()}
