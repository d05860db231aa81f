-- Mark a node as taking part in the lease spreading for ttl ms; list the nodes that do.
-- KEYS: 1 presence (sorted set: node id -> expiry ms, Redis time)
-- ARGV: 1 node id, 2 ttl ms
-- Returns the live node ids.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
