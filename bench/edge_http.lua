-- wrk script of bench_edge_http.py: POST the bodies of BODIES_FILE (one per line) in turn, the wrk
-- threads interleaved (thread k of n sends bodies k, k+n, k+2n...: no two threads send the same
-- reading, and together they send the devices' readings in time order, as a plant does; threads
-- starting at different offsets would send one device's readings hours apart, and the older ones
-- would be refused as too late to deduplicate instead of scored), headers from HEADERS
-- ("Name: value|Name: value"); at the end, one JSON line with requests/s, p50/p99 (ms) and errors.
local bodies = {}
local index = 1
local counter = 0
local step = 1
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
  step = tonumber(os.getenv("WRK_THREADS") or "1")
  index = id
  wrk.method = "POST"
  for pair in string.gmatch(os.getenv("HEADERS") or "", "[^|]+") do
    local name, value = string.match(pair, "^%s*(.-)%s*:%s*(.-)%s*$")
    wrk.headers[name] = value
  end
end

function request()
  local body = bodies[index]
  index = index + step
  if index > #bodies then index = id end
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
