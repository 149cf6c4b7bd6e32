-- wrk script: the same small chat request every time (BENCH_BODY overrides it).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local body = os.getenv("BENCH_BODY")
if body == nil or body == "" then
  body = '{"model":"bench/fast","messages":[{"role":"user","content":"Say hello."}]}'
end
wrk.body = body
