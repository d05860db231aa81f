-- Extend a lease by its ttl, only for the node holding it under that same epoch.
-- KEYS: 1 lease
-- ARGV: 1 node id, 2 epoch, 3 ttl ms
-- Returns the Redis time (ms) when renewed, 0 when the lease is no longer that grant's.
local held = redis.call('HMGET', KEYS[1], 'node', 'epoch')
if held[1] ~= ARGV[1] or held[2] ~= ARGV[2] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'renewed', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return now
