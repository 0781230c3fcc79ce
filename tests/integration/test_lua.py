"""The Lua phase engine, live: scripts from tests/integration/lua/ run in the
real binary, driven by real clients."""
import os
import threading
import time

from harness import (Client, MoxyTestCase, config, free_port, request, run_moxy, upstream,
                     wait_for, SLOW)

LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")


def script(name, tmpdir, **subst):
    """A copy of lua/<name> with ORIGIN_PORT etc. filled in, in tmpdir."""
    with open(os.path.join(LUA, name)) as f:
        text = f.read()
    for k, v in subst.items():
        text = text.replace(k, str(v))
    path = os.path.join(tmpdir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def scripted(name, upstreams, subst=None, service=None, **top):
    """A config whose one service 'web' runs a copy of lua/<name> (<subst> filled in)."""
    import tempfile
    path = script(name, tempfile.mkdtemp(prefix="moxy-lua-"), **(subst or {}))
    svc = {"name": "web", "listeners": [f"127.0.0.1:{free_port()}"], "script": path, **(service or {})}
    return config([svc], upstreams, **top)


class Phases(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        cls.origin = cls.class_origin()
        import tempfile
        d = tempfile.mkdtemp(prefix="moxy-lua-")
        path = script("phases.lua", d, ORIGIN_PORT=cls.origin.port, DEAD_PORT=free_port())
        conf = config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"], "script": path}],
                      {"origin": upstream(cls.origin.port)}, log_level="info",
                      access_log="{tmp}/access.log")
        cls.moxy = cls.class_moxy(conf)

    def test_local_answer_runs_response_filter_and_keeps_the_connection(self):
        with Client(self.moxy.port) as c:
            for _ in range(3):
                r = c.request("GET", "/local")
                self.assert_status(r, 201, self.moxy)
                self.assertEqual(r.body, b"made locally\n")
                self.assertEqual(r.header("x-served-by"), "moxy")
                self.assertEqual(r.header("x-source"), "local")
                self.assertIsNone(r.header("connection"))
        self.assertNotIn("/local", self.origin.targets())

    def test_table_body_is_json(self):
        r = request(self.moxy.port, "GET", "/json")
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.json(), {"ok": True, "n": 3})
        self.assertIn("application/json", r.header("content-type"))

    def test_request_edits_reach_the_origin(self):
        r = request(self.moxy.port, "GET", "/echo?a=1",
                    headers=[("User-Agent", "ua-test"), ("X-Secret", "hide me")])
        self.assert_status(r, 200, self.moxy)
        seen = {k.lower(): v for k, v in r.json()["headers"]}
        self.assertEqual(seen["x-script"], "phases.lua")
        self.assertEqual(seen["x-ua"], "ua-test")
        self.assertNotIn("x-secret", seen)
        self.assertEqual(r.header("x-served-by"), "moxy")
        self.assertEqual(r.header("x-source"), "upstream")

    def test_set_uri_rewrites_the_upstream_target(self):
        r = request(self.moxy.port, "GET", "/rewrite")
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.json()["target"], "/echo?rewritten=1")

    def test_sleep_yields_without_blocking_the_worker(self):
        # Four requests sleeping 0.5 s each on a one-thread moxy finish together.
        results = []

        def one(i):
            results.append(request(self.moxy.port, "GET", f"/sleep?t=0.5&i={i}"))

        t0 = time.monotonic()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        elapsed = time.monotonic() - t0
        self.assertEqual([r.status for r in results], [200] * 4)
        self.assertLess(elapsed, 1.5, "sleeping handlers ran one after the other")
        for r in results:
            seen = {k.lower(): v for k, v in r.json()["headers"]}
            self.assertGreaterEqual(float(seen["x-slept"]), 0.45)

    def test_lua_error_is_a_500_with_file_and_line_and_the_worker_keeps_serving(self):
        since = self.moxy.log_size()
        r = request(self.moxy.port, "GET", "/boom")
        self.assertEqual(r.status, 500)
        self.moxy.wait_log("lua request_filter", since)
        log = self.moxy.error_log()[since:]
        self.assertRegex(log, r"\[error\] .*lua request_filter \S*phases\.lua:15: attempt to index")
        self.assertRegex(log, r"\(request \d+, GET /boom\)")
        self.assert_status(request(self.moxy.port, "GET", "/local"), 201, self.moxy)

    def test_wrong_return_type_names_the_handler(self):
        since = self.moxy.log_size()
        self.assertEqual(request(self.moxy.port, "GET", "/badpeer").status, 500)
        self.moxy.wait_log("upstream_peer", since)
        self.assertRegex(self.moxy.error_log()[since:],
                         r"lua upstream_peer \S*phases\.lua:\d+: .*upstream_peer")

    def test_api_misuse_names_the_allowed_phases(self):
        since = self.moxy.log_size()
        self.assertEqual(request(self.moxy.port, "GET", "/misuse").status, 500)
        self.moxy.wait_log("set_header", since)
        self.assertRegex(self.moxy.error_log()[since:],
                         r"phases\.lua:\d+: .*set_header.* cannot be called in request_filter "
                         r"\(allowed: .*response_filter")

    def test_logging_phase_runs_after_each_request(self):
        since = self.moxy.log_size()
        self.assert_status(request(self.moxy.port, "GET", "/local?log"), 201, self.moxy)
        self.moxy.wait_log("logged GET /local?log 201", since)

    def test_error_page_goes_through_response_filter(self):
        since = self.moxy.log_size()
        r = request(self.moxy.port, "GET", "/down")
        self.assertEqual(r.status, 502)
        self.assertEqual(r.header("x-source"), "error")
        self.assertEqual(r.header("x-served-by"), "moxy")
        self.moxy.wait_log("logged GET /down 502 err=upstream: ECONNREFUSED", since)

    def test_fail_to_proxy_chooses_the_status(self):
        r = request(self.moxy.port, "GET", "/down-503")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.body, b"503 Service Unavailable\n")

    def test_logging_gets_the_lua_error(self):
        since = self.moxy.log_size()
        self.assertEqual(request(self.moxy.port, "GET", "/boom?2").status, 500)
        self.moxy.wait_log("err=", since)
        self.assertRegex(self.moxy.error_log()[since:], r"logged GET /boom\?2 500 err=\S*phases\.lua:15:")

    def test_proxy_upstream_filter_false_is_a_502(self):
        since = self.moxy.log_size()
        r = request(self.moxy.port, "GET", "/noproxy")
        self.assertEqual(r.status, 502)
        self.assertNotIn("/noproxy", self.origin.targets())
        self.moxy.wait_log("err=proxy_upstream_filter returned false", since)

    def test_scripts_cannot_set_framing_headers(self):
        since = self.moxy.log_size()
        self.assertEqual(request(self.moxy.port, "GET", "/managed").status, 500)
        self.moxy.wait_log("s.req:set_header(): Content-Length is managed by moxy (message "
                           "framing and connection handling)", since)
        since = self.moxy.log_size()
        self.assertEqual(request(self.moxy.port, "GET", "/managed?each=1").status, 500)
        self.moxy.wait_log("managed remove_header Trailer", since)
        lines = [l for l in self.moxy.error_log()[since:].splitlines() if ": managed " in l]
        self.assertEqual(len(lines), 24, "\n".join(lines))
        for l in lines:
            self.assertRegex(l, r"managed (\w+) (\S+): s\.req:\1\(\): \2 is managed by moxy",
                             "a managed field was taken")

    def test_log_fields_reach_the_access_log(self):
        self.assert_status(request(self.moxy.port, "GET", "/local?fields",
                                   headers=[("User-Agent", "field-test")]), 201, self.moxy)
        self.assertTrue(wait_for(lambda: "/local?fields" in self.moxy.read("access.log"), 3))
        line = [l for l in self.moxy.read("access.log").splitlines() if "/local?fields" in l][0]
        self.assertIn(' ua="field-test" note="say \\"hi\\""', line)

    def test_conn_ctx_lives_across_keepalive_requests_only(self):
        with Client(self.moxy.port) as c:
            self.assertEqual([c.request("GET", "/conn").body for _ in range(3)], [b"1", b"2", b"3"])
        with Client(self.moxy.port) as c:       # a new connection starts afresh
            self.assertEqual(c.request("GET", "/conn").body, b"1")

    def test_connected_to_upstream_says_new_then_reused(self):
        with Client(self.moxy.port) as c:
            first = c.request("GET", "/echo?c1").header("x-conn")
            second = c.request("GET", "/echo?c2").header("x-conn")
        self.assertRegex(first or "", r"^(new|reused) 127\.0\.0\.1:\d+$")
        self.assertEqual(second, f"reused 127.0.0.1:{self.origin.port}")

    def test_client_gone_while_sleeping(self):
        with Client(self.moxy.port) as c:
            c.send(b"GET /sleep?t=0.4 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.6)
        self.assert_status(request(self.moxy.port, "GET", "/local"), 201, self.moxy)


class YamlFallback(MoxyTestCase):
    def test_without_upstream_peer_the_yaml_group_is_used(self):
        import tempfile
        o = self.start_origin()
        m = self.start_moxy(scripted("noupstream.lua", {"origin": upstream(o.port)}, service={"upstream": "origin"}))
        r = request(m.port, "GET", "/echo")
        self.assert_status(r, 200, m)
        self.assertIn(["x-from-yaml-group", "1"], [[k.lower(), v] for k, v in r.json()["headers"]])


class CheckScripts(MoxyTestCase):
    def test_t_refuses_a_phase_that_is_not_built(self):
        import tempfile
        d = tempfile.mkdtemp(prefix="moxy-lua-")
        path = os.path.join(d, "unbuilt.lua")
        with open(path, "w") as f:
            f.write("return { cache_key = function() end }\n")
        conf = os.path.join(d, "moxy.yaml")
        with open(conf, "w") as f:
            f.write(config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"],
                             "script": path}], {"origin": upstream(free_port())}))
        r = run_moxy(["-t", "-c", conf])
        self.assertEqual(r.returncode, 1)
        self.assertIn("cache_key is not supported", r.stderr)

    def test_t_reports_a_syntax_error_with_file_and_line(self):
        import tempfile
        d = tempfile.mkdtemp(prefix="moxy-lua-")
        path = script("syntax_error.lua", d)
        conf = os.path.join(d, "moxy.yaml")
        with open(conf, "w") as f:
            f.write(config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"],
                             "script": path}], {"origin": upstream(free_port())}))
        r = run_moxy(["-t", "-c", conf])
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"syntax_error\.lua:\d+:")


