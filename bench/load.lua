-- wrk script of the taskledger benchmarks (bench/load.py runs it; one wrk thread).
--
-- wrk ... -s bench/load.lua URL -- MODE DATAFILE NAMESPACE LIMIT
--   gateway  token callbacks; DATAFILE lines "path<TAB>provider_task_id"; every body is
--            made here and is distinct (NAMESPACE and a counter), tasks taken in turn
--   dupes    token callbacks; per task a "running" then a "finished" delivery, each sent
--            10 times (all running sends first, round-robin over the tasks)
--   signed   Standard Webhooks events signed beforehand; DATAFILE lines
--            "path<TAB>webhook-id<TAB>timestamp<TAB>signature<TAB>body", each sent once
--   submit   one request, DATAFILE line "path<TAB>authorization<TAB>body", sent repeatedly
-- LIMIT > 0 stops after that many responses (prints BENCH_LIMIT_REACHED; the caller
-- then interrupts wrk). done() prints one line "BENCH_JSON {...}".

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

-- per-thread counters, read by done() through thread:get
sent, seen, ok, client_errors, server_errors, other, wrapped = 0, 0, 0, 0, 0, 0, 0

local mode, namespace, limit = "gateway", "0", 0
local rows, prepared = {}, {}
local finished = false
local json = { ["Content-Type"] = "application/json" }

local PROMPT = "A slow dolly shot through a lighthouse at dusk, waves breaking on black "
  .. "rocks below, warm lamp light sweeping over fog, 35mm film grain, gentle camera "
  .. "shake, seagulls crossing the frame, the keeper closing a wooden door behind him, "
  .. "cinematic colour grade, natural sound of wind and surf"

local GATEWAY = '{"code":200,"msg":"success","data":{"task_id":"%s","status":"running",'
  .. '"progress":%d,"created_time":"2026-11-22T10:00:00Z","model":"sora-2-official",'
  .. '"type":"video","input":{"prompt":"' .. PROMPT .. '","duration":8,'
  .. '"aspect_ratio":"16:9","resolution":"720p"},"request_id":"%s-%d"}}'

local RUNNING = '{"code":200,"msg":"success","data":{"task_id":"%s","status":"running",'
  .. '"progress":40,"created_time":"2026-11-22T10:00:00Z"}}'

local FINISHED = '{"code":200,"msg":"success","data":{"task_id":"%s","status":"finished",'
  .. '"progress":100,"created_time":"2026-11-22T10:00:00Z",'
  .. '"files":[{"file_url":"https://cdn.example/%s.mp4","file_type":"video"}]}}'

local function fields(line)
  local out = {}
  for part in string.gmatch(line, "[^\t]+") do
    out[#out + 1] = part
  end
  return out
end

local function prepare_signed()
  for i, row in ipairs(rows) do
    local headers = {
      ["Content-Type"] = "application/json",
      ["webhook-id"] = row[2],
      ["webhook-timestamp"] = row[3],
      ["webhook-signature"] = row[4],
    }
    prepared[i] = wrk.format("POST", row[1], headers, row[5])
  end
end

function init(args)
  mode, namespace, limit = args[1], args[3] or "0", tonumber(args[4] or "0")
  for line in io.lines(args[2]) do
    rows[#rows + 1] = fields(line)
  end
  if mode == "signed" then
    prepare_signed()
  elseif mode == "submit" then
    local row = rows[1]
    local headers = { ["Content-Type"] = "application/json", ["Authorization"] = row[2] }
    prepared[1] = wrk.format("POST", row[1], headers, row[3])
  end
end

local function gateway(n)
  local row = rows[n % #rows + 1]
  local progress = math.floor(n / #rows) % 99 + 1
  local body = string.format(GATEWAY, row[2], progress, namespace, n)
  return wrk.format("POST", row[1], json, body)
end

local function dupes(n)
  local tasks = #rows
  local row = rows[n % tasks + 1]
  local body
  if n < 10 * tasks then
    body = string.format(RUNNING, row[2])
  else
    body = string.format(FINISHED, row[2], row[2])
  end
  return wrk.format("POST", row[1], json, body)
end

local function signed(n)
  if n >= #prepared then
    wrapped = wrapped + 1
  end
  return prepared[n % #prepared + 1]
end

function request()
  local n = sent
  sent = sent + 1
  if mode == "gateway" then
    return gateway(n)
  elseif mode == "dupes" then
    return dupes(n)
  elseif mode == "signed" then
    return signed(n)
  end
  return prepared[1]
end

function response(status, headers, body)
  seen = seen + 1
  if status >= 200 and status < 300 then
    ok = ok + 1
  elseif status >= 400 and status < 500 then
    client_errors = client_errors + 1
  elseif status >= 500 then
    server_errors = server_errors + 1
  else
    other = other + 1
  end
  if limit > 0 and seen >= limit and not finished then
    finished = true
    io.write("BENCH_LIMIT_REACHED\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
end

local COUNTERS = { "sent", "seen", "ok", "client_errors", "server_errors", "other", "wrapped" }

function done(summary, latency, requests)
  local total = {}
  for _, name in ipairs(COUNTERS) do
    total[name] = 0
    for _, thread in ipairs(threads) do
      total[name] = total[name] + thread:get(name)
    end
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"sent":%d,"seen":%d,"ok":%d,'
      .. '"client_errors":%d,"server_errors":%d,"other":%d,"wrapped":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
    summary.duration, summary.requests, total.sent, total.seen, total.ok,
    total.client_errors, total.server_errors, total.other, total.wrapped,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0),
    latency.max, latency.mean,
    errors.connect, errors.read, errors.write, errors.timeout
  ))
end
