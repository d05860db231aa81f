-- Write a node's held symbols; they count for ttl ms unless written again.
-- KEYS: 1 nodes (id -> expiry), 2 wants (id -> JSON)
-- ARGV: 1 node id, 2 symbols JSON, 3 ttl ms
-- Returns 1 when the node's set changed (or it had lapsed), else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('HDEL', KEYS[2], dead)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local before = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
if before == ARGV[2] then
  return 0
end
return 1
