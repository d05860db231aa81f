-- The live nodes' rows.
-- KEYS: 1 index, 2 rows, 3 seen
-- Returns {now ms, {id, ...}, {row JSON, ...}, {last seen ms, ...}}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('HDEL', KEYS[2], dead)
  redis.call('HDEL', KEYS[3], dead)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if #ids == 0 then
  return {now, {}, {}, {}}
end
return {now, ids, redis.call('HMGET', KEYS[2], unpack(ids)), redis.call('HMGET', KEYS[3], unpack(ids))}
