#!lua flags=no-writes
-- Read the same fields of many staged records in one call (their keys share the lane's hash tag).
-- KEYS: record keys. ARGV: field names. Returns one array of values per key (nil where missing).
local rows = {}
for i, key in ipairs(KEYS) do
  rows[i] = redis.call('HMGET', key, unpack(ARGV))
end
return rows
