-- Replace a user's whole latest-value state at once (the consumer rebuilt it from the broker:
-- after a start, or after Redis lost its data): fencing check, clear, write every event, a
-- new state epoch, and one "state:reset" notice, so readers re-read the whole state instead of
-- ever seeing a part of it.
-- KEYS: meta, positions, orders, order_recency, orders_done, account (all {userId}-tagged)
-- ARGV: 1 writer's account epoch, 2 the new state epoch, 3 closed orders kept, 4 channel,
--       5 emitted-at, 6 the user id (JSON-quoted), then per event 4 values: type,
--       payload JSON, symbol or order id, "1" when an order status is terminal
-- Returns {1, state epoch, offset} when applied, {0, stored fencing epoch} when refused.
local meta = redis.call('HMGET', KEYS[1], 'fe')
local fencing = tonumber(meta[1]) or 0
local writer = tonumber(ARGV[1])
if writer < fencing then
  return {0, tostring(fencing)}
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
local epoch = ARGV[2]
redis.call('HSET', KEYS[1], 'e', epoch, 'fe', ARGV[1], 'o', 1)
local rank = 0
for i = 7, #ARGV, 4 do
  local kind, payload, field = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  rank = rank + 1
  if kind == 'position:updated' then
    redis.call('HSET', KEYS[2], field, payload)
  elseif kind == 'position:closed' then
    redis.call('HDEL', KEYS[2], field)
  elseif kind == 'order:updated' then
    -- Ranks below 1 keep the rebuilt orders older than anything written after the reset.
    local score = rank / (#ARGV + 1)
    redis.call('HSET', KEYS[3], field, payload)
    redis.call('ZADD', KEYS[4], score, field)
    if ARGV[i + 3] == '1' then
      redis.call('ZADD', KEYS[5], score, field)
    else
      redis.call('ZREM', KEYS[5], field)
    end
  elseif kind == 'account:updated' then
    redis.call('SET', KEYS[6], payload)
  end
end
local excess = redis.call('ZCARD', KEYS[5]) - tonumber(ARGV[3])
if excess > 0 then
  local evicted = redis.call('ZPOPMIN', KEYS[5], excess)
  for i = 1, #evicted, 2 do
    redis.call('HDEL', KEYS[3], evicted[i])
    redis.call('ZREM', KEYS[4], evicted[i])
  end
end
redis.call('PUBLISH', ARGV[4], '["' .. epoch .. '",1,"state:reset",{"userId":' .. ARGV[6]
  .. '},' .. ARGV[5] .. ',0]')
return {1, epoch, 1}
