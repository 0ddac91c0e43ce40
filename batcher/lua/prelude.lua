-- Prepended to every staging script when batcher.staging loads it: the one Lua definition of a queue
-- entry and of a packed object, kept equal to batcher/records.py.
local OBJECT_STRIDE = 5 -- record_id, staged_ms, head, body, fingerprint

-- A queue entry: "<staged_ms> <size> <record_id>".
local function entry_encode(ms, size, record_id)
  return string.format('%d %d %s', ms, size, record_id)
end

-- (staged_ms, size, record_id) of a queue entry.
local function entry_parse(entry)
  local ms, size, record_id = string.match(entry, '^(%d+) (%d+) (.+)$')
  return tonumber(ms), tonumber(size), record_id
end

-- The i-th packed object (1-based) of the objects that start at ARGV[first].
local function object_at(first, i)
  local a = first + (i - 1) * OBJECT_STRIDE
  return {record_id = ARGV[a], staged_ms = tonumber(ARGV[a + 1]), head = ARGV[a + 2], body = ARGV[a + 3],
    fingerprint = ARGV[a + 4]}
end
