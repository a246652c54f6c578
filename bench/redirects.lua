-- wrk script: cycle through the sampled codes, then print the summary as one JSON line.
-- Usage: wrk -s redirects.lua http://127.0.0.1:PORT -- PATHS_FILE (one path per line)
local requests = {}
local next_index = 1

function init(args)
  for path in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format("GET", path)
  end
  -- each thread starts at a different place so threads do not ask in lockstep
  next_index = (math.random(#requests) % #requests) + 1
end

function request()
  local r = requests[next_index]
  next_index = (next_index % #requests) + 1
  return r
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "bad_status": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.timeout, e.status))
end
