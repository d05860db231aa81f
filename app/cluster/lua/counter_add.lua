-- Count one more hit in a fixed window that starts at the first hit.
-- KEYS: 1 counter   ARGV: 1 window ms
-- Returns {count, ms until the window ends}.
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {n, redis.call('PTTL', KEYS[1])}