class BodyFilter(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        import tempfile
        cls.origin = cls.class_origin()
        cls.moxy = cls.class_moxy(scripted("body.lua", {"origin": upstream(cls.origin.port)}, service={"upstream": "origin"}))

    def test_chunks_are_rewritten_and_the_end_is_appended(self):
        r = request(self.moxy.port, "GET", "/echo?abc")
        self.assert_status(r, 200, self.moxy)
        self.assertIsNone(r.header("content-length"))     # length changed: chunked
        body = r.body.decode()
        self.assertIn('"TARGET": "/ECHO?ABC"', body)
        self.assertRegex(body, r"-- \d+ bytes filtered --\n$")

    def test_a_large_body_streams_through_the_filter(self):
        r = request(self.moxy.port, "GET", "/bytes?n=3000000")
        self.assert_status(r, 200, self.moxy)
        self.assertTrue(r.body.endswith(b"-- 3000000 bytes filtered --\n"))
        self.assertEqual(len(r.body), 3000000 + len("-- 3000000 bytes filtered --\n"))

    def test_local_answers_pass_the_body_filter(self):
        r = request(self.moxy.port, "GET", "/local-body")
        self.assertEqual(r.body, b"LOCAL BODY\n-- 11 bytes filtered --\n")

    def test_an_error_after_the_head_aborts_the_stream(self):
        with Client(self.moxy.port) as c:
            c.send(b"GET /bytes?n=3000000&boom=1 HTTP/1.1\r\nHost: a\r\n\r\n")
            head = c.reader.read_until(b"\r\n\r\n")
            self.assertIn(b"200", head.split(b"\r\n")[0])
            closed, _ = c.wait_closed(5)
            self.assertTrue(closed, "stream not aborted")
        self.assertIn("lua response_body_filter", self.moxy.error_log())
        self.assert_status(request(self.moxy.port, "GET", "/local-body"), 200, self.moxy)


class FailToConnect(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        import tempfile
        cls.origin = cls.class_origin()
        cls.dead = free_port()
        cls.moxy = cls.class_moxy(scripted("retry.lua", {"origin": upstream(cls.origin.port)}, subst={"ORIGIN_PORT": cls.origin.port, "DEAD_PORT": cls.dead}))

    def seen(self, r):
        return {k.lower(): v for k, v in r.json()["headers"]}

    def test_returning_true_retries_with_a_fresh_upstream_peer(self):
        r = request(self.moxy.port, "GET", "/echo?mode=true")
        self.assert_status(r, 200, self.moxy)
        h = self.seen(r)
        self.assertEqual(h["x-tries"], "2")
        self.assertEqual(h["x-failed"], f"127.0.0.1:{self.dead} upstream: ECONNREFUSED")

    def test_err_set_retry(self):
        r = request(self.moxy.port, "GET", "/echo?mode=method")
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(self.seen(r)["x-tries"], "2")

    def test_no_retry_is_a_502(self):
        self.assertEqual(request(self.moxy.port, "GET", "/echo?mode=no-retry").status, 502)


class Jit(MoxyTestCase):
    """LuaJIT cannot compile a yield: the trace recorded after one goes on to the next
    yield and stitches again, and such a chain ends only at the trace of the engine's
    phase loop. The engine makes that one when the VM starts (engine.warm), before any
    request; without it a chain started by a hot function could stitch on for good, a
    new trace every few requests (docs/performance.md)."""

    def test_the_phase_loop_has_its_trace_before_the_first_request(self):
        origin = self.start_origin()
        moxy = self.start_moxy(scripted("jit.lua", {"origin": upstream(origin.port)},
                                        service={"upstream": "origin"}))
        r = request(moxy.port, "GET", "/jit")
        self.assert_status(r, 200, moxy)
        state = r.json()
        self.assertTrue(state["jit"], state)
        self.assertTrue(state["warmed"], state)
        self.assertTrue(state["loop"], state)

    def test_traces_stop_growing_under_steady_traffic(self):
        origin = self.start_origin()
        moxy = self.start_moxy(scripted("jit.lua", {"origin": upstream(origin.port)},
                                        service={"upstream": "origin"}))
        counts = []
        for _ in range(4):
            # new connections each round, as between wrk runs
            for _ in range(4):
                with Client(moxy.port) as c:
                    for _ in range(150):
                        self.assert_status(c.request("GET", "/", headers=[("User-Agent", "t/1")]),
                                           200, moxy)
            counts.append(request(moxy.port, "GET", "/jit").json()["traces"])
        # A few side traces may still form in the second round; after that, none.
        self.assertLessEqual(counts[-1], 200, counts)
        self.assertLessEqual(counts[-1] - counts[1], 4, counts)


class RequestBody(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        import tempfile
        cls.origin = cls.class_origin()
        cls.moxy = cls.class_moxy(scripted("reqbody.lua", {"origin": upstream(cls.origin.port)}, service={"upstream": "origin"}))

    def test_body_waits_for_a_slow_client(self):
        with Client(self.moxy.port) as c:
            c.send(b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n\r\n" + b"a" * 5000)
            time.sleep(0.3)
            c.send(b"b" * 15000)
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"20000 aaaaaaaa\n")
            self.assert_status(c.request("POST", "/body", body=b"xyz" * 10), 200, self.moxy)

    def test_chunked_body_is_decoded(self):
        r = request(self.moxy.port, "POST", "/body", body=b"hello world" * 100, chunked=True)
        self.assertEqual(r.body, b"1100 hello wo\n")

    def test_too_large(self):
        r = request(self.moxy.port, "POST", "/body", body=b"z" * 100000)
        self.assertEqual(r.status, 413)
        self.assertEqual(r.body, b"too_large\n")

    def test_bodies_still_stream_to_the_origin_when_not_read(self):
        r = request(self.moxy.port, "POST", "/echo", body=b"q" * 1000000)
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.json()["body_len"], 1000000)


class FailOpen(MoxyTestCase):
    def test_fail_open_skips_a_failing_phase_and_still_logs_it(self):
        import tempfile
        o = self.start_origin()
        m = self.start_moxy(scripted("phases.lua", {"origin": upstream(o.port)}, subst={"ORIGIN_PORT": o.port, "DEAD_PORT": free_port()}, lua_error_policy="fail_open"))
        r = request(m.port, "GET", "/boom")        # request_filter raises: skipped
        self.assert_status(r, 200, m)
        self.assertEqual(r.header("x-served-by"), "moxy")
        self.assertIn("/boom", o.targets())
        m.wait_log("lua request_filter")
        self.assertRegex(m.error_log(), r"lua request_filter \S*phases\.lua:15: attempt to index")


class Timers(MoxyTestCase):
    def test_every_at_cancel_and_premature(self):
        import tempfile
        o = self.start_origin()
        m = self.start_moxy(scripted("timers.lua", {"origin": upstream(o.port)}, service={"upstream": "origin"}, grace_period_seconds=0))
        t0 = int(request(m.port, "GET", "/ticks").body)
        time.sleep(0.6)
        t1 = int(request(m.port, "GET", "/ticks").body)
        self.assertGreaterEqual(t1 - t0, 3, "every(0.1) did not tick")
        self.assertEqual(request(m.port, "GET", "/at?name=one").body, b"armed")
        self.assertEqual(request(m.port, "GET", "/fired").body, b"")
        time.sleep(0.5)
        self.assertEqual(request(m.port, "GET", "/fired").body, b"one")
        m.stop()
        self.assertEqual(m.returncode, 0)
        log = m.error_log()
        self.assertIn("long timer ran, premature=true", log)
        self.assertIn("shutdown ran after ticks", log)
        self.assertLess(log.index("long timer ran"), log.index("shutdown ran"))


class InitConfig(MoxyTestCase):
    def test_init_gets_the_services_config_mapping(self):
        import json
        import tempfile
        path = script("config.lua", tempfile.mkdtemp(prefix="moxy-lua-"))
        conf = config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"], "script": path,
                        "config": {"greeting": "hi", "n": 3, "ratio": 0.5, "on": True,
                                   "list": [1, "two", False], "nested": {"k": "v"}}}],
                      {"origin": upstream(free_port())})
        m = self.start_moxy(conf)
        got = json.loads(request(m.port, "GET", "/").body)
        self.assertEqual(got, {"greeting": "hi", "n": 3, "ratio": 0.5, "on": True,
                               "list": [1, "two", False], "nested": {"k": "v"}})

    def test_config_must_be_a_mapping(self):
        import tempfile
        d = tempfile.mkdtemp(prefix="moxy-lua-")
        path = script("config.lua", d)
        conf = os.path.join(d, "moxy.yaml")
        with open(conf, "w") as f:
            f.write(config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"],
                             "script": path, "config": "nope"}], {"origin": upstream(free_port())}))
        r = run_moxy(["-t", "-c", conf])
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"moxy\.yaml:\d+:\d+: services\[0\]\.config: expected a mapping")


