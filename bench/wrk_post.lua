-- wrk script for bench/overhead.py: POST a fixed JSON body with fixed headers, count requests issued,
-- and print one machine-readable line from done(). Configured through the environment because
-- wrk only passes script arguments to init(), which runs in the worker threads.
local body_file = assert(os.getenv("FMB_BODY_FILE"), "FMB_BODY_FILE is not set")
local f = assert(io.open(body_file, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("FMB_AUTH") or "bench")
local chunks = os.getenv("FMB_CHUNKS")
if chunks and chunks ~= "" then
  wrk.headers["x-emulator-chunks"] = chunks
end

local threads = {}
local prepared = nil
issued = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  prepared = wrk.format()
end

-- Counting here (one Lua call per request) lets the bench match the gateway's call records with the
-- requests wrk sent, including the ones still in flight when wrk's timer stopped.
function request()
  issued = issued + 1
  return prepared
end

function done(summary, latency, requests)
  local sent = 0
  for _, t in ipairs(threads) do
    sent = sent + t:get("issued")
  end
  -- wrk calls request() once in the first thread's state before the run, only to check the request
  -- (script_verify_request in wrk.c); that one is never sent.
  sent = sent - 1
  local e = summary.errors
  io.write(string.format(
    'FMB_RESULT {"requests":%d,"issued":%d,"duration_us":%d,"bytes":%d,'
      .. '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"min_us":%d,"max_us":%d}\n',
    summary.requests, sent, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.min, latency.max
  ))
end
