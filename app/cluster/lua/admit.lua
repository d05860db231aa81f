-- Cluster-wide connection admission over expiring slots (score = expiry, ms of Redis TIME).
-- KEYS: 1 the user's set, 2 the cluster-wide set, 3 this node's set
-- ARGV: 1 member ("<connectionId> <userId>"), 2 ttl ms, 3 per-user limit, 4 total limit,
--       5 "1" to restore a connection that is already open (no limit applies)
-- Returns {1, "ok", user count, total count} or {0, "user"|"total", user count, total count}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, 3 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
end
local ttl = tonumber(ARGV[2])
local users = redis.call('ZCARD', KEYS[1])
local total = redis.call('ZCARD', KEYS[2])
-- Admitting the same member twice (a retried call) holds one slot, not two.
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  if ARGV[5] ~= '1' then
    if users >= tonumber(ARGV[3]) then
      return {0, 'user', users, total}
    end
    if total >= tonumber(ARGV[4]) then
      return {0, 'total', users, total}
    end
  end
  users = users + 1
  total = total + 1
end
for i = 1, 3 do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return {1, 'ok', users, total}