class Groups(MoxyTestCase):
    def test_upstream_groups_from_lua(self):
        import tempfile
        blue, green = self.start_origin(), self.start_origin()
        m = self.start_moxy(scripted("groups.lua", {"blue": upstream(blue.port), "green": {"backends": [{"address": green.addr, "weight": 3}]}}))
        self.assert_status(request(m.port, "GET", "/echo?color=green"), 200, m)
        self.assert_status(request(m.port, "GET", "/echo?color=blue"), 200, m)
        self.assertEqual(green.targets(), ["/echo?color=green"])
        self.assertEqual(blue.targets(), ["/echo?color=blue"])
        self.assertEqual(request(m.port, "GET", "/backends").body, f"{green.addr}/3".encode())


class TrailerFilter(MoxyTestCase):
    def test_trailers_pass_the_filter(self):
        import tempfile
        o = self.start_origin()
        m = self.start_moxy(scripted("trailers.lua", {"origin": upstream(o.port)}, service={"upstream": "origin"}))
        with Client(m.port) as c:
            c.send(b"GET /trailers HTTP/1.1\r\nHost: a\r\n\r\n")
            c.reader.read_until(b"\r\n\r\n")
            rest = c.reader.read_until(b"0\r\n") + c.reader.read_until(b"\r\n\r\n")
            self.assertIn(b"x-checksum: abc-seen\r\n", rest)   # set_header: the new name's case
            self.assertIn(b"x-added-by: moxy\r\n", rest)
            self.assertNotIn(b"X-Other", rest)
            self.assert_status(c.request("GET", "/echo?after"), 200, m)


