-- wrk script: send the request in $BENCH_BODY_FILE (if set) with $BENCH_METHOD and
-- $BENCH_CTYPE, and print one machine-readable summary line at the end. No response() hook:
-- it would make wrk parse every body in Lua; wrk counts statuses >= 400 in errors.status.
local bodyfile = os.getenv("BENCH_BODY_FILE")
wrk.method = os.getenv("BENCH_METHOD") or "GET"
if bodyfile and bodyfile ~= "" then
  local f = assert(io.open(bodyfile, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE") or "application/json"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
