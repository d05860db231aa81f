-- Write a node's stats row; it counts as live for ttl ms.
-- KEYS: 1 index (id -> expiry), 2 rows (id -> JSON), 3 seen (id -> ms)
-- ARGV: 1 node id, 2 row JSON, 3 ttl ms
-- Returns the Redis time (ms) written as last seen.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('HDEL', KEYS[2], dead)
  redis.call('HDEL', KEYS[3], dead)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return now
