-- wrk script for bench.visits: redirects as people and bots send them, counted by kind.
-- Usage: wrk -s visits.lua http://127.0.0.1:PORT -- PATHS_FILE QUOTA_PER_THREAD
--
-- Each thread cycles through the paths. Its first QUOTA requests are the counted mix:
-- every 10th from a bot (crawler, link preview, HTTP library), the rest from people
-- (five browsers; 100,000 addresses in X-Forwarded-For, so nearly every visitor is new
-- and stored as such; a third with a referrer; every 20th with DNT: 1). After the
-- quota it sends the app's own probe User-Agent, which the app does not count, so the
-- load goes on unchanged while every counted request has time to be answered. done()
-- prints wrk's summary and what was sent as one JSON line.
--
-- wrk asks the first thread for one request before the run, to check it, and never
-- sends it: so each thread's first request is a probe's, and is not counted as sent.
local threads = {}
local paths = {}
local quota = 0
local sent = 0
local checked = false
people, bots, probes = 0, 0, 0  -- globals: done() reads them with thread:get()

local BROWSERS = {
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.6 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Mobile Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.6 Safari/605.1.15",
  "Mozilla/5.0 (X11; Linux x86_64; rv:145.0) Gecko/20100101 Firefox/145.0",
}
local BOTS = {
  "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
  "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
  "curl/8.11.1",
}
local PROBE = "shortener-probe/1 (+bench.visits)"

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for path in io.lines(args[1]) do
    paths[#paths + 1] = path
  end
  quota = tonumber(args[2])
  sent = math.random(#paths)  -- threads start at different paths
end

function request()
  sent = sent + 1
  local path = paths[(sent % #paths) + 1]
  if not checked then
    checked = true
    return wrk.format("GET", path, {["User-Agent"] = PROBE})
  end
  if people + bots >= quota then
    probes = probes + 1
    return wrk.format("GET", path, {["User-Agent"] = PROBE})
  end
  if sent % 10 == 0 then
    bots = bots + 1
    return wrk.format("GET", path, {["User-Agent"] = BOTS[(sent / 10) % #BOTS + 1]})
  end
  people = people + 1
  local n = sent % 100000
  local headers = {
    ["User-Agent"] = BROWSERS[(sent % #BROWSERS) + 1],
    ["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.floor(n / 65536), math.floor(n / 256) % 256, n % 256),
  }
  if sent % 3 == 0 then headers["Referer"] = "https://t.co/a1b2c3" end
  if sent % 20 == 1 then headers["DNT"] = "1" end
  return wrk.format("GET", path, headers)
end

function done(summary, latency, _)
  local sent_people, sent_bots, sent_probes = 0, 0, 0
  for _, thread in ipairs(threads) do
    sent_people = sent_people + thread:get("people")
    sent_bots = sent_bots + thread:get("bots")
    sent_probes = sent_probes + thread:get("probes")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "bad_status": %d, "people": %d, "bots": %d, ' ..
    '"probes": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.timeout, e.status,
    sent_people, sent_bots, sent_probes))
end
