-- Apply one portfolio event to a user's latest-value state and publish its change notice,
-- atomically: fencing check, state write, per-user offset, PUBLISH.
-- KEYS: meta, positions, orders, order_recency, orders_done, account (all {userId}-tagged)
-- ARGV: 1 writer's account epoch (integer), 2 state epoch to use if the user has none yet,
--       3 event type, 4 payload JSON, 5 symbol or order id ("" when the type has none),
--       6 "1" when an order status is terminal, 7 closed orders kept, 8 channel,
--       9 emitted-at (seconds, a JSON number), 10 "1" for a quiet price tick
-- Returns {1, state epoch, offset} when applied, {0, stored fencing epoch} when refused.
local meta = redis.call('HMGET', KEYS[1], 'e', 'fe')
local fencing = tonumber(meta[2]) or 0
local writer = tonumber(ARGV[1])
if writer < fencing then
  return {0, tostring(fencing)}
end
local epoch = meta[1]
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'e', epoch)
end
if writer > fencing or not meta[2] then
  redis.call('HSET', KEYS[1], 'fe', ARGV[1])
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local kind, payload, field = ARGV[3], ARGV[4], ARGV[5]
if kind == 'position:updated' then
  redis.call('HSET', KEYS[2], field, payload)
elseif kind == 'position:closed' then
  redis.call('HDEL', KEYS[2], field)
elseif kind == 'order:updated' then
  redis.call('HSET', KEYS[3], field, payload)
  redis.call('ZADD', KEYS[4], offset, field)
  if ARGV[6] == '1' then
    redis.call('ZADD', KEYS[5], offset, field)
    local excess = redis.call('ZCARD', KEYS[5]) - tonumber(ARGV[7])
    if excess > 0 then
      local evicted = redis.call('ZPOPMIN', KEYS[5], excess)
      for i = 1, #evicted, 2 do
        redis.call('HDEL', KEYS[3], evicted[i])
        redis.call('ZREM', KEYS[4], evicted[i])
      end
    end
  else
    redis.call('ZREM', KEYS[5], field)
  end
elseif kind == 'account:updated' then
  redis.call('SET', KEYS[6], payload)
end
-- trade:executed changes no state: like the in-process store, only its notice goes out.
local notice = '["' .. epoch .. '",' .. string.format('%d', offset) .. ',"' .. kind .. '",'
  .. payload .. ',' .. ARGV[9] .. ',' .. ARGV[10] .. ']'
redis.call('PUBLISH', ARGV[8], notice)
return {1, epoch, offset}