class UpstreamBodyFilter(MoxyTestCase):
    def test_filters_chain_in_order_and_local_answers_skip_the_upstream_one(self):
        import tempfile
        o = self.start_origin()
        m = self.start_moxy(scripted("ubf.lua", {"origin": upstream(o.port)}, service={"upstream": "origin"}))
        r = request(m.port, "GET", "/echo?foo")
        self.assert_status(r, 200, m)
        self.assertIn(b'"TARGET": "/ECH0?F00"', r.body)
        self.assertEqual(request(m.port, "GET", "/local").body, b"LOCAL BODY")


class KeptSessions(MoxyTestCase):
    def test_a_session_kept_past_its_request_raises_and_takes_no_fields(self):
        o = self.start_origin()
        m = self.start_moxy(scripted("kept.lua", {"origin": upstream(o.port)},
                                     service={"upstream": "origin"}))
        self.assertEqual(request(m.port, "GET", "/keep").body, b"kept")
        self.assertTrue(wait_for(lambda: "kept session:" in m.error_log(), 3 * SLOW))
        log = m.error_log()
        self.assertIn("kept session: false", log)
        self.assertIn("this session's request has ended", log)
        r = request(m.port, "GET", "/field")
        self.assertIn(b"s.user: a session object takes no new fields", r.body)
        # The coroutine's session serves the next request without the refused field.
        self.assertEqual(request(m.port, "GET", "/after-field").body, b"nil")
        self.assert_status(request(m.port, "GET", "/echo"), 200, m)
        self.assertTrue(m.alive())


