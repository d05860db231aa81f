-- Give a lease back at once, only for the node holding it under that same epoch.
-- KEYS: 1 lease, 2 its grants
-- ARGV: 1 node id, 2 epoch
-- Returns 1 when released, 0 when the lease was no longer that grant's.
local held = redis.call('HMGET', KEYS[1], 'node', 'epoch')
if held[1] ~= ARGV[1] or held[2] ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1])
if redis.call('HGET', KEYS[2], 'epoch') == ARGV[2] then
  redis.call('HSET', KEYS[2], 'ended', 'released')
end
return 1
