-- Settle a reservation at the real usage: replace the reserved tokens and cost by what
-- the request really used. Counters that have left their window or period are left alone.
--
-- KEYS, per subject i: [2i-1] its rate hash, [2i] its spend counter (with period start).
-- ARGV[1] = number of subjects; ARGV[2] = the second the reservation was counted in;
-- then per subject, 2 values: token delta, cost delta (1e-9 currency units).

local n = tonumber(ARGV[1])
local field = "t" .. ARGV[2]
for i = 1, n do
  local tokens, cost = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  if tonumber(tokens) ~= 0 and redis.call("HEXISTS", KEYS[2 * i - 1], field) == 1 then
    redis.call("HINCRBY", KEYS[2 * i - 1], field, tokens)
  end
  if tonumber(cost) ~= 0 and redis.call("EXISTS", KEYS[2 * i]) == 1 then
    redis.call("INCRBY", KEYS[2 * i], cost)
  end
end
return 1
