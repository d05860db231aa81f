-- Apply a run of one user's portfolio events to the user's latest-value state and publish a
-- change notice for each, atomically: fencing check, state writes, per-user offsets, PUBLISH.
-- One call for many events: the per-command cost on both ends (encoding, parsing, the round
-- through the script engine) is paid once per run instead of once per event.
-- KEYS: meta, positions, orders, order_recency, orders_done, account (all {userId}-tagged)
-- ARGV: 1 writer's account epoch (integer), 2 state epoch to use if the user has none yet,
--       3 closed orders kept, 4 channel, then per event 6 values: type, payload JSON, symbol
--       or order id ("" when the type has none), "1" when an order status is terminal,
--       emitted-at (seconds, a JSON number), "1" for a quiet price tick
-- Returns {1, state epoch, offset of the last event} when applied, {0, stored fencing epoch}
-- when refused (then nothing was written).
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
local kept = tonumber(ARGV[3])
local offset = 0
for i = 5, #ARGV, 6 do
  offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
  local kind, payload, field = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if kind == 'position:updated' then
    redis.call('HSET', KEYS[2], field, payload)
  elseif kind == 'position:closed' then
    redis.call('HDEL', KEYS[2], field)
  elseif kind == 'order:updated' then
    redis.call('HSET', KEYS[3], field, payload)
    redis.call('ZADD', KEYS[4], offset, field)
    if ARGV[i + 3] == '1' then
      redis.call('ZADD', KEYS[5], offset, field)
      local excess = redis.call('ZCARD', KEYS[5]) - kept
      if excess > 0 then
        local evicted = redis.call('ZPOPMIN', KEYS[5], excess)
        for j = 1, #evicted, 2 do
          redis.call('HDEL', KEYS[3], evicted[j])
          redis.call('ZREM', KEYS[4], evicted[j])
        end
      end
    else
      redis.call('ZREM', KEYS[5], field)
    end
  elseif kind == 'account:updated' then
    redis.call('SET', KEYS[6], payload)
  end
  -- trade:executed changes no state: like the in-process store, only its notice goes out.
  redis.call('PUBLISH', ARGV[4], '["' .. epoch .. '",' .. string.format('%d', offset) .. ',"'
    .. kind .. '",' .. payload .. ',' .. ARGV[i + 4] .. ',' .. ARGV[i + 5] .. ']')
end
return {1, epoch, offset}
