-- Grant a lease to a node if nobody else holds it; every grant takes the next epoch.
-- KEYS: 1 lease (hash: node, epoch, since, renewed), 2 its grants (hash: epoch, node, ended)
-- ARGV: 1 node id, 2 ttl ms, 3 lowest epoch to grant (0: no floor)
-- Returns {1, epoch, granted at ms, previous holder or "", how it ended ("released" or "")}
-- when granted, {0, holder, its epoch, ms left} when another node holds it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('HMGET', KEYS[1], 'node', 'epoch')
if held[1] and held[1] ~= ARGV[1] then
  return {0, held[1], tonumber(held[2]) or 0, redis.call('PTTL', KEYS[1])}
end
-- The holder itself asking again has stopped consuming (it lost track of its lease): it gets
-- a new epoch, so whatever its old grant still had in flight is fenced off.
local last = redis.call('HMGET', KEYS[2], 'epoch', 'node', 'ended')
local floor = tonumber(ARGV[3])
if not last[1] then
  -- No grant on record: the first ever, or Redis lost its data (and this counter with it).
  -- Counting from Redis's clock in ms then keeps every new epoch above any granted before,
  -- which may live on in writes queued by nodes: a new holder is never fenced out by an old
  -- one. (A Redis replaced by one whose clock is behind by more than the lease's life is the
  -- exception: set the clock right.)
  floor = math.max(floor, now)
end
if (tonumber(last[1]) or 0) < floor - 1 then
  redis.call('HSET', KEYS[2], 'epoch', floor - 1)
end
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
redis.call('HSET', KEYS[2], 'node', ARGV[1], 'ended', '')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'epoch', epoch, 'since', now, 'renewed', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, epoch, now, last[2] or '', last[3] or ''}
