-- wrk -s report.lua: prints one machine-readable line at the end of a run; the request path
-- is untouched (no request/response callbacks, so wrk keeps its static request buffer).
-- RESULT rps good_rps p50_ms p99_ms requests non2xx timeouts socket_errors
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  local good = summary.requests - e.status
  io.write(string.format("RESULT %.1f %.1f %.2f %.2f %d %d %d %d\n",
    summary.requests / secs, good / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, e.status, e.timeout, e.connect + e.read + e.write))
end
