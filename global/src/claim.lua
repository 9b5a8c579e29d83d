-- wscap: claim a share of one pod's capacity for one instance, atomically.
--
-- KEYS[1]  the pod's hash, wscap:{<cluster>/<ip:port>}
-- KEYS[2]  the fleet record, wscap:fleet
-- ARGV     instance id, wanted share, live count, pod limit, lease ttl ms, restart grace ms,
--          demand window ms, epoch this instance last saw (0: none), fresh window ms, hold ms
--
-- Pod fields: limit, demand, and per holder i (<instance id>#<process token>): s:<i> share,
-- l:<i> live connections, e:<i> lease expiry (server ms), x:<i> when a claim first found that
-- lease ended (server ms).
--
-- An ended lease is held, not dropped: its holder's share (or its live count, if larger) still
-- counts against the limit until `hold` ms after the first claim that found it ended. A lease
-- can end while its holder lives and holds connections: Redis frozen or unreachable for longer
-- than the ttl, restored from a snapshot, or the holder itself stalled. After such an outage
-- the hold starts at the first claim that finds the lease ended, which is a claim after the
-- outage, and a holder that is alive renews within a refresh of reaching Redis again (well
-- within `hold`, the lease ttl), so its connections are never handed out twice. A holder that
-- is gone (killed: its connections died with it) is dropped `hold` ms after that.
--
-- Restart grace: while now < grace_until, an instance may only reclaim what it holds (its live
-- count). It applies when the ledger shows a possible loss: an instance that saw an earlier
-- epoch finds none, or another one (Redis lost its data; grace for restart_grace_ms from then).
-- A ledger created by an instance that saw none (a cold start, as far as it knows) gets only
-- the fresh window (one refresh plus one claim timeout): long enough for any instance that
-- still holds connections from before a loss to reach Redis and turn it into a full grace.
-- A pod new to a ledger that exists gets no grace at all.
--
-- Invariant kept: the sum of shares of instances whose lease has not ended or is held is at
-- most the limit, except when the limit itself was lowered (a share is never taken away here:
-- its holder shrinks it).
--
-- A claim that cannot be granted in full marks the pod as in demand; for the demand window
-- every instance keeps no spare share on it, so unused share flows back within one refresh.
--
-- Returns { granted share, server now ms, in grace (0/1), in demand (0/1), epoch, then id,
-- share, live for every live instance (this one included) }.
local key = KEYS[1]
local inst = ARGV[1]
local want = tonumber(ARGV[2])
local live = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local grace = tonumber(ARGV[6])
local window = tonumber(ARGV[7])
local seen = tonumber(ARGV[8])
local fresh = tonumber(ARGV[9])
local hold = tonumber(ARGV[10])
if not (want and live and limit and ttl and grace and window and seen and fresh and hold) then
  return redis.error_reply('wscap: non-numeric argument')
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local epoch = tonumber(redis.call('HGET', KEYS[2], 'epoch'))
local grace_until = tonumber(redis.call('HGET', KEYS[2], 'grace_until')) or 0
if not epoch then
  -- No ledger on this Redis: a cold start, or Redis lost its data.
  epoch = now
  if seen > 0 then
    grace_until = now + grace -- this instance used a ledger here before: a loss
  else
    grace_until = now + math.min(fresh, grace)
  end
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'grace_until', grace_until)
elseif seen > 0 and seen ~= epoch and now + grace > grace_until then
  -- This instance used an earlier ledger: it was lost, and re-created since by another.
  grace_until = now + grace
  redis.call('HSET', KEYS[2], 'grace_until', grace_until)
end
local in_grace = now < grace_until

local fields = redis.call('HGETALL', key)
local shares, lives, expiries, ended = {}, {}, {}, {}
for i = 1, #fields, 2 do
  local f, v = fields[i], fields[i + 1]
  local kind, id = string.sub(f, 1, 2), string.sub(f, 3)
  if kind == 's:' then shares[id] = tonumber(v) or 0
  elseif kind == 'l:' then lives[id] = tonumber(v) or 0
  elseif kind == 'e:' then expiries[id] = tonumber(v) or 0
  elseif kind == 'x:' then ended[id] = tonumber(v) or 0
  end
end
local others = 0
local cur = 0
for id, exp in pairs(expiries) do
  if id == inst then
    if exp >= now then cur = shares[id] or 0 end
  elseif exp >= now then
    others = others + (shares[id] or 0)
  else
    local since = ended[id]
    if since == nil then
      since = now
      redis.call('HSET', key, 'x:' .. id, now)
    end
    if now - since >= hold then
      redis.call('HDEL', key, 's:' .. id, 'l:' .. id, 'e:' .. id, 'x:' .. id)
      shares[id], lives[id], expiries[id] = nil, nil, nil
    else
      -- Held: what it may hold counts against the limit, as its share.
      shares[id] = math.max(shares[id] or 0, lives[id] or 0)
      others = others + shares[id]
    end
  end
end
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
if ended[inst] then redis.call('HDEL', key, 'x:' .. inst) end
-- A pod nobody refreshes any more disappears on its own.
redis.call('PEXPIRE', key, 2 * ttl + grace + hold)
shares[inst], lives[inst], expiries[inst] = granted, live, now + ttl

local out = { granted, now, in_grace and 1 or 0, in_demand and 1 or 0, epoch }
for id, _ in pairs(expiries) do
  table.insert(out, id)
  table.insert(out, shares[id] or 0)
  table.insert(out, lives[id] or 0)
end
return out
