-- Extend live slots by one ttl (the heartbeat). A slot that expired stays expired: its place
-- may already be taken, so the caller learns it is missing and decides.
-- KEYS: 1 cluster-wide set, 2 this node's set, 3.. each member's user set (parallel to ARGV 2..)
-- ARGV: 1 ttl ms, 2.. members
-- Returns the members that were not refreshed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local missing = {}
for i = 2, #ARGV do
  local member, user_key = ARGV[i], KEYS[i + 1]
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, member)
    redis.call('ZADD', KEYS[2], 'XX', now + ttl, member)
    redis.call('ZADD', user_key, 'XX', now + ttl, member)
    redis.call('PEXPIRE', user_key, ttl)
  else
    missing[#missing + 1] = member
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return missing
