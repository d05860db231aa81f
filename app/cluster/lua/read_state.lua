-- A user's whole latest-value state with its epoch and offset, read atomically.
-- KEYS: meta, positions, orders, order_recency, orders_done, account
-- Returns {state epoch or "", offset, fencing epoch, {symbol, json, ...}, {order json, ...}
-- newest first, account json or ""}.
local meta = redis.call('HMGET', KEYS[1], 'e', 'o', 'fe')
local positions = redis.call('HGETALL', KEYS[2])
local ids = redis.call('ZREVRANGE', KEYS[4], 0, -1)
local orders = {}
-- unpack() is bounded by Lua's C stack: fetch in slices.
for first = 1, #ids, 500 do
  local last = math.min(first + 499, #ids)
  local slice = redis.call('HMGET', KEYS[3], unpack(ids, first, last))
  for i = 1, #slice do
    if slice[i] then orders[#orders + 1] = slice[i] end
  end
end
return {meta[1] or '', meta[2] or '0', meta[3] or '0', positions, orders,
  redis.call('GET', KEYS[6]) or ''}
