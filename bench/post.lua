-- wrk script: the same small chat request every time.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"bench/fast","messages":[{"role":"user","content":"Say hello."}]}'
