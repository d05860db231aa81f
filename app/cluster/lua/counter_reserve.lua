-- Take one unit of a windowed budget if any is left.
-- KEYS: 1 counter   ARGV: 1 limit, 2 window ms
-- Returns {1 granted | 0 refused, count, ms until the window ends (-2 when none is open)}.
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
  return {0, n, redis.call('PTTL', KEYS[1])}
end
n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {1, n, redis.call('PTTL', KEYS[1])}
