-- wrk script of bench_edge_http.py: POST the bodies of BODIES_FILE (one per line) round-robin, each
-- wrk thread from its own offset (no two threads send the same reading), headers from HEADERS
-- ("Name: value|Name: value"); at the end, one JSON line with requests/s, p50/p99 (ms) and errors.
local bodies = {}
local index = 1
local counter = 0
local threads = {}

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("BODIES_FILE")) do
    table.insert(bodies, line)
  end
  local n = tonumber(os.getenv("WRK_THREADS") or "1")
  index = math.floor((id - 1) * #bodies / n) + 1
  wrk.method = "POST"
  for pair in string.gmatch(os.getenv("HEADERS") or "", "[^|]+") do
    local name, value = string.match(pair, "^%s*(.-)%s*:%s*(.-)%s*$")
    wrk.headers[name] = value
  end
end

function request()
  local body = bodies[index]
  index = index + 1
  if index > #bodies then index = 1 end
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{"rps": %f, "p50": %f, "p99": %f, "requests": %d, "errors": %d}\n',
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.requests, errors))
end