class RawYield(MoxyTestCase):
    """What a handler yields outside moxy's waits cannot end its phase: the request is a
    500 with a log line, the coroutine is dropped, and the next request is served."""

    def test_a_bare_yield_is_a_500_and_the_worker_keeps_serving(self):
        o = self.start_origin()
        m = self.start_moxy(scripted("rawyield.lua", {"origin": upstream(o.port)},
                                     service={"upstream": "origin"}))
        for path in ("/yield", "/yield-value"):
            since = m.log_size()
            self.assertEqual(request(m.port, "GET", path).status, 500, path)
            m.wait_log("yielded without waiting on anything", since)
            r = request(m.port, "GET", "/ok")
            self.assertEqual(r.status, 200, path)
            self.assertIsNotNone(r.header("x-served"), path)
        self.assertTrue(m.alive())

    def test_an_error_object_that_is_not_a_string_is_a_500(self):
        o = self.start_origin()
        m = self.start_moxy(scripted("rawyield.lua", {"origin": upstream(o.port)},
                                     service={"upstream": "origin"}))
        since = m.log_size()
        self.assertEqual(request(m.port, "GET", "/table-error").status, 500)
        m.wait_log("lua request_filter", since)
        # tostring() of the object, as with error(); a __tostring would give its text.
        self.assertRegex(m.error_log()[since:], r"lua request_filter table: 0x[0-9a-f]+ \(request")
        # The same coroutine (the error was caught inside it) serves the next request.
        self.assertEqual(request(m.port, "GET", "/ok").status, 200)
        self.assertTrue(m.alive())
