-- Admit one request against every limit of its subjects (the key, its team) at once.
-- Atomic: Redis runs one script at a time, so concurrent requests on any number of
-- routers are admitted one after another against the same counters.
--
-- KEYS, per subject i: [2i-1] its rate hash, [2i] the base name of its spend counters.
-- ARGV[1] = number of subjects; ARGV[2] = window in seconds (60);
-- then per subject, 6 values: rpm, tpm, tokens, budget, cost, period
--   (rpm, tpm, budget: -1 = no limit; budget and cost in 1e-9 currency units;
--    period: "" lifetime, "hour", "day", "week" (ISO, Monday), "month"; all UTC).
-- Rate hash fields: "r<second>" requests and "t<second>" tokens admitted in that second.
--
-- Returns {admitted, subject index that refused (0 if admitted), reason, retry after (s),
--          now, then per subject: requests used, tokens used, spent, period start, period end}
-- reason: "" | "rpm" | "tpm" | "too_large" | "budget". Counts are after this request when admitted.

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = (mp < 10) and (mp + 3) or (mp - 9)
  if m <= 2 then y = y + 1 end
  return y, m
end

local function period_bounds(p, now)
  if p == "" then return 0, -1 end
  if p == "hour" then local s = now - now % 3600; return s, s + 3600 end
  if p == "day" then local s = now - now % 86400; return s, s + 86400 end
  if p == "week" then local s = now - (now + 3 * 86400) % (7 * 86400); return s, s + 7 * 86400 end
  local y, m = civil_from_days(math.floor(now / 86400))
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return days_from_civil(y, m, 1) * 86400, days_from_civil(ny, nm, 1) * 86400
end

-- Seconds until enough of the oldest buckets leave the window to free `need`.
local function wait_for(buckets, need, now, window)
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  local freed = 0
  for _, b in ipairs(buckets) do
    freed = freed + b[2]
    if freed >= need then return b[1] + window - now end
  end
  return window
end

local n = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now = tonumber(redis.call("TIME")[1])
local seen = {}

for i = 1, n do
  local base = 2 + (i - 1) * 6
  local rpm, tpm = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local tokens = tonumber(ARGV[base + 3])
  local budget, cost = tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
  local period = ARGV[base + 6]
  local s = {requests = 0, tokens = 0, spent = 0, pstart = 0, pend = -1}
  if rpm >= 0 or tpm >= 0 then
    local rate = KEYS[2 * i - 1]
    local flat = redis.call("HGETALL", rate)
    local rb, tb, stale = {}, {}, {}
    for j = 1, #flat, 2 do
      local field, value = flat[j], tonumber(flat[j + 1])
      local sec = tonumber(string.sub(field, 2))
      if sec <= now - window then
        stale[#stale + 1] = field
      elseif string.sub(field, 1, 1) == "r" then
        s.requests = s.requests + value; rb[#rb + 1] = {sec, value}
      else
        s.tokens = s.tokens + value; tb[#tb + 1] = {sec, value}
      end
    end
    if #stale > 0 then redis.call("HDEL", rate, unpack(stale)) end
    if rpm >= 0 and s.requests + 1 > rpm then
      return {0, i, "rpm", wait_for(rb, s.requests + 1 - rpm, now, window), now}
    end
    if tpm >= 0 and tokens > tpm then
      return {0, i, "too_large", 0, now}
    end
    if tpm >= 0 and s.tokens + tokens > tpm then
      return {0, i, "tpm", wait_for(tb, s.tokens + tokens - tpm, now, window), now}
    end
  end
  if budget >= 0 then
    s.pstart, s.pend = period_bounds(period, now)
    s.spend = KEYS[2 * i] .. ":" .. string.format("%d", s.pstart)
    s.spent = tonumber(redis.call("GET", s.spend) or "0")
    if s.spent + cost > budget then
      local retry = -1
      if s.pend >= 0 then retry = s.pend - now end
      return {0, i, "budget", retry, now, s.spent}
    end
  end
  seen[i] = s
end

local out = {1, 0, "", 0, now}
for i = 1, n do
  local base = 2 + (i - 1) * 6
  local rpm, tpm = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local s = seen[i]
  if rpm >= 0 or tpm >= 0 then
    local rate = KEYS[2 * i - 1]
    redis.call("HINCRBY", rate, "r" .. now, 1)
    s.requests = s.requests + 1
    if tonumber(ARGV[base + 3]) > 0 then
      redis.call("HINCRBY", rate, "t" .. now, ARGV[base + 3])
      s.tokens = s.tokens + tonumber(ARGV[base + 3])
    end
    redis.call("EXPIRE", rate, window + 5)
  end
  if s.spend then
    local cost = ARGV[base + 5]
    redis.call("INCRBY", s.spend, cost)
    s.spent = s.spent + tonumber(cost)
    if s.pend >= 0 then redis.call("EXPIRE", s.spend, s.pend - now + 7 * 86400) end
  end
  out[#out + 1] = s.requests
  out[#out + 1] = s.tokens
  out[#out + 1] = s.spent
  out[#out + 1] = s.pstart
  out[#out + 1] = s.pend
end
return out
