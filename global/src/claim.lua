-- wscap: claim a share of one pod's capacity for one instance, atomically.
--
-- KEYS[1]  the pod's hash, wscap:{<cluster>/<ip:port>} (one Redis Cluster slot per pod)
-- ARGV     instance id, wanted share, live count, pod limit, lease ttl ms, restart grace ms,
--          demand window ms
--
-- Fields: born (server ms the hash was created), limit, and per instance i:
--   s:<i> share, l:<i> live connections, e:<i> lease expiry (server ms).
-- Server time decides expiry; instances' clocks never matter.
--
-- Invariant kept: the sum of shares of instances whose lease has not expired is at most the
-- limit, except when the limit itself was lowered (a share is never taken away here: its holder
-- shrinks it).
--
-- A claim that cannot be granted in full marks the pod as in demand; for the demand window
-- every instance keeps no spare share on it, so unused share flows back within one refresh.
--
-- Returns { granted share, server now ms, in grace (0/1), in demand (0/1), then id, share, live
-- for every live instance (this one included) }.
local key = KEYS[1]
local inst = ARGV[1]
local want = tonumber(ARGV[2])
local live = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local grace = tonumber(ARGV[6])
local window = tonumber(ARGV[7])
if not (want and live and limit and ttl and grace and window) then
  return redis.error_reply('wscap: non-numeric argument')
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local born = tonumber(redis.call('HGET', key, 'born'))
if not born then
  -- A pod unknown to this Redis: first use, or Redis lost its data. Until the grace ends, every
  -- instance may reclaim only what it already holds, so capacity held before a restart is never
  -- handed out twice.
  born = now
  redis.call('HSET', key, 'born', born)
end
local in_grace = now < born + grace

local fields = redis.call('HGETALL', key)
local shares, lives, expiries = {}, {}, {}
for i = 1, #fields, 2 do
  local f, v = fields[i], fields[i + 1]
  local kind, id = string.sub(f, 1, 2), string.sub(f, 3)
  if kind == 's:' then shares[id] = tonumber(v) or 0
  elseif kind == 'l:' then lives[id] = tonumber(v) or 0
  elseif kind == 'e:' then expiries[id] = tonumber(v) or 0
  end
end

local others = 0
for id, exp in pairs(expiries) do
  if exp < now then
    redis.call('HDEL', key, 's:' .. id, 'l:' .. id, 'e:' .. id)
    shares[id], lives[id], expiries[id] = nil, nil, nil
  elseif id ~= inst then
    others = others + (shares[id] or 0)
  end
end

local cur = 0
if expiries[inst] then cur = shares[inst] or 0 end
local granted
if want <= cur then
  granted = want
else
  local cap = want
  if in_grace then cap = math.min(want, math.max(cur, live)) end
  granted = math.max(cur, math.min(cap, limit - others))
end
if granted < 0 then granted = 0 end
if granted < want then
  redis.call('HSET', key, 'demand', now)
end
local demand = tonumber(redis.call('HGET', key, 'demand'))
local in_demand = demand ~= nil and now < demand + window

redis.call('HSET', key, 's:' .. inst, granted, 'l:' .. inst, live, 'e:' .. inst, now + ttl,
  'limit', limit)
-- A pod nobody refreshes any more disappears on its own.
redis.call('PEXPIRE', key, 2 * ttl + grace)
shares[inst], lives[inst], expiries[inst] = granted, live, now + ttl

local out = { granted, now, in_grace and 1 or 0, in_demand and 1 or 0 }
for id, _ in pairs(expiries) do
  table.insert(out, id)
  table.insert(out, shares[id] or 0)
  table.insert(out, lives[id] or 0)
end
return out
