#!lua
-- Stage objects at the tail of the queue, all checks before any write.
-- KEYS: queue, totals, flush_requested, then (record, seen) per object.
-- ARGV: max_staged_bytes, seen_ttl_s, max_batch_bytes, max_batch_objects, flush_request_ttl_ms,
--       then per object: record_id, staged_ms, object_key, body, content_type, metadata_json, sha256, context.
-- Returns {flush_wanted, status...}: status 1 staged, 0 already staged (same record id), -1 staging full.
-- Once one object does not fit, no later object of the call is staged either, so that a caller that
-- retries the refused ones keeps its order.
local max_staged = tonumber(ARGV[1])
local seen_ttl = tonumber(ARGV[2])
local max_batch_bytes = tonumber(ARGV[3])
local max_batch_objects = tonumber(ARGV[4])
local n = (#KEYS - 3) / 2

local staged = tonumber(redis.call('HGET', KEYS[2], 'staged_bytes') or '0')
local statuses = {}
local in_this_call = {}
local added_bytes, added_objects = 0, 0
local full = false
for i = 1, n do
  local a = 5 + (i - 1) * 8
  local size = string.len(ARGV[a + 4])
  if in_this_call[ARGV[a + 1]] or redis.call('EXISTS', KEYS[3 + 2 * i]) == 1 then
    statuses[i] = 0
  elseif full or staged + added_bytes + size > max_staged then
    full = true
    statuses[i] = -1
  else
    statuses[i] = 1
    in_this_call[ARGV[a + 1]] = true
    added_bytes = added_bytes + size
    added_objects = added_objects + 1
  end
end

-- Staging times never go backwards along the queue (two producers' clocks may disagree slightly), so
-- that the mtimes in a batch follow its member order.
local tail = redis.call('LINDEX', KEYS[1], -1)
local last_ms = tail and tonumber(string.match(tail, '^(%d+) ')) or 0
for i = 1, n do
  if statuses[i] == 1 then
    local a = 5 + (i - 1) * 8
    local rid, body = ARGV[a + 1], ARGV[a + 4]
    local ms = math.max(tonumber(ARGV[a + 2]), last_ms)
    last_ms = ms
    redis.call('HSET', KEYS[2 + 2 * i], 'key', ARGV[a + 3], 'body', body, 'content_type', ARGV[a + 5],
      'metadata', ARGV[a + 6], 'sha256', ARGV[a + 7], 'context', ARGV[a + 8])
    redis.call('SET', KEYS[3 + 2 * i], '1', 'EX', seen_ttl)
    redis.call('RPUSH', KEYS[1], string.format('%d %d %s', ms, string.len(body), rid))
  end
end

local flush_wanted = 0
if added_objects > 0 then
  redis.call('HINCRBY', KEYS[2], 'staged_bytes', added_bytes)
  local queued_bytes = redis.call('HINCRBY', KEYS[2], 'queued_bytes', added_bytes)
  local queued_objects = redis.call('HINCRBY', KEYS[2], 'queued_objects', added_objects)
  if queued_bytes >= max_batch_bytes or queued_objects >= max_batch_objects then
    if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[5]) then
      flush_wanted = 1
    end
  end
end
table.insert(statuses, 1, flush_wanted)
return statuses
