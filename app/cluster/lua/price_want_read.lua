-- Every live node's held symbols.
-- KEYS: 1 nodes (id -> expiry), 2 wants (id -> JSON)
-- Returns {{id, ...}, {symbols JSON, ...}}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('HDEL', KEYS[2], dead)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if #ids == 0 then
  return {{}, {}}
end
return {ids, redis.call('HMGET', KEYS[2], unpack(ids))}
