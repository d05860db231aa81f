-- Hold one attempt against a windowed limit that counts settled hits and attempts in flight.
-- Each hold expires by itself (score = expiry, ms of Redis TIME), so a node that dies with an
-- attempt in flight leaks it for one hold's lifetime at most.
-- KEYS: 1 counter (STRING), 2 holds (ZSET hold id -> expiry)
-- ARGV: 1 limit, 2 hold id, 3 hold ttl ms
-- Returns {1 held | 0 refused, settled count, live holds, ms until the counter's window ends}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = redis.call('ZCARD', KEYS[2])
-- Holding the same id twice (a retried call) holds one attempt, not two.
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  if count + held >= tonumber(ARGV[1]) then
    return {0, count, held, redis.call('PTTL', KEYS[1])}
  end
  held = held + 1
end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
return {1, count, held, redis.call('PTTL', KEYS[1])}
