-- Stage objects at the tail of the queue, all checks before any write.
-- KEYS: queue, totals, flush_requested, epoch, then (record, seen) per object.
-- ARGV: max_staged_bytes, seen_ttl_s, max_batch_bytes, max_batch_objects, flush_request_ttl_ms, new_epoch,
--       then one packed object (prelude's object_at) per object.
-- Returns {flush_wanted (see below), epoch, first_ms, status...}: first_ms the staging time of the first object when the
-- queue was empty before this call (the lane just got work: batcher.lanes indexes it), else 0; status 1 staged,
-- 0 already staged (same record id and content), -1 staging full, -2 the record id staged another object.
-- Once one object does not fit, no later object of the call is staged either, so that a caller that
-- retries the refused ones keeps its order.
local max_staged = tonumber(ARGV[1])
local seen_ttl = tonumber(ARGV[2])
local max_batch_bytes = tonumber(ARGV[3])
local max_batch_objects = tonumber(ARGV[4])
local FIRST_OBJECT = 7
local n = (#KEYS - 4) / 2

local staged = tonumber(redis.call('HGET', KEYS[2], 'staged_bytes') or '0')
local objects = {}
local statuses = {}
local in_this_call = {}
local added_bytes, added_objects = 0, 0
local full = false
for i = 1, n do
  local obj = object_at(FIRST_OBJECT, i)
  objects[i] = obj
  local size = string.len(obj.body)
  local seen = in_this_call[obj.record_id] or redis.call('GET', KEYS[4 + 2 * i])
  if seen then
    statuses[i] = (seen == obj.fingerprint or seen == '1') and 0 or -2 -- '1': staged before fingerprints
  elseif full or staged + added_bytes + size > max_staged then
    full = true
    statuses[i] = -1
  else
    statuses[i] = 1
    in_this_call[obj.record_id] = obj.fingerprint
    added_bytes = added_bytes + size
    added_objects = added_objects + 1
  end
end

-- Staging times never go backwards along the queue (two producers' clocks may disagree slightly), so
-- that the mtimes in a batch follow its member order; and never lie ahead of this server's clock, which
-- every flush judges ages by (batcher.clock): one producer whose clock runs minutes ahead would otherwise
-- date every later object of the lane in its future, and no batch of it would be due for minutes.
local time = redis.call('TIME')
local server_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local tail = redis.call('LINDEX', KEYS[1], -1)
local last_ms = tail and entry_parse(tail) or 0
local first_ms = 0
for i = 1, n do
  if statuses[i] == 1 then
    local obj = objects[i]
    local ms = math.max(math.min(obj.staged_ms, server_ms), last_ms)
    if not tail and first_ms == 0 then
      first_ms = ms
    end
    last_ms = ms
    redis.call('HSET', KEYS[3 + 2 * i], 'h', obj.head, 'b', obj.body)
    redis.call('SET', KEYS[4 + 2 * i], obj.fingerprint, 'EX', seen_ttl)
    redis.call('RPUSH', KEYS[1], entry_encode(ms, string.len(obj.body), obj.record_id))
  end
end

-- The epoch names the data staged in this lane: created with the first object, gone with the data.
local epoch = redis.call('GET', KEYS[4])
if not epoch and added_objects > 0 then
  epoch = ARGV[6]
  redis.call('SET', KEYS[4], epoch)
end

-- flush_wanted: 2 when the queue holds a full batch and no flush was asked for in the last ARGV[5] ms (ask
-- one now), 1 when it holds a full batch (the lane is due now), 0 otherwise.
local flush_wanted = 0
if added_objects > 0 then
  redis.call('HINCRBY', KEYS[2], 'staged_bytes', added_bytes)
  local queued_bytes = redis.call('HINCRBY', KEYS[2], 'queued_bytes', added_bytes)
  local queued_objects = redis.call('HINCRBY', KEYS[2], 'queued_objects', added_objects)
  if queued_bytes >= max_batch_bytes or queued_objects >= max_batch_objects then
    flush_wanted = 1
    if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[5]) then
      flush_wanted = 2
    end
  end
end
table.insert(statuses, 1, first_ms)
table.insert(statuses, 1, epoch or '')
table.insert(statuses, 1, flush_wanted)
return statuses
