-- wrk script: POST OpenAI chat requests, each with a unique prompt, and print
-- one JSON summary line (prefixed WRK_JSON, latencies in microseconds).
--
-- Arguments after `--`: <model> <api-key> <run-nonce>
--   wrk -t1 -c64 -d10s -s bench/load/chat.lua http://127.0.0.1:18001 -- bench sk-bench-master-key run1
--
-- Non-2xx/3xx answers are counted by wrk itself in errors.status.

local model = "bench"
local api_key = "sk-bench-master-key"
local nonce = tostring(os.time())
local counter = 0
local thread_index = 0
local thread_count = 0

function setup(thread)
    thread_count = thread_count + 1
    thread:set("thread_index", thread_count)
end

function init(args)
    model = args[1] or model
    api_key = args[2] or api_key
    nonce = (args[3] or nonce) .. "-t" .. tostring(thread_index)
end

function request()
    counter = counter + 1
    local body = string.format(
        '{"model":"%s","messages":[{"role":"system","content":"You are a concise assistant."},' ..
        '{"role":"user","content":"Benchmark prompt %s-%d: say hello in one short sentence."}],' ..
        '"max_tokens":32,"temperature":0}',
        model, nonce, counter)
    return wrk.format("POST", "/v1/chat/completions", {
        ["Host"] = "127.0.0.1",
        ["Content-Type"] = "application/json",
        ["Accept"] = "application/json",
        ["Authorization"] = "Bearer " .. api_key,
    }, body)
end

function done(summary, latency, requests)
    local seconds = summary.duration / 1e6
    local e = summary.errors
    io.write(string.format(
        'WRK_JSON {"requests":%d,"duration_s":%.6f,"rps":%.3f,' ..
        '"latency_us":{"min":%d,"mean":%.3f,"max":%d,"stdev":%.3f,' ..
        '"p50":%d,"p90":%d,"p99":%d,"p999":%d},' ..
        '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
        summary.requests, seconds, summary.requests / seconds,
        latency.min, latency.mean, latency.max, latency.stdev,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
        e.connect, e.read, e.write, e.status, e.timeout))
end
