-- Settle a hold taken by counter_hold: drop it, and count a hit, clear the count, or neither.
-- KEYS: 1 counter (STRING), 2 holds (ZSET)
-- ARGV: 1 hold id, 2 "add" | "reset" | "release", 3 window ms (a first hit opens the window)
-- Returns the count after settling.
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == 'add' then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return n
end
if ARGV[2] == 'reset' then
  redis.call('DEL', KEYS[1])
  return 0
end
return tonumber(redis.call('GET', KEYS[1]) or '0')
