-- Give slots back.
-- KEYS: 1 cluster-wide set, 2 the node's set, 3.. each member's user set (parallel to ARGV)
-- ARGV: members
-- Returns how many were still held cluster-wide.
local released = 0
for i = 1, #ARGV do
  released = released + redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('ZREM', KEYS[i + 2], ARGV[i])
end
return released
